"""A small synthetic run folder for the tinylab.analysis tests: resolved stage configs, metrics,
stage results and evaluations, written where tinylab.layout says they live."""

from __future__ import annotations

import json
from pathlib import Path

from _train_fixtures import stage_config

from tinylab.config.loader import dump_config
from tinylab.layout import RunLayout

CHILD = {"mixture": {"prose": 1, "code": 1}, "init_from": {"stage": "base", "carry": ["weights"]}}
STAGES = {  # name: (config overrides, code bpb at the end, arc_easy score, counts, peak MiB)
    "base": ({}, 3.0, 0.30, (1000, 1000), 100),
    "continual-code": (CHILD, 2.0, 0.40, (1000, 1000), 300),
    "continual-code-lora": ({**CHILD, "adapter": "lora"}, 2.5, 0.35, (10, 1010), 150),
    "continual-prose-lora": ({**CHILD, "mixture": {"prose": 1}, "adapter": "lora"}, 2.9, 0.3,
                             (10, 1010), 150),  # no full stage with this mixture: no pair
}  # fmt: skip


def write_stage(run_dir: Path, name: str, overrides: dict, bpb: float, score: float, counts,
                mib) -> None:  # fmt: skip
    """One trained and evaluated stage: three train steps, one validation, result.json and an
    eval JSON with one arc_easy score."""
    run = RunLayout(run_dir)
    stage = run.stage(name)
    stage.root.mkdir(parents=True, exist_ok=True)
    stage.resolved.write_text(dump_config(stage_config(name=name, **overrides)))
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
    stage.metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    result = {"stage": name, "stage_dir": str(stage.root), "step": 3, "tokens": 300,
              "stage_tokens": 300, "final_loss": 3.0, "wall_s": 12.34, "checkpoint": None,
              "hf_dir": None, "trainable_params": counts[0], "total_params": counts[1]}  # fmt: skip
    stage.result.write_text(json.dumps(result))
    evals = [{"task": "arc_easy", "metric": "acc_norm", "value": score, "stderr": 0.01, "n": 9}]
    run.eval.mkdir(exist_ok=True)
    run.eval_json(name).write_text(json.dumps({"checkpoint": name, "results": evals}))


def write_run(run_dir: Path) -> Path:
    """The run of STAGES: a base, a full and a LoRA continual stage on one mixture, and a LoRA
    stage on another."""
    for name, spec in STAGES.items():
        write_stage(run_dir, name, *spec)
    return run_dir


LINEAGE = {"base": (0, 0), "continual-code": (100, 1), "cooldown-code": (150, 2)}  # start, rank


def write_lineage_stage(run_dir: Path, name: str, start: int, rank: int) -> None:
    """One stage of LINEAGE: three train steps, a validation of two domains, two scored tasks
    and the code domain's perplexity, with the per-item samples behind them (`_samples`)."""
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
    run.eval_samples(name).write_text("".join(json.dumps(r) + "\n" for r in _samples(rank)))


def _samples(rank: int) -> list[dict]:
    """Per-item records behind the scores: arc_easy's first 25 + 5 * rank items correct (each
    stage gets 5 more right: a real gain), boolq's even items right at even ranks and its odd
    ones at odd ranks (no change on average, large item-to-item swings: noise), and four code
    windows near the code bpb (the validation's four)."""
    arc = [
        {
            "task": "arc_easy",
            "subtask": "arc_easy",
            "doc_id": i,
            "acc_norm": float(i < 25 + 5 * rank),
        }
        for i in range(100)
    ]
    boolq = [
        {"task": "boolq", "subtask": "boolq", "doc_id": i, "acc": float(i % 2 == rank % 2)}
        for i in range(100)
    ]
    windows = [
        {
            "task": "perplexity/code",
            "window": f"code/{i}",
            "bits_per_byte": 3.0 - 0.5 * rank + 0.01 * (i - 1.5),
        }
        for i in range(4)
    ]
    return arc + boolq + windows  # fmt: skip


def write_lineage_run(run_dir: Path) -> Path:
    """base -> continual-code -> cooldown-code, each stage better than its parent by `rank`."""
    for name, (start, rank) in LINEAGE.items():
        write_lineage_stage(run_dir, name, start, rank)
    return run_dir
