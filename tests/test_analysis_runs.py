"""tinylab.analysis.runs on a small synthetic run folder."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tinylab.analysis.runs import (
    benchmark_table,
    final_validation,
    lineage,
    load_run,
    stage_deltas,
    stage_frames,
    variants,
)
from tinylab.config.loader import ConfigError
from tinylab.layout import RunLayout

STAGES = {"base": (0, 0), "continual-code": (100, 1), "cooldown-code": (150, 2)}  # start, rank


def _write_stage(run_dir: Path, name: str, start: int, rank: int) -> None:
    run = RunLayout(run_dir)
    stage = run.stage(name)
    stage.root.mkdir(parents=True)
    lines = []
    for step in range(1, 4):
        tokens = start + 10 * step
        lines.append(
            {
                "kind": "train",
                "step": step,
                "stage_step": step,
                "tokens": tokens,
                "loss": 5.0 - rank - step / 10,
                "lr": 1e-3,
                "grad_norm": 1.0,
                "tokens_per_s": 1000.0,
                "mfu": None,
                "peak_mem_bytes": 1,
                "mixture": {},
            }
        )
    lines.append(
        {
            "kind": "val",
            "step": 3,
            "tokens": start + 30,
            "domains": {
                "english": {"loss": 3.0, "bpb": 2.0 - 0.1 * rank, "windows": 4},
                "code": {"loss": 3.0, "bpb": 3.0 - 0.5 * rank, "windows": 4},
            },
        }
    )
    stage.metrics.write_text("".join(json.dumps(r) + "\n" for r in lines))
    results = [
        {
            "task": "arc_easy",
            "metric": "acc_norm",
            "value": 0.25 + 0.05 * rank,
            "stderr": 0.01,
            "n": 100,
            "chance": 0.25,
        },
        {"task": "boolq", "metric": "acc", "value": 0.5, "stderr": 0.01, "n": 100, "chance": 0.5},
        {
            "task": "perplexity/code",
            "metric": "bits_per_byte",
            "value": 3.0 - 0.5 * rank,
            "stderr": None,
            "n": 8,
            "chance": None,
        },
    ]
    run.eval.mkdir(exist_ok=True)
    run.eval_json(name).write_text(json.dumps({"checkpoint": name, "results": results}))


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    for name, (start, rank) in STAGES.items():
        _write_stage(tmp_path, name, start, rank)
    return tmp_path


def test_load_run_concatenates_stages(run_dir: Path) -> None:
    run = load_run(run_dir)
    assert sorted(run.metrics["stage"].unique()) == sorted(STAGES)
    assert set(run.metrics["phase"]) == {"base", "continual", "cooldown"}
    assert len(run.validation) == 2 * len(STAGES)
    assert len(run.evals) == 3 * len(STAGES)


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
    assert len(last) == 2 * len(STAGES)
    assert set(last["tokens"]) == {start + 30 for start, _ in STAGES.values()}
