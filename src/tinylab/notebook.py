"""Executing a notebook: the one place that calls Papermill.

Every step of a pipeline and the report run a notebook from notebooks/ in a fresh `python3`
kernel whose working directory is the project root (so relative paths in parameters mean the
same in JupyterLab, under `tinylab run` and in the report), with the given parameters injected
after the cell tagged `parameters`.

    execute_notebook(NOTEBOOKS_DIR / "04_report.ipynb", RUN / "notebooks" / "report.ipynb",
                     {"run_dir": str(RUN)})
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from tinylab.config.loader import PROJECT_ROOT

NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
# Starts of a kernel that dies (or never answers) before its first cell, before giving up: two
# kernels started at once can be handed the same free port and one dies binding it
# (jupyter/jupyter_client#154, nteract/papermill#511), as JupyterLab's own restarter knows.
KERNEL_STARTS = 3


def execute_notebook(
    notebook: Path, output: Path, parameters: dict[str, Any], *, log_output: bool = False
) -> Path:
    """Run `notebook` with `parameters` into `output` (papermill; a failing cell raises
    papermill's PapermillExecutionError, with the cell's error); returns `output`. A kernel that
    dies before running a cell is started again, up to KERNEL_STARTS times in all."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    start = 1
    while True:
        try:
            return _execute_once(notebook, output, parameters, log_output)
        except RuntimeError as err:  # jupyter_client's "Kernel died before replying ..."
            if _a_cell_started(output):
                raise
            if start == KERNEL_STARTS:
                raise RuntimeError(
                    f"{notebook.name}: the kernel stopped before its first cell at each of "
                    f"{KERNEL_STARTS} starts; the last: {err}"
                ) from err
            start += 1
            print(
                f"[tinylab.notebook] {notebook.name}: the kernel did not start ({err}); "
                f"starting another ({start} of {KERNEL_STARTS})",
                file=sys.stderr,
                flush=True,
            )


def _execute_once(
    notebook: Path, output: Path, parameters: dict[str, Any], log_output: bool
) -> Path:
    import papermill

    # papermill rewrites the file in place after each cell: start a new one, so an older
    # execution hard-linked elsewhere (a sweep point's shared step) is never written through
    output.unlink(missing_ok=True)
    papermill.execute_notebook(
        _literal(notebook),
        _literal(output),
        parameters=parameters,
        cwd=str(PROJECT_ROOT),
        kernel_name="python3",
        log_output=log_output,
        progress_bar=False,
        # the kernel's own log goes straight to the terminal: errors only, not the warning
        # about TCP without encryption (its ports listen on 127.0.0.1) at every start
        extra_arguments=["--IPKernelApp.log_level=ERROR"],
    )
    return output


def _literal(path: Path) -> str:
    """`path` as papermill takes it word for word (it fills paths in as format strings with the
    parameters: a folder named `lr{x}` would otherwise be another folder, or an error)."""
    return str(path).replace("{", "{{").replace("}", "}}")


def _a_cell_started(output: Path) -> bool:
    """Whether papermill gave a cell of `output` a start time (it writes the notebook before it
    starts the kernel, and again as each cell starts). A notebook it cannot read, or none at all
    (papermill failed before any kernel, or wrote elsewhere), counts as started: nothing runs
    twice."""
    import nbformat

    try:
        cells = nbformat.read(output, as_version=4).cells
    except (OSError, ValueError, nbformat.ValidationError):
        return True
    return any(c.metadata.get("papermill", {}).get("start_time") for c in cells)
