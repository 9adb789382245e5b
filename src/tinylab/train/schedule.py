"""The learning rate as a pure function of tokens seen since the first stage.

Linear warmup from 0 to `optim.lr` over `schedule.warmup_tokens`, then one cosine down to
`optim.min_lr` at `schedule.decay_tokens`, flat after that (docs/PAPER.md, "Training
hyperparameters"). Trade-off: the schedule is measured in tokens, not steps, so the cooldown can
raise its global batch 4x and still continue the same cosine (docs/PAPER.md, "The v1.1
three-stage pipeline"); the trainer evaluates it at the token count where a step *ends*, so the
first step already has a non-zero LR.

A stage with `schedule.cooldown` (the counterfactual of the paper's batch-size cooldown: the
original batch, the LR cooled instead) trains with `stage_lr`: from the schedule's LR at the
stage's start down to `min_lr` at the stage's last token, linearly or along a half cosine in the
stage's own tokens, so it ends at min_lr on the same tokens whatever the batch.

    python -c "from tinylab.train import lr_at; ..."   # see tests/test_train_schedule.py
"""

from __future__ import annotations

import math

from tinylab.config.stage import OptimConfig, ScheduleConfig, StageConfig


def lr_at(tokens: int, optim: OptimConfig, schedule: ScheduleConfig) -> float:
    """Learning rate after `tokens` tokens (counted from the start of the first stage), by the
    warmup and cosine alone (a stage's cooldown: stage_lr)."""
    if tokens < 0:
        raise ValueError(f"tokens = {tokens}: must be >= 0")
    if tokens < schedule.warmup_tokens:
        return optim.lr * tokens / schedule.warmup_tokens
    span = schedule.decay_tokens - schedule.warmup_tokens
    progress = min(1.0, (tokens - schedule.warmup_tokens) / span)
    return optim.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (optim.lr - optim.min_lr)


def stage_lr(tokens: int, stage: StageConfig, *, stage_start: int) -> float:
    """Learning rate of `stage` after `tokens` tokens (since the first stage), the stage having
    started at `stage_start`: lr_at, or under `schedule.cooldown` the decay from lr_at(stage_start)
    to min_lr over the stage's max_tokens (min_lr from there on)."""
    shape = stage.schedule.cooldown
    if shape is None:
        return lr_at(tokens, stage.optim, stage.schedule)
    if not 0 <= stage_start <= tokens:
        raise ValueError(f"stage_start = {stage_start}: must be in [0, tokens = {tokens}]")
    start_lr, min_lr = lr_at(stage_start, stage.optim, stage.schedule), stage.optim.min_lr
    progress = min(1.0, (tokens - stage_start) / stage.max_tokens)
    remaining = 1.0 - progress if shape == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_lr + remaining * (start_lr - min_lr)
