"""Counterfactual stage variants: what each one's change did, per domain and per task, and
whether the difference is real.

A stage that declares `counterfactual: {of, changes}` (tinylab.config.stage) is its original but
for one change: the same parent, the same tokens, the same data order. Both are evaluated on the
same items, so every measure's difference (counterfactual minus original) gets a 95% paired
bootstrap interval (tinylab.analysis.effects): over the held-out windows for a domain's bits per
byte, over the items for a task's score. A difference whose interval excludes 0 is called real
(beyond noise); one whose interval holds 0 is within noise (these items cannot tell it from no
change). The
trade-off is the one of the bootstrap: the interval speaks for these items and these two training
runs only; another seed of either run would move both, and that spread is not in it.

    effects = variant_effects(load_run("outputs/runs/demo"))
    print(variant_summary(effects)); variant_table(effects)
"""

from __future__ import annotations

import pandas as pd

from tinylab.analysis.effects import BPB_SUFFIX, RESAMPLES, measure_effect, verdict
from tinylab.analysis.runs import Run

PERPLEXITY = "perplexity/"  # the evaluation rows of held-out bits per byte, one per domain
COLUMNS = ["counterfactual", "of", "changes", "measure", "kind", "better", "original", "variant",
           "effect", "low", "high", "n", "real"]  # fmt: skip


def counterfactual_pairs(run: Run) -> list[tuple[str, str, str]]:
    """(counterfactual, original, changes) of each counterfactual stage whose original the run
    trained too, in the order of the run's stages."""
    return [
        (name, stage.counterfactual.of, stage.counterfactual.changes)
        for name, stage in run.stages.items()
        if stage.counterfactual is not None and stage.counterfactual.of in run.stages
    ]


def variant_effects(run: Run, *, resamples: int = RESAMPLES, seed: int = 0) -> pd.DataFrame:
    """One row per counterfactual and measure that both stages were evaluated on: the original's
    and the counterfactual's score, the effect (variant - original), its 95% interval and item
    count, and whether it is real (0 outside the interval). Columns: COLUMNS."""
    scores = run.evals.set_index(["stage", "task"])["value"]
    rows = []
    for name, of, changes in counterfactual_pairs(run):
        for task in _shared_tasks(run, of, name):
            domain = task.startswith(PERPLEXITY)
            measure = f"{task.removeprefix(PERPLEXITY)}{BPB_SUFFIX}" if domain else task
            interval = measure_effect(measure, (run.run_dir, of), (run.run_dir, name),
                                      resamples=resamples, seed=seed)  # fmt: skip
            rows.append({"counterfactual": name, "of": of, "changes": changes,
                         "measure": measure, "kind": "domain" if domain else "task",
                         "better": "lower" if domain else "higher",
                         "original": float(scores[(of, task)]),
                         "variant": float(scores[(name, task)]),
                         "effect": interval.estimate, "low": interval.low, "high": interval.high,
                         "n": interval.n, "real": interval.excludes_zero})  # fmt: skip
    return pd.DataFrame(rows, columns=COLUMNS)


def _shared_tasks(run: Run, of: str, name: str) -> list[str]:
    """The evaluation rows both stages have: the domains' held-out bits per byte
    (`perplexity/<domain>`) first, then the tasks."""
    evals = run.evals
    theirs = set(evals.loc[evals["stage"] == name, "task"])
    tasks = [t for t in evals.loc[evals["stage"] == of, "task"] if t in theirs]
    return sorted(tasks, key=lambda t: not t.startswith(PERPLEXITY))  # stable: order kept


def variant_summary(effects: pd.DataFrame) -> str:
    """One sentence per counterfactual, from the numbers: which differences are real (0 outside
    their 95% interval), better or worse, and that the rest are within noise."""
    if effects.empty:
        return "This run has no counterfactual stage evaluated beside its original."
    return " ".join(_sentence(pair) for _, pair in effects.groupby("counterfactual", sort=False))


def _sentence(pair: pd.DataFrame) -> str:
    first = pair.iloc[0]
    head = f"{first.counterfactual} ({first.changes}) against {first.of}:"
    real = pair[pair["real"]]
    if real.empty:
        closest = pair.loc[_signal(pair).idxmax()]
        return (f"{head} all {len(pair)} differences are within noise (0 inside each 95% "
                f"interval; the nearest to real, {_effect(closest)}).")  # fmt: skip
    listed = "; ".join(f"{_effect(r)}, {_direction(r)}" for r in real.itertuples())
    rest = len(pair) - len(real)
    tail = f"; the other {rest} {'is' if rest == 1 else 'are'} within noise" if rest else ""
    verb = "is" if len(real) == 1 else "are"
    return (f"{head} {len(real)} of {len(pair)} differences {verb} real (beyond noise: 0 "
            f"outside the 95% interval): {listed}{tail}.")  # fmt: skip


def _signal(pair: pd.DataFrame) -> pd.Series:
    """How far each effect lies from 0 in half-widths of its interval (0 width: infinite)."""
    half = (pair["high"] - pair["low"]) / 2
    return (pair["effect"].abs() / half.where(half > 0)).fillna(0.0)


def _effect(row) -> str:
    return f"{row.measure} {row.effect:+.3g} [{row.low:+.3g}, {row.high:+.3g}]"


def _direction(row) -> str:
    improved = row.effect < 0 if row.better == "lower" else row.effect > 0
    return "better" if improved else "worse"


def variant_table(effects: pd.DataFrame) -> pd.DataFrame:
    """The effects as the report shows them: per counterfactual and measure the two values, the
    difference with its 95% interval, the items, and the verdict."""
    table = pd.DataFrame({
        "counterfactual": effects["counterfactual"] + " vs " + effects["of"],
        "measure": effects["measure"] + effects["better"].map({"lower": " (lower is better)",
                                                               "higher": ""}),
        "original": effects["original"].round(4),
        "variant": effects["variant"].round(4),
        "difference [95% interval]": [_effect(r).removeprefix(f"{r.measure} ")
                                      for r in effects.itertuples()],
        "items": effects["n"],
        "verdict": [verdict(not real) for real in effects["real"]],
    })  # fmt: skip
    return table
