"""notebooks/03_evaluate.ipynb: committed without outputs, runs under Papermill from notebooks/
(paths resolve against the project root), and `evaluate_stage` finds a run's export."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from _evaluate_fixtures import arc_task, tiny_hf_dir

from tinylab.evaluate import EvalError, evaluate_stage
from tinylab.layout import RunLayout
from tinylab.notebook import NOTEBOOKS_DIR

NOTEBOOK = NOTEBOOKS_DIR / "03_evaluate.ipynb"


def _run_with_eval_params(tmp_path: Path) -> tuple[Path, Path]:
    run_dir = tmp_path / "run"
    tiny_hf_dir(RunLayout(run_dir).stage("base").hf)
    tasks = arc_task(tmp_path / "tasks")
    params = tmp_path / "eval.yaml"
    params.write_text(
        "tasks: [{name: local_arc_easy, metric: acc_norm, chance: 0.25}]\n"
        f"include_path: {tasks}\nbatch_size: 8\ndevice: cpu\n"
    )
    return run_dir, params


def test_notebook_is_committed_clean_with_typed_parameters() -> None:
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)
    parameters = [c for c in code if "parameters" in c["metadata"].get("tags", [])]
    assert len(parameters) == 1
    for line in "".join(parameters[0]["source"]).splitlines():
        assert ": " in line.split("=")[0] and "  # " in line, line  # typed, commented


def test_evaluate_stage_reads_the_run_layout(tmp_path: Path) -> None:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    run_dir, params = _run_with_eval_params(tmp_path)
    results = evaluate_stage(params, run_dir, "base", overrides=["limit=4"])
    assert results["results"][0]["n"] == 4
    assert RunLayout(run_dir).eval_json("base").is_file()
    with pytest.raises(EvalError, match="train stage 'cooldown'"):
        evaluate_stage(params, run_dir, "cooldown")


@pytest.mark.slow
def test_notebook_runs_under_papermill_from_the_notebooks_folder(tmp_path: Path) -> None:
    import papermill

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    run_dir, params = _run_with_eval_params(tmp_path)
    out = tmp_path / "out.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOK), str(out), cwd=str(NOTEBOOK.parent), progress_bar=False,
        parameters={"run_dir": str(run_dir), "eval_params": str(params), "overrides": []},
    )  # fmt: skip
    assert RunLayout(run_dir).eval_json("base").is_file()
    executed = json.loads(out.read_text())
    images = [
        o
        for c in executed["cells"]
        for o in c.get("outputs", [])
        if "image/png" in o.get("data", {})
    ]
    assert len(images) == 1
