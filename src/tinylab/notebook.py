"""Executing a notebook: the one place that calls Papermill.

Every step of a pipeline and the report run a notebook from notebooks/ in a fresh `python3`
kernel whose working directory is the project root (so relative paths in parameters mean the
same in JupyterLab, under `tinylab run` and in the report), with the given parameters injected
after the cell tagged `parameters`.

    execute_notebook(NOTEBOOKS_DIR / "04_report.ipynb", RUN / "notebooks" / "report.ipynb",
                     {"run_dir": str(RUN)})
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tinylab.config.loader import PROJECT_ROOT

NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"


def execute_notebook(
    notebook: Path, output: Path, parameters: dict[str, Any], *, log_output: bool = False
) -> Path:
    """Run `notebook` with `parameters` into `output` (papermill; a failing cell raises
    papermill's PapermillExecutionError, with the cell's error); returns `output`."""
    import papermill

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    # papermill rewrites the file in place after each cell: start a new one, so an older
    # execution hard-linked elsewhere (a sweep point's shared step) is never written through
    output.unlink(missing_ok=True)
    papermill.execute_notebook(
        str(notebook),
        str(output),
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
