"""Every notebook is thin and pipeline-ready: a tagged parameters cell that papermill reads whole,
run_dir and overrides among the parameters, and no outputs committed."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import papermill
import pytest

from tinylab.config import PROJECT_ROOT

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
