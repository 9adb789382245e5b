"""tinylab.sweep (`tinylab run --sweep`): the grid, which steps the points share (a shared step
runs once; nothing downstream of a swept step is shared), the manifests' sharing records, a
point resumed or rerun on its own, and bad sweep specs (one message, exit 2, nothing written).

The pipeline is a stub: each step is a small notebook that appends a line to the file its `out`
parameter names in the run folder and one to a log of executions, with real params files from
params/ (so its steps are of the kinds a sweep shares: data, a training stage, an evaluation)
and a report step of none of them."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

from tinylab import cli, sweep
from tinylab.pipeline import read_manifest, run_pipeline
from tinylab.sweep import SweepPlan, own_bookkeeping, plan_sweep, run_sweep, split_values

STEP = """\
from pathlib import Path
target = Path(run_dir) / out
target.parent.mkdir(parents=True, exist_ok=True)
with target.open("a") as f:
    f.write(f"{name} {overrides}\\n")
(target.parent / ".lock").write_text(name)  # a run's own bookkeeping: never shared
(target.parent / ".metadata").write_text(name)  # an output (a checkpoint's): shared
with open(log, "a") as f:
    f.write(f"{name} {Path(run_dir).name}\\n")
"""
PARAMETERS = 'name = "x"\nout = "x.txt"\nlog = "log"\nrun_dir = "."\noverrides = []'
STEPS = [  # name, params files and stage, after, out
    ("prepare", {"data_params": "params/data/demo.yaml"}, [], "data/index.json"),
    ("base", {"stage_params": "params/stages/demo/base.yaml"}, ["prepare"],
     "stages/base/metrics.jsonl"),
    ("eval-base", {"stage": "base", "eval_params": "params/eval/demo.yaml"}, ["base"],
     "eval/base.json"),
    ("continual-mathcode", {"stage_params": "params/stages/demo/continual-mathcode.yaml"},
     ["base"], "stages/continual-mathcode/metrics.jsonl"),
    ("eval-continual-mathcode", {"stage": "continual-mathcode",
     "eval_params": "params/eval/demo.yaml"}, ["continual-mathcode"],
     "eval/continual-mathcode.json"),
    ("report", {}, ["eval-base", "eval-continual-mathcode"], "report.txt"),
]  # fmt: skip
LR = "continual-mathcode.optim.lr=3e-3,1e-2"


def _project(root: Path) -> dict[str, Path]:
    """notebooks/step.ipynb and the stub pipeline p.yaml under `root`."""
    notebooks = root / "notebooks"
    notebooks.mkdir(parents=True)
    cells = [nbformat.v4.new_code_cell(PARAMETERS, metadata={"tags": ["parameters"]}),
             nbformat.v4.new_code_cell(STEP)]  # fmt: skip
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, notebooks / "step.ipynb")
    log = root / "executions.log"
    steps = [
        {"name": name, "notebook": "step", "after": after,
         "params": {**params, "name": name, "out": out, "log": str(log)}}
        for name, params, after, out in STEPS
    ]  # fmt: skip
    pipeline = root / "p.yaml"
    pipeline.write_text(json.dumps({"name": "p", "steps": steps}))
    return {"pipeline": pipeline, "notebooks": notebooks, "runs": root / "runs", "log": log}


def _plan(project: dict[str, Path], *specs: str, **kwargs) -> SweepPlan:
    return plan_sweep(project["pipeline"], specs, runs_dir=project["runs"],
                      notebooks_dir=project["notebooks"], **kwargs)  # fmt: skip


def _executions(project: dict[str, Path]) -> list[str]:
    return project["log"].read_text().splitlines() if project["log"].is_file() else []


def _compared(runs: list[Path], out_dir: Path) -> Path:
    """Stands in for analysis.compare.write_comparison (the stub's runs trained nothing)."""
    (out_dir / "compare.html").write_text("\n".join(str(run) for run in runs))
    return out_dir / "compare.html"


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The stub swept over two learning rates of its continual stage (eight notebook runs)."""
    project = _project(tmp_path_factory.mktemp("sweep"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sweep, "write_comparison", _compared)
        done = run_sweep(_plan(project, LR))
        folder = project["runs"] / "p-sweep"
        yield {**project, "done": done, "one": folder / "lr-3e-3", "two": folder / "lr-1e-2",
               "executions": _executions(project)}  # fmt: skip


def test_a_shared_step_runs_once_and_the_swept_ones_at_every_point(swept: dict) -> None:
    ran = sorted(swept["executions"])
    shared = ["base lr-3e-3", "eval-base lr-3e-3", "prepare lr-3e-3"]
    own = [f"{step} {point}" for step in ("continual-mathcode", "eval-continual-mathcode", "report")
           for point in ("lr-1e-2", "lr-3e-3")]  # fmt: skip
    assert ran == sorted(shared + own)
    summary = swept["done"].summary()
    assert (
        "lr-1e-2: ran continual-mathcode, eval-continual-mathcode, report; "
        "took from lr-3e-3: prepare, base, eval-base"
    ) in summary
    assert "shared (run once): prepare, base, eval-base" in summary
    comparison = swept["one"].parent / "compare.html"
    assert summary.endswith(f"comparison: {comparison}")
    assert comparison.read_text().splitlines() == [str(swept["one"]), str(swept["two"])]


def test_each_point_is_a_whole_run_folder_of_its_own(swept: dict) -> None:
    for name, _, _, out in STEPS:
        for point in ("one", "two"):
            assert (swept[point] / out).is_file(), (point, out)
            assert (swept[point] / "notebooks" / f"{name}.ipynb").is_file()
    one, two = swept["one"], swept["two"]
    assert not any(p.is_symlink() for p in two.rglob("*"))  # hard links in folders of its own
    assert not (two / "stages" / "base" / ".lock").exists()
    assert (two / "stages" / "base" / ".metadata").samefile(one / "stages" / "base" / ".metadata")
    assert (two / "stages" / "continual-mathcode" / ".lock").is_file()
    shared = two / "stages" / "base" / "metrics.jsonl"
    assert shared.samefile(one / "stages" / "base" / "metrics.jsonl")
    assert (two / "stages" / "continual-mathcode" / "metrics.jsonl").read_text() == (
        "continual-mathcode ['optim.lr=1e-2']\n"
    )


def test_the_manifests_say_what_is_shared_and_with_whom(swept: dict) -> None:
    one, two = read_manifest(swept["one"]), read_manifest(swept["two"])
    for step in ("prepare", "base", "eval-base"):
        assert one["steps"][step]["shared_with"] == ["lr-1e-2"]
        source = two["steps"][step]["shared_from"]
        assert source["run"] == "lr-3e-3" and source["run_dir"] == str(swept["one"].resolve())
        assert source["fingerprint"] == one["steps"][step]["fingerprint"]
        assert two["steps"][step]["status"] == "done"
        assert two["steps"][step]["fingerprint"] != source["fingerprint"]  # its own run folder
    assert two["steps"]["base"]["shared_from"]["paths"] == ["stages/base", "notebooks/base.ipynb"]
    for step in ("continual-mathcode", "eval-continual-mathcode", "report"):
        assert not {"shared_from", "shared_with"} & set(two["steps"][step])
        assert not {"shared_from", "shared_with"} & set(one["steps"][step])
    assert two["sweep"] == {"folder": str(swept["one"].parent.resolve()), "point": "lr-1e-2",
                            "values": {"continual-mathcode.optim.lr": "1e-2"},
                            "points": ["lr-3e-3", "lr-1e-2"]}  # fmt: skip


def test_the_sweep_again_runs_nothing(swept: dict) -> None:
    again = run_sweep(_plan(swept, LR))
    assert _executions(swept) == swept["executions"]
    assert "lr-1e-2: ran nothing; 6 skipped" in again.summary()
    assert read_manifest(swept["two"])["steps"]["base"]["shared_from"]["run"] == "lr-3e-3"


def test_a_point_rerun_from_a_shared_step_writes_its_own_and_not_the_others(swept: dict) -> None:
    two = swept["two"]
    run_pipeline(swept["pipeline"], run_id=str(two), from_step="base",
                 overrides=["continual-mathcode.optim.lr=1e-2"],
                 notebooks_dir=swept["notebooks"])  # fmt: skip
    owned = swept["one"] / "stages" / "base" / "metrics.jsonl"
    assert owned.read_text() == "base []\n"  # the other point's file, untouched
    assert (two / "stages" / "base" / "metrics.jsonl").read_text() == "base []\n"
    assert not (two / "stages" / "base" / "metrics.jsonl").samefile(owned)
    record = read_manifest(two)["steps"]["base"]
    assert record["status"] == "done" and "shared_from" not in record
    assert read_manifest(two)["steps"]["prepare"]["shared_from"]["run"] == "lr-3e-3"  # kept


def test_the_grid_is_the_product_and_names_each_point(tmp_path: Path) -> None:
    project = _project(tmp_path)
    plan = _plan(project, LR, "continual-mathcode.optim.weight_decay=0,0.1")
    assert [p.name for p in plan.points] == [
        "lr-3e-3_weight_decay-0", "lr-3e-3_weight_decay-0.1",
        "lr-1e-2_weight_decay-0", "lr-1e-2_weight_decay-0.1",
    ]  # fmt: skip
    assert plan.points[3].overrides == [
        "continual-mathcode.optim.lr=1e-2", "continual-mathcode.optim.weight_decay=0.1"
    ]  # fmt: skip
    assert plan.shared_steps() == ["prepare", "base", "eval-base"]
    assert not project["runs"].exists()  # planning writes nothing


def test_nothing_downstream_of_a_swept_step_is_shared(tmp_path: Path) -> None:
    plan = _plan(_project(tmp_path), "base.optim.lr=3e-3,1e-2")
    assert plan.shared_steps() == ["prepare"]
    for step in ("base", "eval-base", "continual-mathcode", "eval-continual-mathcode", "report"):
        assert [plan.owner(p, step) is p for p in plan.points] == [True, True]


def test_a_step_of_no_shared_kind_runs_at_every_point(tmp_path: Path) -> None:
    plan = _plan(_project(tmp_path), "eval-continual-mathcode.limit=2,3")
    assert "report" not in plan.shared_steps()  # after the swept evaluation
    plan = _plan(_project(tmp_path / "b"), "eval-base.limit=2,3")
    assert "eval-continual-mathcode" in plan.shared_steps()
    assert [plan.owner(p, "report") is p for p in plan.points] == [True, True]


def test_the_dry_run_prints_the_points_and_where_each_step_runs(tmp_path: Path) -> None:
    text = _plan(_project(tmp_path), LR).describe()
    lines = text.splitlines()
    assert lines[1:3] == ["  lr-3e-3: continual-mathcode.optim.lr=3e-3",
                          "  lr-1e-2: continual-mathcode.optim.lr=1e-2"]  # fmt: skip
    rows = {line.split()[0]: line.split()[1:] for line in lines[4:-1]}
    assert rows["base"] == ["runs", "from", "lr-3e-3"]
    assert rows["continual-mathcode"] == ["runs", "runs"]
    assert lines[-1] == "shared (run once): prepare, base, eval-base"


@pytest.mark.parametrize(
    "name,own",
    [(".lock", True), ("train.lock", True), (".previous", True), ("step-00000008.tmp", True),
     (".manifest.json.tmp-123", True), (".hf.old-9", True), (".metadata", False),
     (".verified.json", False), ("meta.json", False), ("latest", False)],
)  # fmt: skip
def test_a_runs_own_bookkeeping_is_never_linked(name: str, own: bool) -> None:
    assert own_bookkeeping(name) is own


def test_values_split_on_commas_outside_brackets_and_quotes() -> None:
    assert split_values("1e-3, [0.9, 0.95],'a,b',{x: 1, y: 2}") == [
        "1e-3", " [0.9, 0.95]", "'a,b'", "{x: 1, y: 2}"
    ]  # fmt: skip


# ---- bad specs: the real command, one message, exit 2, nothing written -----------------------


def _tinylab(*args: str) -> tuple[int, str]:
    """`tinylab ARGS` in this process: exit code and stderr."""
    err = io.StringIO()
    argv, sys.argv = sys.argv, ["tinylab", *args]
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            try:
                cli.run()
                code = 0
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = argv
    return code, err.getvalue()


BAD = [  # extra arguments, what the message says
    (["--sweep", "base.optim.lr"], ["--sweep 'base.optim.lr'", "expected STEP.key=v1,v2"]),
    (["--sweep", "base=1,2"], ["--sweep 'base=1,2'", "expected STEP.key=v1,v2"]),
    (["--sweep", "nope.optim.lr=1,2"],
     ["no step 'nope'", "steps with a params file: prepare, base, eval-base"]),
    (["--sweep", "report.x=1,2"], ["step 'report' uses no params file", "prepare, base"]),
    (["--sweep", "base.optim.lrr=1,2"], ["--sweep 'base.optim.lrr=1,2'", "value '1'",
                                         "optim.lrr: unknown key; allowed keys: lr, min_lr"]),
    (["--sweep", "base.optim.lr=3e-3,-1"], ["value '-1'", "optim.lr = -1",
                                            "greater than 0"]),
    (["--sweep", "base.optim.lr="], ["--sweep 'base.optim.lr='", "an empty value"]),
    (["--sweep", "base.optim.lr=1,,2"], ["an empty value", "separated by commas"]),
    (["--sweep", "base.optim.lr=3e-3,1e-2,0.003"],
     ["'3e-3' and '0.003' are the same value", "give each value once"]),
    (["--sweep", "base.optim.lr=[1,2"], ["--sweep 'base.optim.lr=[1,2'", "malformed YAML"]),
    (["--sweep", "base.optim.lr=1,2", "--sweep", "base.optim.lr=3,4"],
     ["base.optim.lr is swept twice"]),
    (["--sweep", "base.optim.lr=1,2", "--set", "base.optim.lr=3"],
     ["base.optim.lr is also given with --set"]),
    (["--sweep", "base.name=a b,a_b"], ["both name the folder 'name-a_b'"]),
]  # fmt: skip


@pytest.mark.parametrize("args,expect", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_a_bad_sweep_spec_is_one_message_exit_2_and_writes_nothing(
    args: list[str], expect: list[str], tmp_path: Path
) -> None:
    project = _project(tmp_path)
    pipeline = project["pipeline"].read_text().replace('"notebook": "step"', '"notebook": '
                                                       '"01_prepare_data"')  # fmt: skip
    project["pipeline"].write_text(pipeline)  # notebooks/ of the project: the CLI's own
    before = sorted(tmp_path.rglob("*"))
    code, stderr = _tinylab("run", str(project["pipeline"]), "--run-id", str(tmp_path / "s"), *args)
    assert code == 2, stderr
    assert stderr.count("error: ") == 1 and "Traceback" not in stderr, stderr
    message = " ".join(stderr.split())
    for text in expect:
        assert text in message, f"{text!r} not in {message!r}"
    assert sorted(tmp_path.rglob("*")) == before
