"""tinylab.data.mixture: determinism, ranks, resume, ramps, epochs, bad weights."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from tinylab.config.data import RampConfig
from tinylab.config.kinds import load_params
from tinylab.config.loader import PARAMS_DIR, ConfigError
from tinylab.config.stage import StageConfig
from tinylab.data import DataError, MixtureSampler
from tinylab.data.mixture import CHUNK, permute, permute_one

SIZES = {"web": 5000, "code": 700, "math": 500}


def sampler(weights=None, *, seed: int = 3407, ramp=None, sizes=SIZES, **kw) -> MixtureSampler:
    weights = weights or {"web": 0.75, "code": 0.15, "math": 0.10}
    return MixtureSampler(weights, num_windows=sizes, seq_len=64, seed=seed, ramp=ramp, **kw)


def test_same_seed_same_windows_other_seed_other_windows() -> None:
    a, b, c = sampler(), sampler(), sampler(seed=1)
    assert [a.source_at(w) for w in range(500)] == [b.source_at(w) for w in range(500)]
    assert [a.source_at(w) for w in range(500)] != [c.source_at(w) for w in range(500)]


def test_two_ranks_read_disjoint_windows_whose_union_is_one_rank() -> None:
    one = sampler()
    single = [one.source_at(w) for w in range(4000)]
    ranks = [sampler(), sampler()]  # fresh objects: nothing shared but (seed, window)
    by_rank = {r: {w: ranks[r].source_at(w) for w in range(r, 4000, 2)} for r in range(2)}
    merged = [by_rank[w % 2][w] for w in range(4000)]
    assert merged == single
    assert len(set(single)) == len(single)  # 4000 windows stay within every source's epoch
    assert not set(by_rank[0].values()) & set(by_rank[1].values())


def test_resuming_at_window_k_reproduces_the_remaining_sequence() -> None:
    k = CHUNK + 1234  # past a chunk boundary, so the resumed sampler rebuilds its counts
    full = sampler().take(0, k + 3000)
    resumed = sampler().take(k, k + 3000)
    assert np.array_equal(full[0][k:], resumed[0]) and np.array_equal(full[1][k:], resumed[1])
    s = sampler()
    assert s.source_at(k + 7) == (s.names[full[0][k + 7]], int(full[1][k + 7]))


def test_each_window_of_a_source_is_read_once_per_epoch() -> None:
    s = sampler({"code": 1.0}, sizes={"code": 700})
    sources, indices = s.take(0, 2100)
    assert set(sources.tolist()) == {0}
    for epoch in range(3):
        assert sorted(indices[epoch * 700 : (epoch + 1) * 700]) == list(range(700))
    assert not np.array_equal(indices[:700], indices[700:1400])  # a new order each epoch


def test_permutation_is_a_bijection_for_awkward_sizes() -> None:
    for n in (1, 2, 3, 17, 1000, 4097):
        out = permute(np.arange(n), n=n, key=42)
        assert sorted(out.tolist()) == list(range(n))
        assert [permute_one(p, n=n, key=42) for p in range(n)] == out.tolist()


def test_realized_mixture_is_within_sampling_error() -> None:
    s = sampler()
    n = 200_000
    for name, share in s.realized(0, n).items():
        target = {"web": 0.75, "code": 0.15, "math": 0.10}[name]
        assert abs(share - target) < 4 * math.sqrt(target * (1 - target) / n)


def test_a_ramped_mixture_realizes_its_weights_within_sampling_error() -> None:
    ramp = RampConfig(tokens=64 * 100_000, start={"web": 1.0})  # windows 0..100,000
    s = sampler(ramp=ramp, max_tokens=64 * 200_000)
    assert s.weights_at(0)[0].tolist() == [0.0, 0.0, 1.0]  # names sorted: code, math, web
    assert np.allclose(s.weights_at(64 * 50_000)[0], [0.075, 0.05, 0.875])
    for start, stop in ((0, 20_000), (40_000, 60_000), (80_000, 100_000), (100_000, 200_000)):
        expected = s.weights_at(np.arange(start, stop) * 64).mean(axis=0)
        realized = s.realized(start, stop)
        n = stop - start
        for i, name in enumerate(s.names):
            sigma = math.sqrt(expected[i] * (1 - expected[i]) / n)
            assert abs(realized[name] - expected[i]) <= 4 * sigma + 1e-12, (start, name)
    sources, _ = s.take(0, 1000)
    assert Counter(sources.tolist())[2] > 990  # the first windows are almost all web


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"web": -0.1, "code": 1.0}, r"mixture\.web = -0\.1: weights must be finite and >= 0"),
        ({"web": 0.0, "code": 0.0}, "must not all be zero"),
        ({"web": float("nan")}, "finite"),
        ({"wiki": 1.0}, "mixture names source 'wiki'"),
    ],
)
def test_bad_weights_are_named(weights: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        sampler(weights)


def test_weight_on_a_source_without_windows() -> None:
    with pytest.raises(DataError, match="'math' weight but it has no train windows"):
        sampler(sizes={**SIZES, "math": 0})
    sampler({"web": 1.0, "math": 0.0}, sizes={**SIZES, "math": 0})  # zero weight is fine


def test_ramp_longer_than_the_stage() -> None:
    ramp = RampConfig(tokens=10_000, start={"web": 1.0})
    with pytest.raises(DataError, match=r"ramp.tokens = 10000 exceeds .* max_tokens = 5000"):
        sampler(ramp=ramp, max_tokens=5000)


def test_ramp_longer_than_the_stage_in_params(params) -> None:
    from tinylab.config.loader import load_config

    stage = params / "stages" / "ramped.yaml"
    stage.write_text(
        "extends: base.yaml\nname: ramped\nmax_tokens: 1000\n"
        "ramp: {tokens: 2000, start: {prose: 1.0}}\n"
    )
    with pytest.raises(ConfigError, match=r"ramp.tokens \(2000\) exceeds max_tokens \(1000\)"):
        load_config(stage, StageConfig)


def test_negative_weight_in_params(params) -> None:

    with pytest.raises(ConfigError, match=r"mixture.prose = -1"):
        load_params(params / "stages" / "base.yaml", overrides=["mixture.prose=-1"])


def test_for_stage_uses_the_stage_mixture_and_a_per_stage_seed(params) -> None:
    from tinylab.config.loader import load_config

    stage = load_config(params / "stages" / "base.yaml", StageConfig)
    s = MixtureSampler.for_stage(stage, {"prose": 10, "code": 10})
    assert s.names == ["prose"] and s.seq_len == stage.data.seq_len
    other = stage.model_copy(update={"name": "other"})
    assert MixtureSampler.for_stage(other, {"prose": 10}).seed != s.seed


def test_an_immediate_switch_reads_the_target_mixture_from_its_first_window() -> None:
    """The ramp's counterfactual: the same stage without `ramp` (params/stages/demo/
    continual-mathcode-noramp.yaml) samples the target at once, with its original's seed, so the
    two pick the same sources wherever their weights agree: after the ramp's 128 windows."""
    demo = PARAMS_DIR / "stages" / "demo"
    ramped = load_params(demo / "continual-mathcode.yaml")
    switched = load_params(demo / "continual-mathcode-noramp.yaml")
    sizes = {"english": 5000, "code": 700, "math": 500, "chinese": 500}
    a, b = (MixtureSampler.for_stage(s, sizes) for s in (ramped, switched))
    target = [0.15, 0.75, 0.10]  # code, english, math
    assert a.names == b.names == ["code", "english", "math"] and a.seed == b.seed
    assert b.weights_at([0, 16384, 98303]).tolist() == [target] * 3
    assert a.weights_at(0).tolist() == [[0.0, 1.0, 0.0]]
    assert a.weights_at(32768) == pytest.approx(np.array([target]))  # the ramp's end
    first_step = b.realized(0, 64)
    assert first_step["code"] + first_step["math"] > 0.1 and a.realized(0, 8)["english"] == 1.0
    ramp_windows = 32768 // 256
    assert (a.take(ramp_windows, 384)[0] == b.take(ramp_windows, 384)[0]).all()
    assert (a.take(0, ramp_windows)[0] != b.take(0, ramp_windows)[0]).any()
