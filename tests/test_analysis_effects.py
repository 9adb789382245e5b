"""tinylab.analysis.effects: the paired bootstrap on cases with known answers, and the readers of
per-item scores and per-window bits per byte from a run's eval folder."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tinylab.analysis.effects import (
    EffectsError,
    Interval,
    item_scores,
    measure_effect,
    paired_bootstrap,
    paired_effect,
    verdict,
    window_bpb,
)
from tinylab.layout import RunLayout


def test_a_constant_shift_gives_the_shift_with_no_width_around_it() -> None:
    before = np.random.default_rng(1).random(50)
    interval = paired_bootstrap(before, before + 0.1)
    assert interval.estimate == pytest.approx(0.1)
    assert (interval.low, interval.high) == pytest.approx((0.1, 0.1), abs=1e-12)
    assert interval.excludes_zero and interval.n == 50


def test_a_shift_with_small_noise_gives_a_tight_interval_around_it() -> None:
    rng = np.random.default_rng(2)
    before = rng.random(200)
    interval = paired_bootstrap(before, before - 0.2 + rng.normal(0, 1e-3, 200))
    assert interval.low < interval.estimate < interval.high
    assert interval.low > -0.2 - 5e-4 and interval.high < -0.2 + 5e-4
    assert interval.excludes_zero


def test_identical_measures_give_zero_inside_the_interval() -> None:
    scores = [1.0, 0.0, 1.0, 1.0, 0.0]
    interval = paired_bootstrap(scores, scores)
    assert interval == Interval(0.0, 0.0, 0.0, 5)
    assert not interval.excludes_zero


def test_two_items_resample_to_an_exact_distribution() -> None:
    """Differences (0, 1): resampled means are 0, 1/2, 1 with chances 1/4, 1/2, 1/4, so the
    2.5% and 97.5% points are 0 and 1: the difference is within noise."""
    interval = paired_bootstrap([0.0, 0.0], [0.0, 1.0], resamples=20_000)
    assert (interval.estimate, interval.low, interval.high) == (0.5, 0.0, 1.0)
    assert not interval.excludes_zero


def test_zero_on_a_bound_is_within_noise() -> None:
    """One item of 20 gained, none lost: a third of the resamples miss it, so the lower bound is
    exactly 0, and 0 in the (closed) interval is within noise."""
    interval = paired_bootstrap(np.zeros(20), np.eye(20)[0])
    assert interval.low == 0.0 and interval.high > 0
    assert not interval.excludes_zero


def test_an_interval_moves_to_another_estimate_of_the_same_difference() -> None:
    interval = Interval(0.10, 0.05, 0.20, 30)
    moved = interval.centred_on(0.12)
    assert (moved.estimate, moved.n) == (0.12, 30)
    assert (moved.low, moved.high) == pytest.approx((0.07, 0.22))
    assert interval.centred_on(0.10 + 1e-15) is interval  # the same number: bounds untouched


def test_many_items_match_the_normal_approximation() -> None:
    """n coin-flip differences (half 1, half 0): the resampled mean is close to normal with the
    standard deviation sqrt(p(1 - p) / n), so the 95% bounds are 1.96 of it either side."""
    n = 400
    after = np.tile([1.0, 0.0], n // 2)
    interval = paired_bootstrap(np.zeros(n), after)
    half_width = 1.96 * math.sqrt(0.5 * 0.5 / n)  # 0.049
    assert interval.estimate == 0.5
    assert interval.low == pytest.approx(0.5 - half_width, abs=0.004)
    assert interval.high == pytest.approx(0.5 + half_width, abs=0.004)


def test_counting_values_and_drawing_indices_give_the_same_interval(monkeypatch) -> None:
    """Few distinct differences resample as multinomial counts, the rest as drawn indices: the
    same distribution, so the same bounds up to Monte Carlo error."""
    from tinylab.analysis import effects

    rng = np.random.default_rng(6)
    before, after = (rng.random(500) < 0.4) * 1.0, (rng.random(500) < 0.5) * 1.0
    counted = paired_bootstrap(before, after, resamples=20_000)
    monkeypatch.setattr(effects, "_MULTINOMIAL_VALUES", 0)
    drawn = paired_bootstrap(before, after, resamples=20_000)
    assert drawn.estimate == counted.estimate
    assert drawn.low == pytest.approx(counted.low, abs=0.004)
    assert drawn.high == pytest.approx(counted.high, abs=0.004)


def test_pairing_cancels_what_both_share() -> None:
    """Items that vary a lot but move together: the paired interval is the shift's, far
    narrower than the spread of the items themselves."""
    rng = np.random.default_rng(3)
    difficulty = rng.normal(0, 5, 300)
    interval = paired_bootstrap(difficulty, difficulty + 0.3 + rng.normal(0, 0.1, 300))
    assert interval.high - interval.low < 0.05
    assert interval.low < 0.3 < interval.high


def test_the_same_seed_gives_the_same_interval() -> None:
    rng = np.random.default_rng(4)
    before, after = rng.random(64), rng.random(64)
    first = paired_bootstrap(before, after, seed=7)
    assert paired_bootstrap(before, after, seed=7) == first
    other = paired_bootstrap(before, after, seed=8)
    assert other.estimate == first.estimate and (other.low, other.high) != (first.low, first.high)


def test_chunked_draws_bound_memory_and_keep_the_answer(monkeypatch) -> None:
    """Resamples are drawn in chunks; the chunk size changes neither the draws nor the answer."""
    from tinylab.analysis import effects

    rng = np.random.default_rng(5)
    before, after = rng.random(100), rng.random(100)
    whole = paired_bootstrap(before, after, resamples=1000)
    monkeypatch.setattr(effects, "_CHUNK_DRAWS", 700)  # 7 resamples per chunk
    assert paired_bootstrap(before, after, resamples=1000) == whole


@pytest.mark.parametrize(
    ("before", "after", "message"),
    [
        ([1.0, 2.0], [1.0], "before has 2 items, after 1"),
        ([], [], "no items"),
        ([1.0, math.nan], [1.0, 2.0], "before holds NaN"),
        ([[1.0], [2.0]], [[1.0], [2.0]], "1-d"),
    ],
)
def test_inputs_that_cannot_be_paired_are_refused(before, after, message) -> None:
    with pytest.raises(EffectsError, match=message):
        paired_bootstrap(before, after)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(EffectsError, match="resamples 0"):
        paired_bootstrap([1.0], [2.0], resamples=0)
    with pytest.raises(EffectsError, match="level 1.5"):
        paired_bootstrap([1.0], [2.0], level=1.5)


def test_paired_effect_aligns_by_id_and_refuses_different_items() -> None:
    before = pd.Series([0.0, 1.0, 0.0], index=["a", "b", "c"], name="base:t")
    after = pd.Series([1.0, 1.0, 1.0], index=["c", "b", "a"], name="next:t")
    assert paired_effect(before, after).estimate == pytest.approx(2 / 3)
    shifted = pd.Series([1.0, 1.0, 1.0], index=["c", "b", "d"], name="next:t")
    with pytest.raises(EffectsError, match=r"base:t vs next:t: the items differ \(1 only before"):
        paired_effect(before, shifted)


# --------------------------------------------------------------------------------------------
# Readers


def write_eval(run: RunLayout, stage: str, rows: list[dict], samples: list[dict]) -> None:
    """An eval JSON and its samples, as tinylab.evaluate.results writes them."""
    run.eval.mkdir(parents=True, exist_ok=True)
    run.eval_json(stage).write_text(json.dumps({"checkpoint": stage, "results": rows}))
    run.eval_samples(stage).write_text("".join(json.dumps(s) + "\n" for s in samples))


def test_item_scores_read_each_protocols_headline_per_item(tmp_path: Path) -> None:
    run = RunLayout(tmp_path)
    rows = [
        {"task": "arc_easy", "metric": "acc_norm", "value": 0.5},
        {"task": "mmlu", "metric": "acc", "value": 0.5},
        {"task": "humaneval", "metric": "pass@1", "value": 0.25},
    ]
    samples = [
        {"task": "arc_easy", "subtask": "arc_easy", "doc_id": 0, "acc": 0.0, "acc_norm": 1.0},
        {"task": "arc_easy", "subtask": "arc_easy", "doc_id": 1, "acc": 1.0, "acc_norm": 0.0},
        {"task": "mmlu", "subtask": "mmlu_law", "doc_id": 0, "correct": True},
        {"task": "mmlu", "subtask": "mmlu_art", "doc_id": 0, "correct": False},
        {"task": "humaneval", "doc_id": 0, "status": ["passed", "failed", "failed", "failed"]},
        {"task": "humaneval", "doc_id": 1, "status": ["failed"] * 4},
    ]
    write_eval(run, "base", rows, samples)
    arc = item_scores(run, "base", "arc_easy")
    assert arc.to_dict() == {"arc_easy/0": 1.0, "arc_easy/1": 0.0}  # acc_norm, the headline
    assert item_scores(tmp_path, "base", "mmlu").to_dict() == {"mmlu_law/0": 1.0, "mmlu_art/0": 0.0}
    assert item_scores(run, "base", "humaneval").to_dict() == {
        "humaneval/0": 0.25,
        "humaneval/1": 0,
    }


def test_item_scores_refuse_what_they_cannot_read(tmp_path: Path) -> None:
    run = RunLayout(tmp_path)
    with pytest.raises(EffectsError, match="no evaluation of stage 'base'"):
        item_scores(run, "base", "arc_easy")
    rows = [{"task": "arc_easy", "metric": "acc_norm"}, {"task": "cola", "metric": "mcc"}]
    samples = [{"task": "cola", "subtask": "cola", "doc_id": 0, "mcc": [1, 1]}]
    write_eval(run, "base", rows, samples)
    with pytest.raises(EffectsError, match="no per-item samples of task 'arc_easy'"):
        item_scores(run, "base", "arc_easy")
    with pytest.raises(EffectsError, match="tasks: \\['arc_easy', 'cola'\\]"):
        item_scores(run, "base", "boolq")
    with pytest.raises(EffectsError, match="has no per-item 'acc'"):
        write_eval(run, "other", [{"task": "cola", "metric": "acc"}], samples)
        item_scores(run, "other", "cola")


def test_window_bpb_reads_the_perplexity_windows(tmp_path: Path) -> None:
    run = RunLayout(tmp_path)
    windows = [
        {"task": "perplexity/code", "window": f"code/{i}", "bits_per_byte": bpb}
        for i, bpb in enumerate([2.0, 3.0])
    ]
    write_eval(run, "base", [{"task": "perplexity/code", "metric": "bits_per_byte"}], windows)
    assert window_bpb(run, "base", "code").to_dict() == {"code/0": 2.0, "code/1": 3.0}
    with pytest.raises(EffectsError, match="no per-window bits per byte of domain 'math'"):
        window_bpb(run, "base", "math")


def test_measure_effect_compares_stages_and_runs(tmp_path: Path) -> None:
    """One function for a stage's contribution (one run, parent -> child) and a run-to-run
    difference (two runs, one stage): a task by its items, `<domain> bpb` by its windows."""
    first, second = RunLayout(tmp_path / "a"), RunLayout(tmp_path / "b")
    rows = [{"task": "boolq", "metric": "acc"}, {"task": "perplexity/code"}]
    for run, stage, right, bpb in ((first, "base", 10, 3.0), (first, "next", 20, 2.5),
                                   (second, "next", 30, 2.0)):  # fmt: skip
        samples = [{"task": "boolq", "subtask": "boolq", "doc_id": i, "acc": float(i < right)}
                   for i in range(40)]  # fmt: skip
        samples += [{"task": "perplexity/code", "window": f"code/{i}", "bits_per_byte": bpb + i}
                    for i in range(3)]  # fmt: skip
        write_eval(run, stage, rows, samples)
    stage = measure_effect("boolq", (first.root, "base"), (first.root, "next"))
    assert stage.estimate == pytest.approx(0.25) and stage.excludes_zero
    runs = measure_effect("code bpb", (first, "next"), (second, "next"))
    assert (runs.estimate, runs.low, runs.high) == pytest.approx((-0.5, -0.5, -0.5))
    assert verdict(not runs.excludes_zero) == "beyond noise"
    assert verdict(True) == "within noise" and verdict(None) == "no per-item data"
