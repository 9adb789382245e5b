"""tinylab.analysis.report: deviations from the paper, and HTML rendering."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat

from tinylab.analysis.report import deviations, notebook_to_html
from tinylab.config import PARAMS_DIR, StageConfig, load_config


def _stage(path: str) -> StageConfig:
    return load_config(PARAMS_DIR / "stages" / path, StageConfig)


def test_the_paper_does_not_deviate_from_itself() -> None:
    paper = {"base": _stage("tinyllama-v1.1/base.yaml")}
    assert deviations(paper, paper) == []


def test_demo_base_deviations_name_the_settings() -> None:
    paper = {"base": _stage("tinyllama-v1.1/base.yaml")}
    rows = deviations({"base": _stage("demo/base.yaml")}, paper)
    by_setting = {row["setting"]: row for row in rows}
    assert by_setting["model width x layers"]["paper"] == "2048 x 22"
    assert by_setting["model width x layers"]["this run"] == "128 x 4"
    assert by_setting["global batch (tokens)"]["paper"] == "2097152"
    assert "grad clip" not in by_setting  # both clip at 1.0


def test_stage_missing_from_the_paper_is_listed() -> None:
    rows = deviations({"lora": _stage("demo/base.yaml")}, {})
    assert rows == [{"stage": "lora", "setting": "stage", "paper": "(none)", "this run": "lora"}]


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
    external = re.findall(r'<script[^>]*src="(http[^"]*)"', html)
    assert all("mathjax" in url for url in external), external
