"""The published report: 04_report executed on a run, rendered to one self-contained HTML file.

The report notebook reads the run folder's files (never other notebooks' outputs); nbconvert
renders it with the code hidden and images embedded, so report.html can be mailed or hosted as
one file that opens offline (no script, style or font comes from the network).

    tinylab report outputs/runs/demo
"""

from __future__ import annotations

from pathlib import Path

from tinylab.analysis.runs import stage_configs
from tinylab.config.loader import ConfigError, project_path
from tinylab.files import write_atomic
from tinylab.layout import RunLayout
from tinylab.notebook import NOTEBOOKS_DIR, execute_notebook

TEMPLATE = Path(__file__).parent / "templates" / "report.html.j2"
REPORT_NOTEBOOK = NOTEBOOKS_DIR / "04_report.ipynb"


def render_report(run_dir: Path | str, *, notebook: Path = REPORT_NOTEBOOK) -> Path:
    """Execute the report notebook on a run and write run_dir/report.html; return its path."""
    run = RunLayout(project_path(run_dir))
    if not run.manifest.is_file() and not run.stages.is_dir():
        raise ConfigError(f"{run.root}: not a run folder (no manifest.json and no stages/)")
    stage_configs(run)  # a stage file this version cannot read: one message, nothing written
    executed = execute_notebook(
        notebook, run.notebooks / "report.ipynb", {"run_dir": str(run.root)}
    )
    return notebook_to_html(executed, run.report)


def notebook_to_html(executed: Path, html_path: Path) -> Path:
    """Render an executed notebook as HTML with inputs hidden and images embedded, and without
    what the cells wrote to stderr (library warnings: the executed notebook keeps them)."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(
        template_file=str(TEMPLATE),
        exclude_input=True,
        exclude_input_prompt=True,
        exclude_output_prompt=True,
        embed_images=True,
    )
    notebook = nbformat.read(executed, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = [out for out in cell.outputs if out.get("name") != "stderr"]
    body, _ = exporter.from_notebook_node(notebook)
    write_atomic(html_path, body.encode("utf-8"))
    return html_path
