"""Effects with uncertainty: a paired bootstrap over evaluation items or held-out windows.

A stage's contribution (or a run-to-run difference) is a difference of two means over the same
items: the benchmark's questions, scored by both models, or the held-out windows that bits per
byte averages. Resampling the items with replacement, B times, and taking the mean difference
of each resample gives the percentile interval of that difference: 95% of the resampled means
lie inside it. Pairing matters: the two models see the same items, so the item-to-item spread
they share (an easy question is easy for both) cancels, and the interval is much narrower than
one built from the two scores' separate standard errors. A difference whose interval holds 0 is
"within noise": these items cannot tell it from no change. The trade-off: the interval speaks
for these items only (another sample of questions would move both models), and a percentile
interval is only approximate for very few items (n < ~10).

Per-item scores come from `RUN/eval/<stage>.samples.jsonl` (written by
tinylab.evaluate.results): the task's headline metric per example (lm-eval's acc / acc_norm /
exact_match / f1, InstructEval's `correct`, HumanEval's pass@k per problem). Per-window bits per
byte comes from the perplexity rows' samples (`perplexity/<domain>`, one line per held-out
window, written by tinylab.evaluate.perplexity).

    base, code = item_scores(run, "base", "arc_easy"), item_scores(run, "continual-code", ...)
    paired_effect(base, code)        # Interval(estimate=0.05, low=-0.02, high=0.12, n=100, ...)
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tinylab.errors import UserError
from tinylab.layout import RunLayout

RESAMPLES = 10_000  # a bound moves ~0.75% of the width from seed to seed (256 windows)
LEVEL = 0.95
_CHUNK_DRAWS = 1 << 22  # resampled indices drawn at once (32 MiB of int64): bounds memory
_TOLERANCE = 1e-12  # a bound this close to 0 is 0 (rounding of a mean of 0/1 scores)
_MULTINOMIAL_VALUES = 16  # up to this many distinct differences, resample counts of each
BPB_SUFFIX = " bpb"  # the report's name of a domain's held-out bits per byte: "code bpb"
_ITEM_KEYS = ("acc", "acc_norm", "exact_match", "em", "f1", "correct")  # means over items


class EffectsError(UserError):
    """Per-item data missing, or two measures that cannot be paired."""


@dataclass(frozen=True)
class Interval:
    """A difference (after - before) of two means over n paired items, and its interval at
    `level` (a percentile bootstrap)."""

    estimate: float
    low: float
    high: float
    n: int
    level: float = LEVEL

    @property
    def excludes_zero(self) -> bool:
        """Whether the difference is distinguishable from zero (0 lies outside the interval);
        False means "within noise", also when 0 is a bound (few items: a discrete distribution
        often puts a bound exactly at 0)."""
        return bool(self.low > _TOLERANCE or self.high < -_TOLERANCE)

    def centred_on(self, estimate: float) -> Interval:
        """The same interval moved to another estimate of the same difference (the headline
        delta of a report, when it is computed apart from these items: a mean of subtask means,
        a validation pass in another dtype): its bounds keep their distances from the estimate."""
        if np.isclose(estimate, self.estimate, rtol=1e-9, atol=_TOLERANCE):
            return self  # the same number by another route: keep the bounds bit for bit
        shift = estimate - self.estimate
        return Interval(estimate, self.low + shift, self.high + shift, self.n, self.level)

    def __str__(self) -> str:
        return f"{self.estimate:+.3g} [{self.low:+.3g}, {self.high:+.3g}]"


def verdict(within_noise: bool | None) -> str:
    """The report's words for an interval: "within noise" when it holds 0, "beyond noise" when
    it does not, "no per-item data" when there was nothing to resample (None)."""
    if within_noise is None:
        return "no per-item data"
    return "within noise" if within_noise else "beyond noise"


def paired_bootstrap(
    before: np.ndarray | pd.Series | list[float],
    after: np.ndarray | pd.Series | list[float],
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> Interval:
    """The interval of mean(after - before) over aligned per-item values (same length, item i
    of both is the same item): the `level` percentile interval of the mean difference over
    `resamples` resamples of the items, drawn with numpy's generator seeded with `seed`."""
    before_values, after_values = _values(before, "before"), _values(after, "after")
    if before_values.shape != after_values.shape:
        raise EffectsError(
            f"paired bootstrap: before has {before_values.size} items, after "
            f"{after_values.size}; both must hold the same items in the same order"
        )
    if before_values.size == 0:
        raise EffectsError("paired bootstrap: no items to resample")
    if resamples < 1 or not 0 < level < 1:
        raise EffectsError(f"paired bootstrap: resamples {resamples} must be >= 1 and level "
                           f"{level} in (0, 1)")  # fmt: skip
    diff = after_values - before_values
    means = _resampled_means(diff, resamples, np.random.default_rng(seed))
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(diff.mean()), float(low), float(high), int(diff.size), level)


def _values(values: np.ndarray | pd.Series | list[float], name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise EffectsError(f"paired bootstrap: {name} must be one value per item (1-d), got "
                           f"shape {array.shape}")  # fmt: skip
    if not np.isfinite(array).all():
        raise EffectsError(f"paired bootstrap: {name} holds NaN or infinite values")
    return array


def _resampled_means(diff: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """The mean of `resamples` resamples (with replacement) of `diff`. Few distinct values (a
    correctness score's differences are -1, 0 or 1) resample as multinomial counts of each value,
    O(resamples x values); others as indices drawn in chunks, O(resamples x n) in bounded memory."""
    n = diff.size
    values, counts = np.unique(diff, return_counts=True)
    if values.size <= _MULTINOMIAL_VALUES:
        return rng.multinomial(n, counts / n, size=resamples) @ values / n
    rows = max(1, _CHUNK_DRAWS // n)
    means = np.empty(resamples)
    for start in range(0, resamples, rows):
        stop = min(resamples, start + rows)
        means[start:stop] = diff[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    return means


def paired_effect(
    before: pd.Series, after: pd.Series, *, resamples: int = RESAMPLES, seed: int = 0
) -> Interval:
    """The bootstrap interval of after - before for two per-item Series indexed by item id
    (what `item_scores` and `window_bpb` return); both must hold the same ids."""
    missing, extra = before.index.difference(after.index), after.index.difference(before.index)
    if len(missing) or len(extra):
        raise EffectsError(
            f"{before.name} vs {after.name}: the items differ ({len(missing)} only before, e.g. "
            f"{list(missing[:3])}; {len(extra)} only after, e.g. {list(extra[:3])}); a paired "
            "interval needs both evaluated on the same items (same tasks, limit and data)"
        )
    return paired_bootstrap(
        before.to_numpy(), after.reindex(before.index).to_numpy(), resamples=resamples, seed=seed
    )


# --------------------------------------------------------------------------------------------
# Readers: per-item values of a run's evaluated stage, indexed by a stable item id


def item_scores(run: RunLayout | Path | str, stage: str, task: str) -> pd.Series:
    """The per-item scores of `task` in `RUN/eval/<stage>.samples.jsonl` under the task's
    headline metric (its row in `<stage>.json`), indexed by item id `<subtask>/<doc_id>`."""
    run = run if isinstance(run, RunLayout) else RunLayout(run)
    row = _task_row(run, stage, task)
    records = _samples(run, stage).get(task)
    if not records:
        raise EffectsError(f"{run.eval_samples(stage)}: no per-item samples of task {task!r}")
    metric = row.get("metric")
    ids = [f"{r.get('subtask', task)}/{r.get('doc_id')}" for r in records]
    values = [_item_value(r, metric, run, stage, task) for r in records]
    series = pd.Series(values, index=pd.Index(ids, name="item"), name=f"{stage}:{task}")
    if series.index.has_duplicates:
        raise EffectsError(f"{run.eval_samples(stage)}: task {task!r} repeats item ids "
                           f"{list(series.index[series.index.duplicated()][:3])}")  # fmt: skip
    return series


def window_bpb(run: RunLayout | Path | str, stage: str, domain: str) -> pd.Series:
    """Bits per byte of each held-out window of `domain` scored by `tinylab eval`'s perplexity
    for `stage`, indexed by window id `<source>/<index>` (their mean is the domain's bpb)."""
    run = run if isinstance(run, RunLayout) else RunLayout(run)
    task = f"perplexity/{domain}"
    records = _samples(run, stage).get(task)
    if not records:
        raise EffectsError(
            f"{run.eval_samples(stage)}: no per-window bits per byte of domain {domain!r} "
            "(evaluate the stage again: per-window values are stored since issue 22)"
        )
    series = pd.Series(
        [r["bits_per_byte"] for r in records],
        index=pd.Index([r["window"] for r in records], name="window"),
        name=f"{stage}:{domain} bpb",
    )
    return series


def measure_items(run: RunLayout | Path | str, stage: str, measure: str) -> pd.Series:
    """The per-item values behind one of the report's measures (tinylab.analysis.runs'
    final_scores): `<domain> bpb` is the domain's windows (`window_bpb`), any other a task's
    items (`item_scores`)."""
    if measure.endswith(BPB_SUFFIX):
        return window_bpb(run, stage, measure.removesuffix(BPB_SUFFIX))
    return item_scores(run, stage, measure)


def measure_effect(
    measure: str,
    before: tuple[RunLayout | Path | str, str],
    after: tuple[RunLayout | Path | str, str],
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> Interval:
    """The interval of a measure's change from (run, stage) `before` to (run, stage) `after`:
    a stage's contribution (one run, parent and child) or a run-to-run difference (two runs,
    one stage name)."""
    return paired_effect(
        measure_items(*before, measure), measure_items(*after, measure),
        resamples=resamples, seed=seed,
    )  # fmt: skip


def _task_row(run: RunLayout, stage: str, task: str) -> dict:
    path = run.eval_json(stage)
    if not path.is_file():
        raise EffectsError(f"{path}: no evaluation of stage {stage!r}")
    rows = {r["task"]: r for r in json.loads(path.read_text()).get("results", [])}
    if task not in rows:
        raise EffectsError(f"{path}: no task {task!r}; tasks: {sorted(rows)}")
    return rows[task]


def _item_value(record: dict, metric: str | None, run: RunLayout, stage: str, task: str) -> float:
    """One item's score under the headline metric: the metric's own key, or HumanEval's
    pass@k of the problem's samples, or InstructEval's correctness."""
    if metric in record and record[metric] is not None:
        return float(record[metric])
    if metric and metric.startswith("pass@") and "status" in record:
        from tinylab.evaluate.humaneval import pass_at_k  # torch-heavy: only for HumanEval

        status = record["status"]
        return pass_at_k(len(status), sum(s == "passed" for s in status), int(metric[5:]))
    if "correct" in record:
        return float(record["correct"])
    raise EffectsError(
        f"{run.eval_samples(stage)}: task {task!r} has no per-item {metric!r} "
        f"(item keys: {sorted(record)}); intervals need a metric that is a mean over items "
        f"({', '.join(_ITEM_KEYS)}, pass@k)"
    )


def _samples(run: RunLayout, stage: str) -> dict[str, list[dict]]:
    path = run.eval_samples(stage)
    if not path.is_file():
        raise EffectsError(f"{path}: no per-item samples (evaluate stage {stage!r} first)")
    stat = path.stat()
    return _read_samples(path.resolve(), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _read_samples(path: Path, mtime_ns: int, size: int) -> dict[str, list[dict]]:
    """A samples.jsonl grouped by task (cached while the file is unchanged: a report reads
    every task of every stage)."""
    del mtime_ns, size  # the cache key only
    by_task: dict[str, list[dict]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            by_task.setdefault(record["task"], []).append(record)
    return by_task
