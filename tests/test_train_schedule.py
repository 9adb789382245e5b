"""tinylab.train.schedule: lr_at against hand-computed values, and the cooldown continuity."""

from __future__ import annotations

import math

import pytest

from tinylab.config.stage import OptimConfig, ScheduleConfig
from tinylab.train import lr_at

OPTIM = OptimConfig(lr=4e-4, min_lr=4e-5)
SCHEDULE = ScheduleConfig(warmup_tokens=1000, decay_tokens=11000)


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        (0, 0.0),
        (250, 1e-4),  # a quarter of the warmup
        (1000, 4e-4),  # warmup ends at the peak
        (6000, 2.2e-4),  # cosine midpoint: (4e-4 + 4e-5) / 2
        (3500, 4e-5 + 0.5 * (1 + math.cos(math.pi / 4)) * 3.6e-4),
        (11000, 4e-5),  # the end of the decay
        (50000, 4e-5),  # flat after it
    ],
)
def test_lr_at_hand_values(tokens: int, expected: float) -> None:
    assert lr_at(tokens, OPTIM, SCHEDULE) == pytest.approx(expected, rel=1e-12, abs=1e-18)


def test_lr_is_monotone_up_then_down() -> None:
    values = [lr_at(t, OPTIM, SCHEDULE) for t in range(0, 12000, 100)]
    peak = values.index(max(values))
    assert values[: peak + 1] == sorted(values[: peak + 1])
    assert values[peak:] == sorted(values[peak:], reverse=True)


def test_schedule_is_a_function_of_tokens_so_a_4x_batch_continues_the_cosine() -> None:
    # a cooldown step of 4x the batch lands where four normal steps would have
    small = [lr_at(8000 + 100 * k, OPTIM, SCHEDULE) for k in range(1, 9)]
    large = [lr_at(8000 + 400 * k, OPTIM, SCHEDULE) for k in range(1, 3)]
    assert large == [small[3], small[7]]


def test_no_warmup_starts_at_the_peak() -> None:
    schedule = ScheduleConfig(warmup_tokens=0, decay_tokens=100)
    assert lr_at(0, OPTIM, schedule) == pytest.approx(4e-4)


def test_negative_tokens_are_rejected() -> None:
    with pytest.raises(ValueError, match="tokens = -1"):
        lr_at(-1, OPTIM, SCHEDULE)
