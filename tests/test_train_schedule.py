"""tinylab.train.schedule: lr_at against hand-computed values, the cooldown continuity, and a
stage's learning-rate cooldown (stage_lr)."""

from __future__ import annotations

import math

import pytest

from tinylab.config.kinds import load_params
from tinylab.config.loader import PARAMS_DIR
from tinylab.config.stage import OptimConfig, ScheduleConfig, StageConfig
from tinylab.train import lr_at, stage_lr

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


# -- a stage's learning-rate cooldown (schedule.cooldown), the counterfactual of a 4x batch ---


def _stage(**changes) -> StageConfig:
    return load_params(
        PARAMS_DIR / "stages" / "demo" / "cooldown-mathcode-lrdecay.yaml"
    ).model_copy(update=changes)


def test_without_a_cooldown_a_stage_follows_the_schedule() -> None:
    stage = load_params(PARAMS_DIR / "stages" / "demo" / "cooldown-mathcode.yaml")
    for tokens in (0, 49152, 360448, 400000, 491520):
        assert stage_lr(tokens, stage, stage_start=0) == lr_at(tokens, stage.optim, stage.schedule)


@pytest.mark.parametrize("shape", ["linear", "cosine"])
def test_an_lr_cooldown_starts_at_the_schedules_lr_and_ends_at_min_lr(shape: str) -> None:
    stage = _stage(schedule=ScheduleConfig(warmup_tokens=1000, decay_tokens=11000, cooldown=shape))
    stage = stage.model_copy(update={"optim": OPTIM, "max_tokens": 4000})
    start = 5000  # lr_at(5000) = 4e-5 + 0.5 * (1 + cos(0.4 pi)) * 3.6e-4
    start_lr = 4e-5 + 0.5 * (1 + math.cos(0.4 * math.pi)) * 3.6e-4
    quarter = {"linear": 0.75, "cosine": 0.5 * (1 + math.cos(math.pi / 4))}[shape]
    assert stage_lr(start, stage, stage_start=start) == pytest.approx(start_lr, rel=1e-12)
    assert stage_lr(6000, stage, stage_start=start) == pytest.approx(
        4e-5 + quarter * (start_lr - 4e-5), rel=1e-12
    )
    midpoint = 4e-5 + 0.5 * (start_lr - 4e-5)  # both shapes halve the gap halfway
    assert stage_lr(7000, stage, stage_start=start) == pytest.approx(midpoint, rel=1e-12)
    assert stage_lr(9000, stage, stage_start=start) == 4e-5  # the stage's last token: min_lr
    assert stage_lr(9400, stage, stage_start=start) == 4e-5  # a last step past max_tokens: flat
    assert stage_lr(9000, stage, stage_start=start) < lr_at(9000, OPTIM, stage.schedule)


def test_the_demos_two_cooldowns_train_the_same_tokens_and_both_end_at_min_lr() -> None:
    batch = load_params(PARAMS_DIR / "stages" / "demo" / "cooldown-mathcode.yaml")
    lr = _stage()
    assert lr.max_tokens == batch.max_tokens == 131072
    assert (batch.global_batch_tokens, lr.global_batch_tokens) == (65536, 16384)  # 4x vs 1x
    start = 262144 + 98304  # after base and continual-mathcode
    lr_steps = [stage_lr(start + 16384 * k, lr, stage_start=start) for k in range(1, 9)]
    batch_steps = [stage_lr(start + 65536 * k, batch, stage_start=start) for k in (1, 2)]
    assert batch_steps[-1] == lr_steps[-1] == lr.optim.min_lr  # both end at min_lr, same tokens
    before = [lr_at(start, lr.optim, lr.schedule), *lr_steps[:-1]]
    gaps = [a - b for a, b in zip(before, lr_steps, strict=True)]
    assert gaps == pytest.approx([gaps[0]] * 8, rel=1e-9)  # linear: equal decrements per step


def test_a_cooldown_that_starts_after_its_tokens_is_a_bug() -> None:
    with pytest.raises(ValueError, match="stage_start = 10"):
        stage_lr(5, _stage(), stage_start=10)
