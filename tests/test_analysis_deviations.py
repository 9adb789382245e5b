"""tinylab.analysis.deviations: the settings in which a run departs from the paper."""

from __future__ import annotations

from tinylab.analysis.deviations import deviations
from tinylab.config.loader import PARAMS_DIR, load_config
from tinylab.config.stage import StageConfig


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
