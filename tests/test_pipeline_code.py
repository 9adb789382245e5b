"""Code-aware caching: a step's fingerprint covers the library code its notebook imports
(provenance.SourceTree, read with ast) and the versions of torch, transformers and lm-eval; a
step made by other code runs again, or is kept and marked stale with --keep-stale; the eval cache
is keyed on the scoring code too."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from _pipeline_fixtures import copy_library, edit, project_copy, step_notebook, tinylab_in

from tinylab.config.loader import PROJECT_ROOT, ConfigError, load_config
from tinylab.config.pipeline import PipelineConfig
from tinylab.evaluate import results
from tinylab.evaluate.results import ResultStore, scoring_code
from tinylab.layout import RunLayout
from tinylab.pipeline import decide_steps, plan_steps, run_pipeline
from tinylab.provenance import SourceTree, code_changes, notebook_imports, package_versions

# --------------------------------------------------------------------------------------------
# The import graph and code records


def _package(root: Path, modules: dict[str, str]) -> Path:
    """A package tree under root/tinylab: {"a.py": source, "pkg/__init__.py": source, ...}."""
    for name, source in modules.items():
        path = root / "tinylab" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return root


TOY = {
    "__init__.py": "",
    "a.py": "import torch\nfrom tinylab import b\n",
    "b.py": "def f():\n    from tinylab.pkg import c, helper\n",  # c a module, helper a name
    "pkg/__init__.py": "helper = 1\n",
    "pkg/c.py": "from . import d\n",
    "pkg/d.py": "import os\n",
    "pkg/__main__.py": "from tinylab.pkg import c\n",
    "e.py": "import lm_eval\nimport tinylab.a\n",
}


def test_the_closure_follows_imports_packages_and_main(tmp_path: Path) -> None:
    tree = SourceTree(_package(tmp_path, TOY))
    assert tree.imports("tinylab.b") == {"tinylab.pkg", "tinylab.pkg.c"}  # names that are modules
    assert tree.closure(["tinylab.a"]) == {
        "tinylab",  # every import runs the package's __init__
        "tinylab.a",
        "tinylab.b",
        "tinylab.pkg",
        "tinylab.pkg.c",
        "tinylab.pkg.d",
        "tinylab.pkg.__main__",  # `python -m tinylab.pkg` counts with the package
    }
    assert "tinylab.e" not in tree.closure(["tinylab.a", "os", "tinylab.nope"])


def test_a_record_digests_each_file_and_the_versions_its_code_imports(tmp_path: Path) -> None:
    root = _package(tmp_path, TOY)
    record = SourceTree(root).record(["tinylab.a"])
    assert "tinylab/pkg/d.py" in record["files"] and "tinylab/e.py" not in record["files"]
    assert all(len(digest) == 16 for digest in record["files"].values())
    assert record["versions"] == package_versions(("torch",))  # a imports torch, not lm_eval
    assert set(SourceTree(root).record(["tinylab.e"])["versions"]) == {"torch", "lm_eval"}
    edit(root / "tinylab" / "pkg" / "d.py")
    changed = SourceTree(root).record(["tinylab.a"])
    assert code_changes(record, changed) == "code changed: tinylab/pkg/d.py"
    assert (
        SourceTree(root).record(["tinylab.e"])["files"]["tinylab/pkg/d.py"]
        != (record["files"]["tinylab/pkg/d.py"])
    )


def test_code_changes_name_files_and_versions() -> None:
    old = {
        "files": {"a.py": "1", "b.py": "1", "c.py": "1", "d.py": "1"},
        "versions": {"torch": "2.1"},
    }
    new = {
        "files": {"a.py": "2", "b.py": "2", "c.py": "2", "e.py": "1"},
        "versions": {"torch": "2.2"},
    }
    assert code_changes(old, new) == (
        "code changed: a.py, b.py, c.py, 2 more files, torch 2.1 -> 2.2"
    )
    assert code_changes(None, new) == "code not recorded (made before tinylab recorded it)"


def test_notebook_imports_leave_magics_out_and_name_a_cell_that_is_not_python(
    tmp_path: Path,
) -> None:
    nb = step_notebook(
        tmp_path / "n.ipynb", imports="%matplotlib inline\nfrom tinylab import cache"
    )
    assert {"tinylab", "tinylab.cache"} <= notebook_imports(nb)
    notebook_imports(PROJECT_ROOT / "notebooks" / "02_train_stage.ipynb")  # has %matplotlib
    broken = step_notebook(tmp_path / "bad.ipynb", imports="import tinylab.layout\nx = = 1")
    with pytest.raises(ConfigError, match=r"bad.ipynb: cell 2 is not Python \(invalid syntax"):
        notebook_imports(broken)


# --------------------------------------------------------------------------------------------
# The real notebooks: which steps a change of one library file reruns

REAL_STEPS = """\
name: real
steps:
  - {name: prepare, notebook: 01_prepare_data, params: {data_params: params/data/demo.yaml}}
  - {name: train, notebook: 02_train_stage, params: {stage_params: params/stages/demo/base.yaml}}
  - {name: eval, notebook: 03_evaluate, params: {stage: base, eval_params: params/eval/demo.yaml}}
  - {name: report, notebook: 04_report, html: report.html}
"""  # no `after:`, so each step shows its own code's decision


def _decisions(pipeline: PipelineConfig, src: Path, done_with: dict, **kwargs) -> dict[str, str]:
    plan = plan_steps(pipeline, Path("/nonexistent/run"), source_dir=src)
    decisions = decide_steps(plan, {"steps": done_with}, **kwargs)
    return {name: f"{d.action}: {d.reason}" for name, d in decisions.items()}


def test_a_library_change_reruns_only_the_steps_whose_notebooks_import_it(
    tmp_path: Path,
) -> None:
    (tmp_path / "real.yaml").write_text(REAL_STEPS)
    pipeline = load_config(tmp_path / "real.yaml", PipelineConfig)
    src = copy_library(tmp_path)
    plan = plan_steps(pipeline, Path("/nonexistent/run"), source_dir=src)
    done = {
        name: {"status": "done", "fingerprint": p.fingerprint, "inputs": p.inputs, "code": p.code}
        for name, p in plan.items()
    }
    same = "skip: same fingerprint"
    assert set(_decisions(pipeline, src, done).values()) == {same}  # an unchanged tree

    edit(src / "tinylab" / "train" / "loop.py")
    loop = "code changed: tinylab/train/loop.py"
    assert _decisions(pipeline, src, done) == {
        "prepare": same, "train": f"run: {loop}", "eval": same, "report": same,
    }  # fmt: skip
    assert _decisions(pipeline, src, done, keep_stale=True)["train"] == f"stale: {loop}"

    edit(src / "tinylab" / "analysis" / "figures.py")  # imported by 02 and 04 only
    figures = "code changed: tinylab/analysis/figures.py"
    assert _decisions(pipeline, src, done) == {
        "prepare": same,
        "train": f"run: {figures}, tinylab/train/loop.py",
        "eval": same,
        "report": f"run: {figures}",
    }


def test_a_record_from_before_code_records_runs_again_or_is_kept_stale(tmp_path: Path) -> None:
    (tmp_path / "real.yaml").write_text(REAL_STEPS)
    pipeline = load_config(tmp_path / "real.yaml", PipelineConfig)
    plan = plan_steps(pipeline, Path("/nonexistent/run"))
    old = {n: {"status": "done", "fingerprint": p.inputs} for n, p in plan.items()}  # old format
    unknown = "code not recorded (made before tinylab recorded it)"
    assert _decisions(pipeline, PROJECT_ROOT / "src", old)["train"] == f"run: {unknown}"
    kept = _decisions(pipeline, PROJECT_ROOT / "src", old, keep_stale=True)
    assert kept["train"] == f"stale: {unknown}"


# --------------------------------------------------------------------------------------------
# `tinylab run` with a changed library

TWO_STEPS = """\
  - {name: a, notebook: step, params: {name: a, value: 1}}
  - {name: b, notebook: cached, params: {name: b, value: 2}}
"""


def _lines(run_dir: Path, name: str) -> list[str]:
    return (run_dir / f"{name}.txt").read_text().splitlines()


def test_run_pipeline_reruns_changed_code_and_keeps_stale_results_on_request(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = project_copy(tmp_path, TWO_STEPS)  # a imports tinylab.layout, b tinylab.cache
    src, run_dir = root / "src", root / "runs" / "p"

    def run(**kwargs):
        return run_pipeline(
            root / "params" / "pipelines" / "p.yaml",
            runs_dir=root / "runs",
            notebooks_dir=root / "notebooks",
            source_dir=src,
            **kwargs,
        )

    assert run().summary().endswith("2 steps ran (a, b)")
    assert run().summary().endswith("nothing ran; 2 skipped (2 same fingerprint)")
    assert _lines(run_dir, "a") == ["1 []"] and _lines(run_dir, "b") == ["2 []"]

    edit(src / "tinylab" / "cache.py")  # imported by b only
    done = run()
    assert done.summary().endswith("1 step ran (b); 1 skipped (1 same fingerprint)")
    assert (len(_lines(run_dir, "a")), len(_lines(run_dir, "b"))) == (1, 2)
    assert "[b] running cached.ipynb (code changed: tinylab/cache.py)" in capsys.readouterr().out

    edit(src / "tinylab" / "files.py")  # imported by both (through layout and cache)
    kept = run(keep_stale=True)
    assert kept.summary().endswith("nothing ran; 2 skipped (2 stale kept: a, b)")
    steps = json.loads(RunLayout(run_dir).manifest.read_text())["steps"]
    assert steps["a"]["stale"] == "code changed: tinylab/files.py"
    from tinylab.analysis.tables import steps_table  # imports seaborn: only here

    shown = steps_table(SimpleNamespace(manifest={"steps": steps}))  # the report's table
    assert shown["status"].tolist() == ["done (stale: code changed: tinylab/files.py)"] * 2
    assert (
        steps["b"]["status"] == "done" and steps["b"]["stale"] == "code changed: tinylab/files.py"
    )
    assert (len(_lines(run_dir, "a")), len(_lines(run_dir, "b"))) == (1, 2)

    assert run().summary().endswith("2 steps ran (a, b)")  # without --keep-stale: made again
    steps = json.loads(RunLayout(run_dir).manifest.read_text())["steps"]
    assert "stale" not in steps["a"] and "stale" not in steps["b"]


def test_a_stale_mark_goes_when_the_code_is_the_same_again(tmp_path: Path) -> None:
    root = project_copy(tmp_path, TWO_STEPS)
    src, run_dir = root / "src", root / "runs" / "p"
    kwargs = {"runs_dir": root / "runs", "notebooks_dir": root / "notebooks", "source_dir": src}
    pipeline = root / "params" / "pipelines" / "p.yaml"
    run_pipeline(pipeline, **kwargs)
    cache = src / "tinylab" / "cache.py"
    original = cache.read_text()
    edit(cache)
    run_pipeline(pipeline, keep_stale=True, **kwargs)
    assert "stale" in json.loads(RunLayout(run_dir).manifest.read_text())["steps"]["b"]
    cache.write_text(original)
    assert run_pipeline(pipeline, **kwargs).summary().endswith("(2 same fingerprint)")
    assert "stale" not in json.loads(RunLayout(run_dir).manifest.read_text())["steps"]["b"]


@pytest.mark.slow
def test_tinylab_run_on_a_copy_of_the_tree_reruns_what_a_library_edit_touches(
    tmp_path: Path,
) -> None:
    root = project_copy(tmp_path, TWO_STEPS)
    run_dir = root / "outputs" / "runs" / "p"

    def tinylab_run(*options: str) -> str:
        done = tinylab_in(root, "run", "params/pipelines/p.yaml", *options)
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()[-1]

    assert tinylab_run().endswith(": 2 steps ran (a, b)")
    assert tinylab_run().endswith(": nothing ran; 2 skipped (2 same fingerprint)")
    edit(root / "src" / "tinylab" / "layout.py")  # the library the CLI runs from: the copy
    assert tinylab_run().endswith(": 1 step ran (a); 1 skipped (1 same fingerprint)")
    edit(root / "src" / "tinylab" / "cache.py")  # imported by b only
    assert tinylab_run("--keep-stale").endswith(
        ": nothing ran; 2 skipped (1 same fingerprint, 1 stale kept: b)"
    )
    assert _lines(run_dir, "a") == ["1 []", "1 []"] and _lines(run_dir, "b") == ["2 []"]
    steps = json.loads(RunLayout(run_dir).manifest.read_text())["steps"]
    assert steps["b"]["stale"] == "code changed: tinylab/cache.py"


# --------------------------------------------------------------------------------------------
# The eval cache


def test_the_scoring_code_digest_follows_the_evaluation_modules(tmp_path: Path) -> None:
    src = copy_library(tmp_path)
    before = scoring_code(src)
    assert before == scoring_code()  # the copy is the same code
    assert set(before["versions"]) == {"torch", "transformers", "lm_eval"}
    edit(src / "tinylab" / "analysis" / "figures.py")  # not imported by tinylab.evaluate
    assert scoring_code(src) == before
    edit(src / "tinylab" / "evaluate" / "harness.py")
    assert scoring_code(src)["digest"] != before["digest"]


def test_a_stored_row_is_reused_only_by_the_same_scoring_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = {"path": "hf", "sha256": "0" * 64}
    settings = {"kind": "lm_eval", "shots": 0}
    store = ResultStore(tmp_path, "base", model)
    store.put({"task": "arc", "value": 0.5, "settings": settings})
    stored = store.write()
    assert stored["results"][0]["code"] == scoring_code()
    assert ResultStore(tmp_path, "base", model).cached("arc", settings)["value"] == 0.5
    other = {**scoring_code(), "versions": {**scoring_code()["versions"], "lm_eval": "9.9"}}
    monkeypatch.setattr(results, "scoring_code", lambda: other)
    assert ResultStore(tmp_path, "base", model).cached("arc", settings) is None
