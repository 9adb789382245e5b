"""tinylab.analysis.adapters: full vs LoRA side by side, on a small synthetic run folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _train_fixtures import stage_config

from tinylab.analysis.adapters import adapter_pairs, comparison_tables, side_by_side
from tinylab.analysis.runs import load_run
from tinylab.config import dump_config

CHILD = {"mixture": {"prose": 1, "code": 1}, "init_from": {"stage": "base", "carry": ["weights"]}}
STAGES = {  # name: (config overrides, code bpb at the end, arc_easy score, counts, peak MiB)
    "base": ({}, 3.0, 0.30, (1000, 1000), 100),
    "continual-code": (CHILD, 2.0, 0.40, (1000, 1000), 300),
    "continual-code-lora": ({**CHILD, "adapter": "lora"}, 2.5, 0.35, (10, 1010), 150),
    "continual-prose-lora": ({**CHILD, "mixture": {"prose": 1}, "adapter": "lora"}, 2.9, 0.3,
                             (10, 1010), 150),  # no full stage with this mixture: no pair
}  # fmt: skip


def _write(run: Path, name: str, overrides: dict, bpb: float, score: float, counts, mib) -> None:
    folder = run / "stages" / name
    folder.mkdir(parents=True)
    (folder / "resolved.yaml").write_text(dump_config(stage_config(name=name, **overrides)))
    records = [
        {"kind": "train", "step": s, "stage_step": s, "tokens": 100 * s, "loss": 3.0, "lr": 1e-3,
         "grad_norm": 1.0, "tokens_per_s": 1000.0 * s, "mfu": None,
         "peak_mem_bytes": mib * 2**20 * s // 3}
        for s in (1, 2, 3)
    ] + [
        {"kind": "val", "step": 3, "tokens": 300,
         "domains": {"code": {"loss": 1.0, "bpb": bpb, "windows": 4},
                     "english": {"loss": 1.0, "bpb": 2.0, "windows": 4}}}
    ]  # fmt: skip
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    result = {"stage": name, "stage_dir": str(folder), "step": 3, "tokens": 300,
              "stage_tokens": 300, "final_loss": 3.0, "wall_s": 12.34, "checkpoint": None,
              "hf_dir": None, "trainable_params": counts[0], "total_params": counts[1]}  # fmt: skip
    (folder / "result.json").write_text(json.dumps(result))
    evals = [{"task": "arc_easy", "metric": "acc_norm", "value": score, "stderr": 0.01, "n": 9}]
    (run / "eval").mkdir(exist_ok=True)
    (run / "eval" / f"{name}.json").write_text(json.dumps({"checkpoint": name, "results": evals}))


@pytest.fixture
def run(tmp_path: Path):
    for name, spec in STAGES.items():
        _write(tmp_path, name, *spec)
    return load_run(tmp_path)


def test_pairs_match_parent_and_mixture(run) -> None:
    assert adapter_pairs(run) == [("continual-code", "continual-code-lora")]


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
    path = run.run_dir / "stages" / "continual-code" / "result.json"
    result = json.loads(path.read_text())
    del result["trainable_params"], result["total_params"]  # a result from before the counts
    path.write_text(json.dumps(result))
    table = comparison_tables(load_run(run.run_dir))["continual-code vs continual-code-lora"]
    assert table.loc["trainable params", "continual-code"] is None
    assert table.loc["trainable (% of total)", "continual-code"] is None
