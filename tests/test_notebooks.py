"""Every notebook is thin and pipeline-ready: a tagged parameters cell that papermill reads whole,
run_dir and overrides among the parameters, and no outputs committed. Notebooks 01, 04 and 05
run under Papermill on a tiny run (02 and 03: tests/test_train_notebook.py and
tests/test_evaluate_notebook.py)."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import nbformat
import papermill
import pytest
import yaml
from _evaluate_fixtures import arc_task
from _train_fixtures import DATA, stage_config, write_corpora

from tinylab.config import PROJECT_ROOT, dump_config
from tinylab.layout import RunLayout
from tinylab.notebook import NOTEBOOKS_DIR, execute_notebook

NOTEBOOKS = sorted((PROJECT_ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_cell_is_read_whole_by_papermill(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "exactly one cell tagged 'parameters'"
    declared = [node.target.id for node in ast.parse(cells[0].source).body]  # annotated only
    assert list(papermill.inspect_notebook(str(path))) == declared
    assert {"run_dir", "overrides"} <= set(declared)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None


def test_the_five_notebooks_exist() -> None:
    names = [p.stem for p in NOTEBOOKS]
    assert names == ["01_prepare_data", "02_train_stage", "03_evaluate", "04_report", "05_explore"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> RunLayout:
    """Data prepared by notebook 01 from the tiny corpora, one tiny stage trained, evaluated on
    four questions of a local task."""
    from tinylab.evaluate import evaluate_stage
    from tinylab.train import train_stage

    root = tmp_path_factory.mktemp("notebooks")
    write_corpora(root)
    data = {**DATA, "sources": {n: {**s, "paths": [str(root / p) for p in s["paths"]]}
                                for n, s in DATA["sources"].items()}}  # fmt: skip
    (root / "data.yaml").write_text(yaml.safe_dump(data))
    run = RunLayout(root / "run")
    parameters = {"data_params": str(root / "data.yaml"), "run_dir": str(run.root)}
    execute_notebook(NOTEBOOKS_DIR / "01_prepare_data.ipynb", root / "01.ipynb",
                     {**parameters, "progress": False})  # fmt: skip
    stage = root / "base.yaml"
    stage.write_text(dump_config(stage_config(max_tokens=2048)))
    train_stage(stage, run.root, progress=False)
    evals = root / "eval.yaml"
    evals.write_text(
        "tasks: [{name: local_arc_easy, metric: acc_norm, chance: 0.25}]\n"
        f"include_path: {arc_task(root / 'tasks')}\nbatch_size: 8\ndevice: cpu\nlimit: 4\n"
    )
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    evaluate_stage(evals, run.root, "base", progress=False)
    return run


@pytest.mark.slow
def test_prepare_data_notebook_writes_the_run_data(tiny_run: RunLayout) -> None:
    assert tiny_run.data_index.is_file()
    assert (tiny_run.data / "data_card.md").is_file()


@pytest.mark.slow
def test_report_notebook_runs_on_a_tiny_run(tiny_run: RunLayout, tmp_path: Path) -> None:
    execute_notebook(NOTEBOOKS_DIR / "04_report.ipynb", tmp_path / "04.ipynb",
                     {"run_dir": str(tiny_run.root)})  # fmt: skip
    assert (tiny_run.figures / "loss.png").is_file()


@pytest.mark.slow
def test_explore_notebook_runs_on_a_tiny_run(tiny_run: RunLayout, tmp_path: Path) -> None:
    parameters = {"model_path": str(tiny_run.stage("base").root), "run_dir": str(tiny_run.root),
                  "max_new_tokens": 4}  # fmt: skip
    out = execute_notebook(NOTEBOOKS_DIR / "05_explore.ipynb", tmp_path / "05.ipynb", parameters)
    outputs = [o for c in nbformat.read(out, as_version=4).cells for o in c.get("outputs", [])]
    assert any(o.get("name") == "stdout" and "The king said" in o["text"] for o in outputs)
