"""Several runs side by side: curves overlaid, final scores with their differences, the params
that differ, wall time and throughput; 06_compare executed and rendered to one HTML file.

The first run is the baseline: every difference is another run's value minus the baseline's, for
each (stage, task) or (stage, domain) both runs have. Runs are named by their folder (with its
parent where two folders share a name).

    comparison = load_comparison(["outputs/runs/demo", "outputs/runs/demo-lr"])
    benchmark_table(comparison); params_diff(comparison)
    write_comparison(paths, Path("outputs/compare/demo-vs-demo-lr"))   # -> .../compare.html
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import yaml

from tinylab.analysis import figures
from tinylab.analysis.effects import BPB_SUFFIX, verdict
from tinylab.analysis.publish import notebook_to_html
from tinylab.analysis.runs import Run, delta_interval, final_scores, load_run
from tinylab.config.loader import project_path
from tinylab.errors import UserError
from tinylab.layout import RunLayout
from tinylab.notebook import NOTEBOOKS_DIR, execute_notebook

COMPARE_NOTEBOOK = NOTEBOOKS_DIR / "06_compare.ipynb"
RUN_FOLDER = "a run folder (stages/<stage>/metrics.jsonl, e.g. outputs/runs/demo)"
ABSENT = "(absent)"


class CompareError(UserError):
    """Runs that cannot be compared: not run folders, fewer than two, nothing in common."""


@dataclass
class Comparison:
    """The compared runs by label, in the order given; the first is the baseline."""

    runs: dict[str, Run]

    @property
    def baseline(self) -> str:
        return next(iter(self.runs))


def load_comparison(run_dirs: Sequence[Path | str]) -> Comparison:
    """Load two or more run folders (relative paths: from the project root) that share a stage."""
    paths = [project_path(path) for path in run_dirs]
    if len(paths) < 2:
        raise CompareError(f"{', '.join(map(str, paths)) or 'no run'}: give at least 2 run folders")
    for path in paths:
        if not path.is_dir() or not RunLayout(path).trained_stages():
            raise CompareError(f"{path}: not a run folder; expected {RUN_FOLDER}")
    runs = dict(zip(run_labels(paths), map(load_run, paths), strict=True))
    if not common_stages(runs.values()):
        stages = "; ".join(f"{label}: {', '.join(_stages(run))}" for label, run in runs.items())
        raise CompareError(
            f"{', '.join(map(str, paths))}: no stage in common ({stages}); expected runs of the "
            "same pipeline (or pipelines that share stage names)"
        )
    return Comparison(runs)


def run_labels(paths: Sequence[Path]) -> list[str]:
    """Each run's folder name, with its parent's where two runs' names are equal."""
    names = [path.name for path in paths]
    labels = [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]
    for path, label in zip(paths, labels, strict=True):
        if labels.count(label) > 1:
            raise CompareError(f"{path}: given twice (or two runs named {label}); give each once")
    return labels


def _stages(run: Run) -> list[str]:
    return list(dict.fromkeys([*run.metrics["stage"], *run.evals["stage"]]))


def common_stages(runs: Sequence[Run] | Any) -> list[str]:
    """Stages (trained or evaluated) that every run has, in the first run's order."""
    runs = list(runs)
    shared = set.intersection(*(set(_stages(run)) for run in runs))
    return [stage for stage in _stages(runs[0]) if stage in shared]


def overlaid(comparison: Comparison, frame: str) -> pd.DataFrame:
    """One of the runs' frames (`metrics` or `validation`) of every run, with a column run."""
    parts = [getattr(run, frame).assign(run=label) for label, run in comparison.runs.items()]
    return pd.concat(parts, ignore_index=True)


# --------------------------------------------------------------------------------------------
# final scores and their differences


def differences(comparison: Comparison) -> pd.DataFrame:
    """Every run's final scores (`runs.final_scores`: each task's headline score, each domain's
    last held-out bits per byte) beside the baseline's, for each (stage, measure) both have.
    Columns stage, measure, better, run, baseline, value, difference (value - baseline), low and
    high (its 95% paired-bootstrap interval, `runs.delta_interval`: over the task's items or the
    domain's held-out windows; NaN without per-item data), items and within_noise (whether the
    interval holds 0; None without per-item data)."""
    base_run = comparison.runs[comparison.baseline]
    scores = {label: final_scores(run) for label, run in comparison.runs.items()}
    base = scores[comparison.baseline][["stage", "measure", "better", "value"]]
    rows = []
    for label, frame in scores.items():
        if label == comparison.baseline:
            continue
        merged = base.merge(frame[["stage", "measure", "value"]], on=["stage", "measure"],
                            suffixes=("_base", ""))  # fmt: skip
        merged = merged.rename(columns={"value_base": "baseline"})
        merged = merged.assign(run=label, difference=merged["value"] - merged["baseline"])
        after = comparison.runs[label]
        intervals = [
            delta_interval(row.measure, (base_run, row.stage), (after, row.stage), row.difference)
            for row in merged.itertuples()
        ]
        rows.append(merged.assign(
            low=[i.low if i else math.nan for i in intervals],
            high=[i.high if i else math.nan for i in intervals],
            items=[i.n if i else 0 for i in intervals],
            within_noise=[None if i is None else not i.excludes_zero for i in intervals],
        ))  # fmt: skip
    columns = ["stage", "measure", "better", "run", "baseline", "value", "difference", "low",
               "high", "items", "within_noise"]  # fmt: skip
    return pd.concat(rows, ignore_index=True)[columns]


def _difference_table(comparison: Comparison, *, bits_per_byte: bool) -> pd.DataFrame:
    """Scores indexed by (stage, measure), stages in the runs' order, with one column per run
    and, per run after the baseline, its difference, the difference's 95% interval and whether
    that interval holds 0 ("within noise")."""
    frame = differences(comparison)
    frame = frame[frame["measure"].str.endswith(BPB_SUFFIX) == bits_per_byte]
    if frame.empty:
        return pd.DataFrame()
    index = ["stage", "measure"]
    table = frame.drop_duplicates(index).set_index(index)[["baseline"]]
    table.columns = [comparison.baseline]
    for label, part in frame.groupby("run", sort=False):
        part = part.set_index(index)
        name = f"{label} - {comparison.baseline}"
        table[label] = part["value"]
        table[name] = part["difference"]
        table[f"{name}: 95% interval"] = [
            f"[{low:+.3g}, {high:+.3g}]" if pd.notna(low) else ""
            for low, high in zip(part["low"], part["high"], strict=True)
        ]
        table[f"{name}: verdict"] = part["within_noise"].map(verdict)
    order = {stage: i for i, stage in enumerate(_ordered_stages(comparison))}
    stages = table.index.get_level_values("stage").map(order)
    measures = table.index.get_level_values("measure")
    rank = measures if bits_per_byte else pd.Index(range(len(table)))  # domains a-z, tasks as run
    return table.iloc[sorted(range(len(table)), key=lambda i: (stages[i], rank[i]))]


def benchmark_table(comparison: Comparison) -> pd.DataFrame:
    """Each evaluated stage's task scores (higher is better) per run, with each run's difference
    from the baseline; indexed by (stage, task)."""
    table = _difference_table(comparison, bits_per_byte=False)
    return table.rename_axis(["stage", "task"]) if not table.empty else table


def bits_per_byte_table(comparison: Comparison) -> pd.DataFrame:
    """Each stage's last held-out bits per byte per domain (lower is better) per run, with each
    run's difference from the baseline; indexed by (stage, domain)."""
    table = _difference_table(comparison, bits_per_byte=True)
    if table.empty:
        return table
    table.index = table.index.set_levels(
        table.index.levels[1].str.removesuffix(BPB_SUFFIX), level=1
    )
    return table.rename_axis(["stage", "domain"])


# --------------------------------------------------------------------------------------------
# params, wall time


def params_tree(run: Run) -> dict[str, Any]:
    """What a run was configured with, by step: the params files each step resolved (from
    manifest.json; a trained stage's from its resolved.yaml) and its other parameters
    (overrides, ...), and the pipeline file."""
    tree: dict[str, Any] = {"pipeline": run.manifest.get("pipeline")}
    for step, record in run.manifest.get("steps", {}).items():
        params = {k: v for k, v in record.get("params", {}).items() if k != "run_dir"}
        resolved = {k: yaml.safe_load(text) for k, text in record.get("resolved", {}).items()}
        tree[step] = {**params, **resolved}
    for stage, config in run.stages.items():
        tree.setdefault(stage, {})["stage_params"] = config.model_dump(mode="json")
    return tree


def params_diff(comparison: Comparison) -> pd.DataFrame:
    """Only the params keys whose values differ between the runs: one row per dotted key (the
    shallowest one where a run lacks a mapping the others have, shown "(absent)"), one column
    per run."""
    trees = [params_tree(run) for run in comparison.runs.values()]
    rows = {key: [_shown(v) for v in values] for key, values in _differing(trees).items()}
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(comparison.runs)).rename_axis(
        "key"
    )


def _differing(trees: list[Any], prefix: str = "") -> dict[str, list[Any]]:
    """Dotted keys whose values are not all equal, descending into keys that are mappings in
    every tree."""
    keys = list(dict.fromkeys(key for tree in trees for key in tree))
    found = {}
    for key in keys:
        values = [tree.get(key, ABSENT) for tree in trees]
        if all(isinstance(value, dict) and value for value in values):
            found.update(_differing(values, f"{prefix}{key}."))
        elif any(value != values[0] for value in values[1:]):
            found[f"{prefix}{key}"] = values
    return found


def _shown(value: Any) -> str:
    """A params value as one cell: YAML's null, mappings and lists as JSON."""
    if value is None:
        return "null"
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


def stage_timing(comparison: Comparison) -> pd.DataFrame:
    """Per (stage, run): tokens trained, wall time and median tokens/s (from result.json and the
    metrics), and each run's total over its stages ("all stages")."""
    rows = []
    for label, run in comparison.runs.items():
        median = run.metrics.groupby("stage")["tokens_per_s"].median()
        for stage, result in run.results.items():
            rows.append({"stage": stage, "run": label, "tokens": result.stage_tokens,
                         "wall_s": result.wall_s, "tokens_per_s": median.get(stage)})  # fmt: skip
        done = [r for r in rows if r["run"] == label]
        tokens, wall = sum(r["tokens"] for r in done), sum(r["wall_s"] for r in done)
        rows.append({"stage": "all stages", "run": label, "tokens": tokens, "wall_s": wall,
                     "tokens_per_s": tokens / wall if wall else None})  # fmt: skip
    order = {stage: i for i, stage in enumerate([*_ordered_stages(comparison), "all stages"])}
    frame = pd.DataFrame(rows, columns=["stage", "run", "tokens", "wall_s", "tokens_per_s"])
    frame = frame.sort_values("stage", key=lambda s: s.map(order), kind="stable")
    return frame.set_index(["stage", "run"])


def _ordered_stages(comparison: Comparison) -> list[str]:
    return list(dict.fromkeys(s for run in comparison.runs.values() for s in _stages(run)))


def runs_table(comparison: Comparison) -> pd.DataFrame:
    """Each run (the index): its folder, pipeline, git commit and stages; for points of a sweep
    (`tinylab run --sweep`) also the swept values and the steps taken from another point (columns
    that no run fills are left out)."""
    rows = []
    for label, run in comparison.runs.items():
        steps = run.manifest.get("steps", {}).items()
        values = run.manifest.get("sweep", {}).get("values", {}).items()
        rows.append({"run": label, "folder": str(run.run_dir),
                     "pipeline": run.manifest.get("pipeline"),
                     "git commit": run.manifest.get("git", {}).get("sha"),
                     "stages": ", ".join(_stages(run)),
                     "sweep values": ", ".join(f"{key}={value}" for key, value in values),
                     "steps shared from": ", ".join(f"{step}: {record['shared_from']['run']}"
                                                    for step, record in steps
                                                    if "shared_from" in record)})  # fmt: skip
    frame = pd.DataFrame(rows).set_index("run")
    return frame.loc[:, frame.astype(bool).any()]


# --------------------------------------------------------------------------------------------
# figures and the report

FIGURES: dict[str, Callable[[Comparison], plt.Figure]] = {
    "loss": lambda c: figures.runs_loss_curves(overlaid(c, "metrics")),
    "bits_per_byte": lambda c: figures.runs_bits_per_byte(overlaid(c, "validation")),
}


def draw(comparison: Comparison, name: str, out_dir: Path | str) -> Path:
    """Draw one of FIGURES into OUT/figures/ (PNG + SVG); return the PNG."""
    if name not in FIGURES:
        raise ValueError(f"figure {name!r}: allowed: {', '.join(FIGURES)}")
    stem = project_path(out_dir) / "figures" / name
    return figures.save_figure(FIGURES[name](comparison), stem)[0]


def default_out_dir(run_dirs: Sequence[Path | str]) -> Path:
    """outputs/compare/<run>-vs-<run>[...] under the project root."""
    labels = run_labels([project_path(path) for path in run_dirs])
    name = "-vs-".join(label.replace("/", "_") for label in labels)
    return project_path(Path("outputs/compare") / name)


def write_comparison(
    runs: Sequence[Path | str], out_dir: Path | str, *, notebook: Path = COMPARE_NOTEBOOK
) -> Path:
    """Check the runs (a CompareError before anything is written), execute 06_compare on them
    into OUT/compare.ipynb with figures in OUT/figures/, and render OUT/compare.html (code
    hidden, images embedded); return the HTML's path."""
    comparison = load_comparison(runs)
    out = project_path(out_dir)
    parameters = {"runs": [str(run.run_dir) for run in comparison.runs.values()],
                  "out_dir": str(out)}  # fmt: skip
    executed = execute_notebook(notebook, out / "compare.ipynb", parameters)
    return notebook_to_html(executed, out / "compare.html")
