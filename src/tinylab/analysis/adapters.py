"""Full vs LoRA continual pretraining side by side: what an adapter buys and what it costs.

A LoRA stage (`adapter:` set) is paired with every full-weights stage of the run that trains the
same mixture (and ramp) from the same parent, e.g. `continual-mathcode-lora` with
`continual-mathcode` (not with its counterfactual without the ramp). For
each pair one table: rows are measures, columns the two stages. Costs come from the stage's
result.json (trainable/total parameters, wall time: start to export, validation included) and
metrics.jsonl (median tokens/s of the training steps; peak memory: CUDA max allocated, or the
process's max resident set size on CPU). Effects are measured against the parent stage: each
domain's held-out bits per byte at the parent's end ("before") and at the stage's end ("after"),
and each benchmark's score change. A value that was not recorded is None, never zero.

    for title, table in comparison_tables(load_run("outputs/runs/demo")).items(): ...
"""

from __future__ import annotations

import pandas as pd

from tinylab.analysis.runs import Run, final_validation

MIB = 2**20


def adapter_pairs(run: Run) -> list[tuple[str, str]]:
    """(full stage, LoRA stage) names: same parent, same mixture and ramp, one trains all
    weights."""
    pairs = []
    for lora, stage in run.stages.items():
        if stage.adapter is None or stage.init_from is None:
            continue
        for full, other in run.stages.items():
            same_start = (
                other.init_from is not None and other.init_from.stage == stage.init_from.stage
            )
            same_data = other.mixture == stage.mixture and other.ramp == stage.ramp
            if other.adapter is None and same_start and same_data:
                pairs.append((full, lora))
    return pairs


def side_by_side(run: Run, full: str, lora: str) -> pd.DataFrame:
    """One column per stage: costs, then held-out bits per byte before/after, then benchmark
    deltas against the parent (rows present for either stage)."""
    columns = {name: pd.Series(_column(run, name), dtype=object) for name in (full, lora)}
    table = pd.DataFrame(columns)  # object columns: counts stay ints, gaps stay None
    table.index.name = "measure"
    return table.where(table.notna(), None)


def comparison_tables(run: Run) -> dict[str, pd.DataFrame]:
    """side_by_side() of every adapter pair, keyed by a title."""
    return {f"{full} vs {lora}": side_by_side(run, full, lora) for full, lora in adapter_pairs(run)}


def _column(run: Run, name: str) -> dict[str, object]:
    parent = run.stages[name].init_from.stage
    return {
        **_costs(run, name),
        **_bits_per_byte(run, name, parent),
        **_benchmarks(run, name, parent),
    }


def _costs(run: Run, name: str) -> dict[str, object]:
    result = run.results.get(name)
    trainable = None if result is None else result.trainable_params
    total = None if result is None else result.total_params
    steps = run.metrics[run.metrics["stage"] == name]
    return {
        "trainable params": trainable,
        "trainable (% of total)": None if not total else round(100 * trainable / total, 3),
        "wall time (s)": None if result is None else round(result.wall_s, 1),
        "tokens/s (median)": round(float(steps["tokens_per_s"].median()), 1),
        "peak memory (MiB)": round(float(steps["peak_mem_bytes"].max()) / MIB, 1),
    }


def _bits_per_byte(run: Run, name: str, parent: str) -> dict[str, float]:
    last = final_validation(run)
    bpb = last.set_index(["stage", "domain"])["bpb"]
    rows = {}
    for domain in sorted(last.loc[last["stage"] == name, "domain"]):
        before = bpb.get((parent, domain))
        rows[f"{domain} bpb before"] = None if before is None else round(float(before), 4)
        rows[f"{domain} bpb after"] = round(float(bpb[(name, domain)]), 4)
    return rows


def _benchmarks(run: Run, name: str, parent: str) -> dict[str, float]:
    scores = run.evals[run.evals["metric"] != "bits_per_byte"].dropna(subset=["value"])
    value = scores.set_index(["stage", "task"])["value"]
    rows = {}
    for task, metric in scores.loc[scores["stage"] == name, ["task", "metric"]].itertuples(False):
        if (parent, task) in value.index:
            delta = float(value[(name, task)] - value[(parent, task)])
            rows[f"{task} ({metric}) delta"] = round(delta, 4)
    return rows
