"""Every notebook is thin and pipeline-ready: a tagged parameters cell that papermill reads whole,
run_dir and overrides among the parameters, and no outputs committed. Notebook 01 runs under
Papermill on tiny corpora here; 02 to 06 run in tests/test_train_notebook.py,
test_evaluate_notebook.py, test_analysis_publish.py, test_analysis_probe.py and
test_analysis_compare.py."""

from __future__ import annotations

import ast
import json
import os
import sys
from pathlib import Path

import nbformat
import papermill
import pytest
import yaml
from _pipeline_fixtures import write_notebook
from _train_fixtures import DATA, write_corpora

from tinylab.config.loader import PROJECT_ROOT
from tinylab.layout import RunLayout
from tinylab.notebook import KERNEL_STARTS, NOTEBOOKS_DIR, execute_notebook

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


def test_the_six_notebooks_exist() -> None:
    names = [p.stem for p in NOTEBOOKS]
    assert names == ["01_prepare_data", "02_train_stage", "03_evaluate", "04_report", "05_explore",
                     "06_compare"]  # fmt: skip


@pytest.mark.slow
def test_prepare_data_notebook_writes_the_run_data(tmp_path: Path) -> None:
    write_corpora(tmp_path)
    data = {**DATA, "sources": {n: {**s, "paths": [str(tmp_path / p) for p in s["paths"]]}
                                for n, s in DATA["sources"].items()}}  # fmt: skip
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(data))
    run = RunLayout(tmp_path / "run")
    parameters = {"data_params": str(tmp_path / "data.yaml"), "run_dir": str(run.root)}
    out = execute_notebook(NOTEBOOKS_DIR / "01_prepare_data.ipynb", tmp_path / "01.ipynb",
                           {**parameters, "progress": False})  # fmt: skip
    assert run.data_index.is_file() and (run.data / "data_card.md").is_file()
    outputs = [o for c in nbformat.read(out, as_version=4).cells for o in c.get("outputs", [])]
    shown = " ".join(str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "prose" in shown and "code" in shown  # the token table, one row per source


def test_executing_writes_a_new_output_file_not_through_a_hard_link(tmp_path) -> None:
    """A sweep point's executed notebook is a hard link to the point that ran it: rerunning the
    step there must leave the other point's copy as it was."""
    notebook = write_notebook(tmp_path / "n.ipynb", "x = 1", "y = x + 1")
    output = tmp_path / "run" / "step.ipynb"
    execute_notebook(notebook, output, {"x": 1})
    other = tmp_path / "other.ipynb"
    os.link(output, other)
    before = other.read_bytes()
    execute_notebook(notebook, output, {"x": 41})
    assert other.read_bytes() == before and output.read_bytes() != before
    assert os.stat(other).st_nlink == 1


def test_paths_with_braces_are_taken_word_for_word(tmp_path) -> None:
    """Papermill fills its paths in as format strings with the parameters."""
    folder = tmp_path / "lr{x}}{"
    folder.mkdir()
    notebook = write_notebook(folder / "n{x}.ipynb", "x = 1", "print(x)")
    out = execute_notebook(notebook, folder / "run{x}" / "out.ipynb", {"x": 7})
    assert out == folder / "run{x}" / "out.ipynb"
    assert nbformat.read(out, as_version=4).cells[-1].outputs[0]["text"] == "7\n"


# A python3 kernel that dies at its first `fails` starts (exit 1 before binding its ports, as
# one that lost a port to another kernel), then runs as ipykernel; it counts its starts.
FLAKY_LAUNCHER = """
import sys
from pathlib import Path

starts, fails = Path(sys.argv[1]), int(sys.argv[2])
count = int(starts.read_text()) + 1 if starts.exists() else 1
starts.write_text(str(count))
if count <= fails:
    sys.exit(1)
sys.argv = [sys.argv[0], *sys.argv[3:]]
from ipykernel import kernelapp

kernelapp.launch_new_instance()
"""


def _flaky_kernel(root: Path, monkeypatch, fails: int) -> Path:
    """The python3 kernel spec (first on JUPYTER_PATH) starting FLAKY_LAUNCHER; its count file."""
    launcher, starts = root / "launcher.py", root / "starts"
    launcher.write_text(FLAKY_LAUNCHER)
    spec = root / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, str(launcher), str(starts), str(fails), "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "flaky",
                                                  "language": "python"}))  # fmt: skip
    monkeypatch.setenv("JUPYTER_PATH", str(root / "jupyter"))
    return starts


def test_a_kernel_that_dies_before_its_first_cell_is_started_again(
    tmp_path, monkeypatch, capsys
) -> None:
    starts = _flaky_kernel(tmp_path, monkeypatch, fails=KERNEL_STARTS - 1)
    notebook = write_notebook(tmp_path / "n.ipynb", "x = 1", "print(x + 1)")
    out = execute_notebook(notebook, tmp_path / "out.ipynb", {"x": 41})
    assert starts.read_text() == str(KERNEL_STARTS)
    assert nbformat.read(out, as_version=4).cells[-1].outputs[0]["text"] == "42\n"
    said = capsys.readouterr().err
    assert "n.ipynb: the kernel did not start" in said and f"({KERNEL_STARTS} of " in said


def test_a_kernel_that_never_starts_fails_after_the_last_start(tmp_path, monkeypatch) -> None:
    starts = _flaky_kernel(tmp_path, monkeypatch, fails=KERNEL_STARTS)
    notebook = write_notebook(tmp_path / "n.ipynb", "x = 1")
    at_each = f"n.ipynb: the kernel stopped before its first cell at each of {KERNEL_STARTS} "
    with pytest.raises(RuntimeError, match=f"{at_each}starts; the last: Kernel died"):
        execute_notebook(notebook, tmp_path / "out.ipynb", {})
    assert starts.read_text() == str(KERNEL_STARTS)


def test_a_kernel_that_dies_in_a_cell_is_not_started_again(tmp_path, monkeypatch) -> None:
    """The cells before it ran: running them again could repeat what they did."""
    starts = _flaky_kernel(tmp_path, monkeypatch, fails=0)
    notebook = write_notebook(tmp_path / "n.ipynb", "x = 1", "import os; os._exit(1)")
    with pytest.raises(RuntimeError, match="Kernel died") as raised:
        execute_notebook(notebook, tmp_path / "out.ipynb", {})
    assert "at each of" not in str(raised.value)
    assert starts.read_text() == "1"
