"""tinylab.data.plan and `tinylab prepare-plan`: tokens, disk and hours of preparing the paper's
data before it runs."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tinylab.cli import app
from tinylab.config.data import DataConfig
from tinylab.config.loader import PARAMS_DIR, load_config
from tinylab.data.plan import preparation_plan


def test_the_papers_data_on_128_cores() -> None:
    cfg = load_config(PARAMS_DIR / "data" / "tinyllama.yaml", DataConfig)
    frame = preparation_plan(cfg, cores=128, tokens_per_core_s=750_000).set_index("source")
    assert frame.loc["total", "tokens"] == pytest.approx(1.082e12)  # 627 + 250 + 55 + 150 B
    assert frame.loc["total", "disk GB"] == pytest.approx(2164)  # uint16
    hours = 1.082e12 / 750_000 / 128 / 3600
    assert frame.loc["total", "hours on 128 cores"] == pytest.approx(hours)  # ~3.1 h
    assert frame.loc["slimpajama", "core-hours"] == pytest.approx(6.27e11 / 750_000 / 3600)


def test_sources_without_a_size_are_unknown() -> None:
    cfg = load_config(PARAMS_DIR / "data" / "demo.yaml", DataConfig)
    frame = preparation_plan(cfg, cores=2, tokens_per_core_s=1e6)
    assert frame["tokens"].isna().all()


def test_prepare_plan_command() -> None:
    result = CliRunner().invoke(
        app, ["prepare-plan", str(PARAMS_DIR / "data" / "tinyllama.yaml"), "--cores", "64"]
    )
    assert result.exit_code == 0, result.output
    assert "1,082.0B" in result.output and "hours on 64 cores" in result.output
    assert "6.3" in result.output  # 1.082e12 / 750k / 64 / 3600 = 6.26 h
    bad = CliRunner().invoke(app, ["prepare-plan", "params/data/nope.yaml"])
    assert bad.exit_code == 2
