"""tinylab.analysis.publish: the report notebook executed on a run and rendered to HTML with the
code hidden and images embedded."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import nbformat
import pytest
from _analysis_fixtures import write_run

from tinylab.analysis.publish import notebook_to_html, render_report
from tinylab.config.loader import ConfigError
from tinylab.layout import RunLayout


def test_html_hides_code_and_embeds_images(tmp_path: Path) -> None:
    png = nbformat.v4.new_output(
        "display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"}
    )
    cell = nbformat.v4.new_code_cell("secret_code_line = 1", outputs=[png])
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Title"), cell])
    executed = tmp_path / "report.ipynb"
    nbformat.write(nb, executed)
    html = notebook_to_html(executed, tmp_path / "report.html").read_text()
    assert "secret_code_line" not in html
    assert "data:image/png;base64,iVBORw0KGgo=" in html
    assert "Title" in html
    external = re.findall(r"""(?:src=|href=|import\()\s*["'](https?://[^"']*)""", html)
    assert external == [], external  # opens offline: nothing loads from a CDN
    assert "mathjax" not in html.lower()


def test_html_leaves_out_what_cells_wrote_to_stderr(tmp_path: Path) -> None:
    """The GPU run's report opened with two library warnings (tqdm without ipywidgets, torchao's
    SyntaxWarning) in red: the published page shows results; the executed notebook keeps them."""
    warning = nbformat.v4.new_output("stream", name="stderr", text="TqdmWarning: IProgress\n")
    said = nbformat.v4.new_output("stream", name="stdout", text="trained 16 steps\n")
    cell = nbformat.v4.new_code_cell("run()", outputs=[warning, said])
    executed = tmp_path / "report.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), executed)
    html = notebook_to_html(executed, tmp_path / "report.html").read_text()
    assert "trained 16 steps" in html and "TqdmWarning" not in html
    assert "TqdmWarning" in executed.read_text()


def test_a_folder_that_is_no_run_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a run folder"):
        render_report(tmp_path)


@pytest.mark.slow
def test_the_report_notebook_renders_a_run(tmp_path: Path) -> None:
    run = RunLayout(write_run(tmp_path / "run"))
    assert render_report(run.root) == run.report
    html = run.report.read_text()
    assert "Deviations from the paper" in html and "continual-code vs continual-code-lora" in html
    assert "Beside the paper&#39;s numbers" in html or "Beside the paper's numbers" in html
    assert "not in the paper" in html and "schedule.decay_tokens" in html  # LoRA row, assumptions
    assert "from tinylab" not in html  # code hidden
    # it opens with what the run found, in sentences made from its numbers, before all else
    assert html.index("What this run found") < html.index("Provenance")
    found = "<strong>continual-code</strong>: code bits per byte fell by 1.000 (better; no per-item"
    assert found in html  # the fixture's evaluations have no samples to resample
    figures = {"loss", "bits_per_byte", "stage_contributions", "benchmarks", "throughput"}
    figures.add("reference")
    assert {p.stem for p in run.figures.glob("*.png")} == figures
    for png in run.figures.glob("*.png"):  # each figure embedded as drawn
        assert f"data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}" in html
    assert (run.notebooks / "report.ipynb").is_file()
