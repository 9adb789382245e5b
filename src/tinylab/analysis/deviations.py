"""Where a run departs from the paper: every compared setting of each stage against the paper
pipeline's stage of the same name (params/stages/tinyllama-v1.1/), as display strings.

    deviation_table(load_run("outputs/runs/demo"))   # stage, setting, paper, this run
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from tinylab.analysis.runs import Run
from tinylab.config.loader import PARAMS_DIR, load_config
from tinylab.config.stage import StageConfig

PAPER_STAGES_DIR = PARAMS_DIR / "stages" / "tinyllama-v1.1"


def compared_settings(stage: StageConfig) -> dict[str, str]:
    """What a reader compares with the paper, per stage, as display strings."""
    tokenizer = stage.data.tokenizer
    sources = {
        name: getattr(src, "path", None) or getattr(src, "corpus", None) or "local files"
        for name, src in sorted(stage.data.sources.items())
    }
    settings = {
        "model width x layers": f"{stage.model.hidden_size} x {stage.model.num_hidden_layers}",
        "vocabulary": stage.model.vocab_size,
        "tokenizer": f"{tokenizer.kind} {tokenizer.name_or_path or ''}".strip(),
        "sources": ", ".join(f"{name}={where}" for name, where in sources.items()),
        "sequence length": stage.data.seq_len,
        "tokens in stage": f"{stage.max_tokens:.3g}",
        "global batch (tokens)": stage.global_batch_tokens,
        "mixture": _weights(stage.mixture),
        "ramp (tokens)": None if stage.ramp is None else f"{stage.ramp.tokens:.3g}",
        "peak / min LR": f"{stage.optim.lr:g} / {stage.optim.min_lr:g}",
        "warmup / decay tokens": f"{stage.schedule.warmup_tokens:.3g} / "
        f"{stage.schedule.decay_tokens:.3g}",
        "AdamW betas, eps, wd": f"{stage.optim.betas}, {stage.optim.eps:g}, "
        f"{stage.optim.weight_decay:g}",
        "grad clip": stage.optim.grad_clip,
        "precision": stage.parallel.precision,
        "init from": None
        if stage.init_from is None
        else f"{stage.init_from.stage} ({', '.join(stage.init_from.carry)})",
        "adapter": _adapter(stage),
    }
    return {key: str(value) for key, value in settings.items()}


def _adapter(stage: StageConfig) -> str:
    adapter = stage.adapter
    if adapter is None:
        return "none (all weights train)"
    return (
        f"{adapter.type} r={adapter.rank} alpha={adapter.alpha:g} dropout={adapter.dropout:g} "
        f"on {', '.join(adapter.target_modules)}"
    )


def _weights(weights: dict[str, float]) -> str:
    total = sum(weights.values())
    return ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in weights.items() if v > 0)


def paper_stage_configs(folder: Path = PAPER_STAGES_DIR) -> dict[str, StageConfig]:
    """The paper pipeline's stages, by stage name."""
    configs = {}
    for path in sorted(folder.glob("*.yaml")):
        config = load_config(path, StageConfig)
        configs[config.name] = config
    return configs


def deviations(ours: dict[str, StageConfig], paper: dict[str, StageConfig]) -> list[dict[str, Any]]:
    """Rows (stage, setting, paper, this run) for every compared setting that differs from the
    paper stage of the same name; a stage the paper lacks is one row of its own."""
    rows = []
    for name, stage in ours.items():
        reference = paper.get(name)
        if reference is None:
            rows.append({"stage": name, "setting": "stage", "paper": "(none)", "this run": name})
            continue
        paper_settings = compared_settings(reference)
        for label, value in compared_settings(stage).items():
            if value != paper_settings[label]:
                row = {"stage": name, "setting": label, "paper": paper_settings[label]}
                rows.append({**row, "this run": value})
    return rows


def deviation_table(run: Run) -> pd.DataFrame:
    """deviations() of the run's stages from the paper pipeline's, as a table."""
    rows = deviations(run.stages, paper_stage_configs())
    return pd.DataFrame(rows, columns=["stage", "setting", "paper", "this run"])
