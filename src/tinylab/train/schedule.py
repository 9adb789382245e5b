"""The learning rate as a pure function of tokens seen since the first stage.

Linear warmup from 0 to `optim.lr` over `schedule.warmup_tokens`, then one cosine down to
`optim.min_lr` at `schedule.decay_tokens`, flat after that (docs/PAPER.md, "Training
hyperparameters"). Trade-off: the schedule is measured in tokens, not steps, so the cooldown can
raise its global batch 4x and still continue the same cosine (docs/PAPER.md, "The v1.1
three-stage pipeline"); the trainer evaluates it at the token count where a step *ends*, so the
first step already has a non-zero LR.

    python -c "from tinylab.train import lr_at; ..."   # see tests/test_train_schedule.py
"""

from __future__ import annotations

import math

from tinylab.config.stage import OptimConfig, ScheduleConfig


def lr_at(tokens: int, optim: OptimConfig, schedule: ScheduleConfig) -> float:
    """Learning rate after `tokens` tokens (counted from the start of the first stage)."""
    if tokens < 0:
        raise ValueError(f"tokens = {tokens}: must be >= 0")
    if tokens < schedule.warmup_tokens:
        return optim.lr * tokens / schedule.warmup_tokens
    span = schedule.decay_tokens - schedule.warmup_tokens
    progress = min(1.0, (tokens - schedule.warmup_tokens) / span)
    return optim.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (optim.lr - optim.min_lr)
