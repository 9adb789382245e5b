"""tinylab.analysis.runs on a small synthetic run folder."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from _analysis_fixtures import LINEAGE, write_lineage_run, write_lineage_stage
from _train_fixtures import stage_config

from tinylab.analysis.runs import (
    benchmark_table,
    final_validation,
    lineage,
    load_run,
    stage_deltas,
    stage_frames,
    variants,
)
from tinylab.config.loader import ConfigError, dump_config
from tinylab.layout import RunLayout


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return write_lineage_run(tmp_path)


def test_load_run_concatenates_stages(run_dir: Path) -> None:
    run = load_run(run_dir)
    assert sorted(run.metrics["stage"].unique()) == sorted(LINEAGE)
    assert set(run.metrics["phase"]) == {"base", "continual", "cooldown"}
    assert len(run.validation) == 2 * len(LINEAGE)
    assert len(run.evals) == 3 * len(LINEAGE)


def test_stage_deltas_follow_the_lineage(run_dir: Path) -> None:
    deltas = stage_deltas(load_run(run_dir)).set_index(["stage", "measure"])
    assert deltas.loc[("continual", "code bpb"), "delta"] == pytest.approx(-0.5)
    assert deltas.loc[("cooldown", "arc_easy"), "delta"] == pytest.approx(0.05)
    assert deltas.loc[("cooldown", "arc_easy"), "stderr"] == pytest.approx(0.01 * 2**0.5)
    assert math.isnan(deltas.loc[("continual", "code bpb"), "stderr"])  # validation: no stderr
    assert deltas.loc[("continual", "boolq"), "delta"] == pytest.approx(0.0)
    assert set(deltas["variant"]) == {"code"}
    # held-out bits per byte counts once (from validation), with lower = better
    assert "perplexity/code" not in deltas.index.get_level_values("measure")


def test_stage_deltas_carry_their_intervals(run_dir: Path) -> None:
    """Each delta's 95% interval from the per-item samples (scores) and per-window bpb (eval's
    perplexity on the validation's windows), and whether it is within noise."""
    deltas = stage_deltas(load_run(run_dir)).set_index(["stage", "measure"])
    arc = deltas.loc[("continual", "arc_easy")]
    assert 0 < arc["low"] < arc["delta"] < arc["high"] and arc["items"] == 100
    assert arc["within_noise"] is False  # 5 items of 100 gained, none lost
    boolq = deltas.loc[("continual", "boolq")]
    assert boolq["low"] < -0.1 and boolq["high"] > 0.1 and boolq["within_noise"] is True
    code = deltas.loc[("continual", "code bpb")]
    assert (code["low"], code["high"]) == pytest.approx((-0.5, -0.5))  # every window -0.5
    assert code["items"] == 4 and code["within_noise"] is False
    english = deltas.loc[("continual", "english bpb")]  # no per-window data: no interval
    assert math.isnan(english["low"]) and english["within_noise"] is None


def test_a_delta_gets_no_interval_from_other_windows_than_validations(run_dir: Path) -> None:
    run = RunLayout(run_dir)
    for name in LINEAGE:
        lines = run.eval_samples(name).read_text().splitlines()
        run.eval_samples(name).write_text("\n".join(lines[:-1]) + "\n")  # 3 windows, not 4
    deltas = stage_deltas(load_run(run_dir)).set_index(["stage", "measure"])
    assert deltas.loc[("continual", "code bpb"), "within_noise"] is None
    assert deltas.loc[("continual", "arc_easy"), "within_noise"] is False


def test_benchmark_table_is_in_percent(run_dir: Path) -> None:
    table = benchmark_table(load_run(run_dir))
    base = table[(table["model"] == "ours: base") & (table["task"] == "arc_easy")]
    assert base["score"].item() == pytest.approx(25.0)
    assert base["chance"].item() == pytest.approx(25.0)
    assert "perplexity/code" not in set(table["task"])  # bits per byte is not a score in %


def test_lineage_and_variants() -> None:
    stages = ["base", "continual-zh", "cooldown-zh", "continual-code"]
    assert variants(stages) == ["zh", "code"]
    assert lineage(stages, "code") == ["base", "continual-code"]


def test_empty_run_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no trained stages"):
        load_run(tmp_path)


def test_stage_frames_label_phase_and_variant(run_dir: Path) -> None:
    train, validation = stage_frames(RunLayout(run_dir).stage("continual-code").root)
    assert list(train["step"]) == [1, 2, 3] and "mixture" not in train and "kind" not in train
    assert set(train["phase"]) == {"continual"} and set(train["variant"]) == {"code"}
    assert list(validation.columns[:6]) == ["step", "tokens", "domain", "loss", "bpb", "windows"]
    assert dict(zip(validation["domain"], validation["bpb"], strict=True)) == {
        "english": pytest.approx(1.9),
        "code": pytest.approx(2.5),
    }
    base, _ = stage_frames(RunLayout(run_dir).stage("base").root)
    assert set(base["variant"]) == {"base"}  # a stage without a variant is its own


def test_final_validation_is_each_stages_last(run_dir: Path) -> None:
    last = final_validation(load_run(run_dir))
    assert len(last) == 2 * len(LINEAGE)
    assert set(last["tokens"]) == {start + 30 for start, _ in LINEAGE.values()}


def test_a_counterfactual_stage_is_compared_with_its_real_parent(run_dir: Path) -> None:
    """cooldown-code-lrdecay starts from continual-code (init_from in its resolved.yaml), which
    its name does not say: its contribution is against continual-code, not base."""
    write_lineage_stage(run_dir, "cooldown-code-lrdecay", 150, 3)
    init_from = {"stage": "continual-code", "carry": ["weights"]}
    config = stage_config(name="cooldown-code-lrdecay", init_from=init_from)
    RunLayout(run_dir).stage("cooldown-code-lrdecay").resolved.write_text(dump_config(config))
    deltas = stage_deltas(load_run(run_dir)).set_index(["variant", "measure"])
    assert deltas.loc[("code-lrdecay", "arc_easy"), "delta"] == pytest.approx(0.10)  # 0.40 - 0.30
    assert deltas.loc[("code-lrdecay", "code bpb"), "delta"] == pytest.approx(-1.0)  # 1.0 - 2.0
    assert deltas.loc[("code-lrdecay", "code bpb"), "low"] == pytest.approx(-1.0)
    assert set(deltas.loc["code-lrdecay", "stage"]) == {"cooldown"}
    assert deltas.loc[("code", "arc_easy"), "delta"].tolist() == pytest.approx([0.05, 0.05])
