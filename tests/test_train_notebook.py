"""notebooks/02_train_stage.ipynb runs under papermill (cwd notebooks/) on a tiny stage."""

from __future__ import annotations

import json

import pytest
from _train_fixtures import new_run, prepare_data, stage_config

from tinylab.config.loader import PROJECT_ROOT, dump_config

NOTEBOOK = PROJECT_ROOT / "notebooks" / "02_train_stage.ipynb"


def test_notebook_is_committed_without_outputs_and_has_typed_parameters() -> None:
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    assert cells[0]["cell_type"] == "markdown" and cells[0]["source"][0].startswith("# ")
    (params,) = [c for c in cells if "parameters" in c["metadata"].get("tags", [])]
    source = "".join(params["source"])
    for name in ("stage_params: str", "run_dir: str", "nproc: int", "overrides: list"):
        assert name in source
    assert '"params/stages/demo/base.yaml"' in source
    assert all(not c.get("outputs") and not c.get("execution_count") for c in cells if
               c["cell_type"] == "code")  # fmt: skip


@pytest.mark.slow
def test_notebook_trains_a_tiny_stage_under_papermill(tmp_path) -> None:
    papermill = pytest.importorskip("papermill")
    run = new_run(tmp_path, prepare_data(tmp_path / "prepared"))
    config = tmp_path / "tiny.yaml"
    config.write_text(dump_config(stage_config(max_tokens=2048)))
    papermill.execute_notebook(
        str(NOTEBOOK),
        str(tmp_path / "out.ipynb"),
        parameters={"stage_params": str(config), "run_dir": str(run), "nproc": 1},
        cwd=str(NOTEBOOK.parent),
        progress_bar=False,
        kernel_name="python3",
    )
    assert (run / "stages" / "base" / "hf" / "model.safetensors").is_file()
    assert len((run / "stages" / "base" / "metrics.jsonl").read_text().splitlines()) >= 2
