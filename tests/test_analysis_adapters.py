"""tinylab.analysis.adapters: full vs LoRA side by side, on a small synthetic run folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _analysis_fixtures import CHILD, write_run, write_stage

from tinylab.analysis.adapters import adapter_pairs, comparison_tables, side_by_side
from tinylab.analysis.runs import load_run
from tinylab.layout import RunLayout


@pytest.fixture
def run(tmp_path: Path):
    return load_run(write_run(tmp_path))


def test_pairs_match_parent_and_mixture(run) -> None:
    assert adapter_pairs(run) == [("continual-code", "continual-code-lora")]


def test_a_full_stage_with_another_ramp_is_no_pair(tmp_path: Path) -> None:
    ramp = {"tokens": 100, "start": {"prose": 1.0}}
    write_stage(tmp_path, "continual-code", {**CHILD, "ramp": ramp}, 2.0, 0.4, (1, 1), 1)
    write_stage(tmp_path, "continual-code-noramp", CHILD, 2.0, 0.4, (1, 1), 1)
    write_stage(tmp_path, "continual-code-lora", {**CHILD, "ramp": ramp, "adapter": "lora"}, 2.0,
                0.4, (1, 1), 1)  # fmt: skip
    assert adapter_pairs(load_run(tmp_path)) == [("continual-code", "continual-code-lora")]


def test_side_by_side_shows_costs_and_effects_against_the_parent(run) -> None:
    table = side_by_side(run, "continual-code", "continual-code-lora")
    assert list(table.columns) == ["continual-code", "continual-code-lora"]
    full, lora = table["continual-code"], table["continual-code-lora"]
    assert (full["trainable params"], lora["trainable params"]) == (1000, 10)
    assert isinstance(lora["trainable params"], int)  # a count, not 10.0
    assert (full["trainable (% of total)"], lora["trainable (% of total)"]) == (100.0, 0.99)
    assert lora["wall time (s)"] == 12.3
    assert lora["tokens/s (median)"] == 2000.0
    assert (full["peak memory (MiB)"], lora["peak memory (MiB)"]) == (300.0, 150.0)
    assert full["code bpb before"] == lora["code bpb before"] == 3.0  # base's
    assert (full["code bpb after"], lora["code bpb after"]) == (2.0, 2.5)
    assert full["arc_easy (acc_norm) delta"] == pytest.approx(0.10)
    assert lora["arc_easy (acc_norm) delta"] == pytest.approx(0.05)


def test_unrecorded_counts_are_none_not_zero(run) -> None:
    path = RunLayout(run.run_dir).stage("continual-code").result
    result = json.loads(path.read_text())
    del result["trainable_params"], result["total_params"]  # a result from before the counts
    path.write_text(json.dumps(result))
    table = comparison_tables(load_run(run.run_dir))["continual-code vs continual-code-lora"]
    assert table.loc["trainable params", "continual-code"] is None
    assert table.loc["trainable (% of total)", "continual-code"] is None
