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
