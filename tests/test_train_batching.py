"""tinylab.train.batching: every window of a step is read once, whatever the world size and
micro-batch; indivisible batches fail before any compute."""

from __future__ import annotations

import numpy as np
import pytest
from _train_fixtures import stage_config

from tinylab.config.loader import ConfigError
from tinylab.train import BatchPlan, RandomWindows


@pytest.mark.parametrize(("world", "micro"), [(1, 1), (1, 8), (2, 4), (4, 2), (8, 4)])
def test_step_windows_are_partitioned_among_ranks_and_micro_batches(world, micro) -> None:
    stage = stage_config(micro_batch_size=micro)
    seen = []
    for rank in range(world):
        plan = BatchPlan.from_stage(stage, world_size=world, rank=rank)
        assert plan.accum_steps * micro * world == 32
        for m in range(plan.accum_steps):
            seen += list(plan.micro_windows(first_window=64, micro=m))
    assert sorted(seen) == list(range(64, 96))  # step 2 reads windows [2G, 3G), G = 32


def test_accumulation_is_derived_from_the_global_batch() -> None:
    plan = BatchPlan.from_stage(stage_config(), world_size=2)
    assert (plan.windows_per_step, plan.accum_steps, plan.step_tokens) == (32, 4, 1024)


def test_indivisible_batch_for_the_world_size_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"world_size = 4 x 32 x 3 = 384"):
        BatchPlan.from_stage(stage_config(), world_size=3)


def test_random_windows_are_a_function_of_the_window_index() -> None:
    source = RandomWindows(vocab_size=50, seq_len=8, seed=1)
    both = source.train(range(3, 7))
    assert both.shape == (4, 9) and both.max() < 50
    np.testing.assert_array_equal(both[2:], source.train(range(5, 7)))
