"""The paper's reported numbers (docs/PAPER.md, "Reported results"), for plotting beside ours.

Only results live here; the protocol that produced them (tasks, shots, headline metric, chance)
is params/eval/paper.yaml, the file an evaluation runs, and the tables below take each task's
metric and chance from it. Scores are percentages, zero-shot, lm-eval-harness.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tinylab.config.eval import EvalConfig
from tinylab.config.loader import PARAMS_DIR, load_config

PAPER_PROTOCOL = PARAMS_DIR / "eval" / "paper.yaml"

# docs/PAPER.md, "Reported results (commonsense, zero-shot)": the table's columns (HellaSwag,
# OBQA, WinoGrande, ARC-c, ARC-e, BoolQ, PIQA) as lm-eval task names, then its rows.
COMMONSENSE_COLUMNS = (
    "hellaswag",
    "openbookqa",
    "winogrande",
    "arc_challenge",
    "arc_easy",
    "boolq",
    "piqa",
)
_PAPER_ROWS = {
    "Pythia-1.0B": (47.16, 31.40, 53.43, 27.05, 48.99, 60.83, 69.21),
    "TinyLlama v1.0 (3T)": (59.20, 36.00, 59.12, 30.12, 55.25, 57.83, 73.29),
    "TinyLlama v1.1": (61.47, 36.80, 59.43, 32.68, 55.47, 55.99, 73.56),
    "TinyLlama v1.1 Math&Code": (60.80, 36.40, 60.22, 33.87, 55.20, 57.09, 72.69),
    "TinyLlama v1.1 Chinese": (58.23, 35.20, 59.27, 31.40, 55.35, 61.41, 73.01),
}

# docs/PAPER.md, "Reported results": averages of intermediate v1.0 checkpoints, by tokens seen.
INTERMEDIATE_AVERAGES = {
    103e9: 46.11,
    503e9: 48.28,
    1.0e12: 50.22,
    1.5e12: 51.29,
    2.0e12: 51.64,
    2.5e12: 53.86,
}

# docs/PAPER.md, "Reported results": HumanEval pass@1 (%).
HUMANEVAL_PASS_AT_1 = {"TinyLlama v1.0 (2.5T)": 9.15, "TinyLlama v1.1 Math&Code": 15.24}


def paper_commonsense(protocol: Path = PAPER_PROTOCOL) -> pd.DataFrame:
    """Long table: model, task, metric, score (%), chance (%); metric and chance per task from
    the eval protocol."""
    tasks = {task.name: task for task in load_config(protocol, EvalConfig).tasks}
    rows = [
        {
            "model": model,
            "task": name,
            "metric": tasks[name].metric,
            "score": score,
            "chance": 100 * tasks[name].chance,
        }
        for model, scores in _PAPER_ROWS.items()
        for name, score in zip(COMMONSENSE_COLUMNS, scores, strict=True)
    ]
    return pd.DataFrame(rows)


def paper_average(model: str) -> float:
    """The paper's average over the seven commonsense tasks, recomputed from its rows."""
    return round(sum(_PAPER_ROWS[model]) / len(COMMONSENSE_COLUMNS), 2)
