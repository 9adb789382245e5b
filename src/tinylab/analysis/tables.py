"""The report's tables of a run: provenance, pipeline steps, data, benchmark scores per stage,
stage contributions with their intervals.

Each takes the `Run` that `load_run` returns and gives a DataFrame for display; figures are in
tinylab.analysis.figures, deviations from the paper in tinylab.analysis.deviations.

    tables.benchmark_scores(load_run("outputs/runs/demo"))
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tinylab.analysis.effects import verdict
from tinylab.analysis.publish import REPORT_NOTEBOOK
from tinylab.analysis.runs import Run, stage_deltas


def benchmark_scores(run: Run) -> pd.DataFrame:
    """Scores per task (rows) and evaluated stage (columns), labelled with the metric, the
    protocol that scored it (lm_eval, instructeval, ...), the weights' dtype and chance; results
    written before protocol and dtype were recorded say "not recorded"."""
    evals = run.evals
    if evals.empty:
        return pd.DataFrame()
    labels = ["task", "metric", "protocol", "dtype"]
    frame = evals.assign(**{key: evals[key].fillna("not recorded") for key in labels[2:]})
    table = frame.pivot_table(index=labels, columns="stage", values="value", sort=False)
    table.insert(0, "chance", frame.groupby(labels, sort=False)["chance"].first())
    return table.reset_index()


def contributions_table(run: Run) -> pd.DataFrame:
    """What each stage changed (`runs.stage_deltas`), one row per variant, stage and measure:
    the change, its 95% interval and a verdict: "within noise" when the interval holds 0,
    "beyond noise" when it does not, "no per-item data" when the run has none to resample."""
    deltas = stage_deltas(run)
    return pd.DataFrame(
        {
            "variant": deltas["variant"],
            "stage": deltas["stage"],
            "measure": deltas["measure"],
            "change": deltas["delta"],
            "95% low": deltas["low"],
            "95% high": deltas["high"],
            "items": deltas["items"],
            "verdict": deltas["within_noise"].map(verdict),
            "better": deltas["better"],
        }
    )


def data_table(run: Run) -> pd.DataFrame:
    """Documents, tokens, windows and bytes per source and split (from data/index.json)."""
    rows = [
        {
            "source": name,
            "domain": entry["domain"],
            "split": split,
            **{key: counts.get(key) for key in ("documents", "tokens", "windows", "bytes")},
        }
        for name, entry in run.data_index.get("sources", {}).items()
        for split, counts in entry.get("splits", {}).items()
    ]
    return pd.DataFrame(rows)


def provenance_table(run: Run) -> pd.DataFrame:
    """Code, packages and machine that produced the run (from manifest.json)."""
    manifest = run.manifest
    git = manifest.get("git", {})
    rows = {
        "run": manifest.get("run_id", run.run_dir.name),
        "pipeline": manifest.get("pipeline"),
        "git commit": f"{git.get('sha')}{' (uncommitted changes)' if git.get('dirty') else ''}",
        **{f"hardware: {k}": v for k, v in manifest.get("hardware", {}).items()},
        **{k: v for k, v in manifest.get("packages", {}).items() if v},
    }
    return pd.DataFrame({"value": [str(v) for v in rows.values()]}, index=list(rows))


def steps_table(run: Run) -> pd.DataFrame:
    """Each pipeline step's status (with why, when its results were kept although its code
    changed: `tinylab run --keep-stale`) and wall time. The report reads the manifest while its
    own step runs: a running step of the report notebook is "this report", not "running"."""
    steps = run.manifest.get("steps", {})
    reports = {
        step["name"]
        for step in run.manifest.get("pipeline_resolved", {}).get("steps", [])
        if Path(step.get("notebook", "")).stem == REPORT_NOTEBOOK.stem
    }
    return pd.DataFrame(
        [
            {"step": n, "status": _status(r, this_report=n in reports), "seconds": r.get("seconds")}
            for n, r in steps.items()
        ]
    )


def _status(record: dict, *, this_report: bool) -> str | None:
    if this_report and record.get("status") == "running":
        return "this report"
    stale = record.get("stale")
    return f"{record.get('status')} (stale: {stale})" if stale else record.get("status")
