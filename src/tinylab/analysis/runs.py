"""A run folder as tidy frames: the one loader every figure, table and report reads.

    run = load_run("outputs/runs/demo")
    run.metrics, run.validation, run.evals       # pandas DataFrames
    stage_deltas(run)                             # what each stage changed, per variant

Stage names follow `<phase>[-<variant>]`: `base`, `continual-mathcode`, `cooldown-mathcode`.
A variant's lineage is base -> continual-<variant> -> cooldown-<variant>; a missing metric is an
error, never a silent zero. Paths and records come from `tinylab.layout`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from tinylab.analysis.effects import BPB_SUFFIX, EffectsError, Interval, measure_effect
from tinylab.config.loader import ConfigError, load_config, project_path
from tinylab.config.stage import StageConfig
from tinylab.evaluate.results import load_results
from tinylab.layout import (
    RESOLVED_FILE,
    RESULT_FILE,
    RunLayout,
    StageLayout,
    StageResult,
    read_metrics,
)

PHASES = ("base", "continual", "cooldown")


@dataclass
class Run:
    """Everything a report shows about one run folder."""

    run_dir: Path
    manifest: dict[str, Any]
    stages: dict[str, StageConfig]
    metrics: pd.DataFrame
    validation: pd.DataFrame
    evals: pd.DataFrame
    data_index: dict[str, Any] = field(default_factory=dict)
    results: dict[str, StageResult] = field(default_factory=dict)  # finished stages


def load_run(run_dir: Path | str) -> Run:
    """Read a run folder (relative paths: from the project root): manifest, resolved stages,
    metrics, validation, evaluations, stage results."""
    run = RunLayout(project_path(run_dir))
    trained = run.trained_stages()
    if not trained:
        raise ConfigError(f"{run.root}: no trained stages (no stages/*/metrics.jsonl)")
    frames = [stage_frames(stage.root) for stage in trained]
    return Run(
        run_dir=run.root,
        manifest=_json_or_empty(run.manifest),
        stages=stage_configs(run),
        metrics=pd.concat([train for train, _ in frames], ignore_index=True),
        validation=pd.concat([val for _, val in frames], ignore_index=True),
        evals=load_evals(run.eval),
        data_index=_json_or_empty(run.data_index),
        results={p.parent.name: StageResult.read(p.parent) for p in stage_results(run)},
    )


def _json_or_empty(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def stage_frames(stage_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A stage's metrics as tidy frames: training steps (tokens, loss, lr, grad_norm,
    tokens_per_s, mfu, ...) and validation (tokens, domain, loss, bpb), both with columns stage,
    phase and variant (stage names are `<phase>[-<variant>]`)."""
    stage = StageLayout(Path(stage_dir))
    records = read_metrics(stage.metrics)
    phase, _, variant = stage.name.partition("-")
    labels = {"stage": stage.name, "phase": phase, "variant": variant or stage.name}
    train = pd.DataFrame(
        [
            {k: v for k, v in r.items() if k not in ("kind", "mixture")}
            for r in records
            if r["kind"] == "train"
        ]
    ).assign(**labels)
    validation = pd.DataFrame(
        [
            {"step": r["step"], "tokens": r["tokens"], "domain": domain, **values}
            for r in records
            if r["kind"] == "val"
            for domain, values in r["domains"].items()
        ],
        columns=["step", "tokens", "domain", "loss", "bpb", "windows"],
    ).assign(**labels)
    return train, validation


def stage_results(run: RunLayout) -> list[Path]:
    """The result.json of every finished stage (wall time, parameter counts, ...)."""
    return sorted(run.stages.glob(f"*/{RESULT_FILE}"))


def stage_configs(run: RunLayout) -> dict[str, StageConfig]:
    """The resolved config of every stage trained in a run (stages/<name>/resolved.yaml); a file
    this version cannot read (e.g. written by an older tinylab) is a ConfigError naming it."""
    return {
        path.parent.name: load_config(path, StageConfig)
        for path in sorted(run.stages.glob(f"*/{RESOLVED_FILE}"))
    }


def load_evals(eval_dir: Path) -> pd.DataFrame:
    """Every <stage>.json under eval/ as rows: stage, task, metric, value, stderr, n, chance,
    protocol, dtype."""
    columns = ["stage", "task", "metric", "value", "stderr", "n", "chance", "protocol", "dtype"]
    rows = []
    for path in sorted(eval_dir.glob("*.json")):
        document = load_results(path)
        for result in document["results"]:
            rows.append({"stage": path.stem, **{k: result.get(k) for k in columns[1:]}})
    return pd.DataFrame(rows, columns=columns)


def lineage(stages: list[str], variant: str) -> list[str]:
    """The stages a variant passes through, in order, among those present; a run that starts
    from a released model scored as `release` (not the paper's base) starts there."""
    wanted = ["release", "base", f"continual-{variant}", f"cooldown-{variant}"]
    return [name for name in wanted if name in stages]


def variants(stages: list[str]) -> list[str]:
    """Variant names present in a run (from continual-* and cooldown-* stages)."""
    found = [name.partition("-")[2] for name in stages if name.partition("-")[0] in PHASES[1:]]
    return list(dict.fromkeys(v for v in found if v))


def final_validation(run: Run) -> pd.DataFrame:
    """Each stage's last validation of each domain (rows of `run.validation`)."""
    return run.validation.sort_values("tokens").groupby(["stage", "domain"]).tail(1)


def final_scores(run: Run) -> pd.DataFrame:
    """One value per (stage, measure): each task's headline score (higher is better) and each
    domain's last validation bits per byte (lower is better)."""
    rows = [  # held-out bits per byte comes from training's validation below, not twice
        {"stage": r.stage, "measure": r.task, "value": r.value, "stderr": r.stderr,
         "better": "higher"}
        for r in run.evals.itertuples()
        if r.metric != "bits_per_byte"
    ]  # fmt: skip
    rows += [
        {"stage": r.stage, "measure": f"{r.domain}{BPB_SUFFIX}", "value": r.bpb, "stderr": None,
         "better": "lower"}
        for r in final_validation(run).itertuples()
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=["stage", "measure", "value", "stderr", "better"])


DELTA_COLUMNS = ["variant", "stage", "measure", "delta", "stderr", "low", "high", "items",
                 "within_noise", "better"]  # fmt: skip


def stage_deltas(run: Run) -> pd.DataFrame:
    """What each stage changed, per variant: value after the stage minus value after its parent,
    for every measure both have, with the stderr of that difference (the two scores' stderrs in
    quadrature; NaN where a score has none) and its 95% interval (`delta_interval`). Columns
    variant, stage (phase), measure, delta, stderr, low, high, items, within_noise, better. The
    parent is the stage's real one (`parent_stage`). A parent only evaluated, not trained here
    (a released base), counts too: its held-out bits per byte is its child's validation at the
    child's start (the same weights)."""
    scores = final_scores(run).set_index(["stage", "measure"])
    trained = {*run.metrics["stage"]}
    first = run.validation.sort_values("tokens").groupby(["stage", "domain"]).head(1)
    starts = {(r.stage, f"{r.domain}{BPB_SUFFIX}"): r.bpb for r in first.itertuples()}
    stages = sorted(trained | {*run.evals["stage"]})
    rows = []
    for variant in variants(stages):
        chain = lineage(stages, variant)
        for previous, child in zip(chain, chain[1:], strict=False):
            parent = parent_stage(run, child, previous)
            for measure in scores.loc[child].index:
                if (parent, measure) in scores.index:
                    before = scores.loc[(parent, measure), ["value", "stderr"]].tolist()
                elif parent not in trained and (child, measure) in starts:
                    before = [starts[(child, measure)], math.nan]
                else:
                    continue
                after = scores.loc[(child, measure), ["value", "stderr"]].tolist()
                errors = [after[1], before[1]]
                stderr = math.hypot(*map(float, errors)) if all(pd.notna(errors)) else math.nan
                delta = float(after[0] - before[0])
                interval = delta_interval(measure, (run, parent), (run, child), delta)
                rows.append(
                    {
                        "variant": variant,
                        "stage": child.partition("-")[0],
                        "measure": measure,
                        "delta": delta,
                        "stderr": stderr,
                        "low": interval.low if interval else math.nan,
                        "high": interval.high if interval else math.nan,
                        "items": interval.n if interval else 0,
                        "within_noise": None if interval is None else not interval.excludes_zero,
                        "better": scores.loc[(child, measure), "better"],
                    }
                )
    return pd.DataFrame(rows, columns=DELTA_COLUMNS)


def parent_stage(run: Run, stage: str, fallback: str) -> str:
    """The stage `stage` started from: its resolved `init_from.stage` (a counterfactual such as
    cooldown-mathcode-lrdecay starts from continual-mathcode, which its name does not say), else
    `fallback` (its predecessor in the name lineage: a release, or a run without resolved.yaml)."""
    config = run.stages.get(stage)
    if config is not None and config.init_from is not None and config.init_from.stage:
        return config.init_from.stage
    return fallback


def delta_interval(
    measure: str, before: tuple[Run, str], after: tuple[Run, str], delta: float
) -> Interval | None:
    """The 95% paired-bootstrap interval of a change of `measure` from (run, stage) `before` to
    `after` (tinylab.analysis.effects: over the task's items, or the domain's held-out windows
    scored by `tinylab eval`), centred on the `delta` shown: a stage's contribution or a
    run-to-run difference. None when either side has no per-item data, or when the evaluated
    windows are not the ones `after`'s validation measured (another count: another sample)."""
    try:
        interval = measure_effect(measure, (before[0].run_dir, before[1]),
                                  (after[0].run_dir, after[1]))  # fmt: skip
    except EffectsError:
        return None
    if measure.endswith(BPB_SUFFIX) and interval.n != _validation_windows(*after, measure):
        return None
    return interval.centred_on(delta)


def _validation_windows(run: Run, stage: str, measure: str) -> int | None:
    """The number of windows of the stage's last validation of the measure's domain."""
    if "windows" not in run.validation:
        return None
    last = final_validation(run)
    rows = last[(last["stage"] == stage) & (last["domain"] == measure.removesuffix(BPB_SUFFIX))]
    return int(rows["windows"].iloc[0]) if len(rows) else None


def benchmark_table(run: Run) -> pd.DataFrame:
    """Our scores in the paper figure's units: model (stage), task, score (%), chance (%)."""
    frame = run.evals.dropna(subset=["value"])
    frame = frame[frame["metric"] != "bits_per_byte"]  # not a score in %; see validation figures
    return pd.DataFrame(
        {
            "model": "ours: " + frame["stage"],
            "task": frame["task"],
            "score": 100 * frame["value"].astype(float),
            "chance": 100 * frame["chance"].astype(float),
        }
    )
