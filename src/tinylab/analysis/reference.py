"""The paper's reported numbers (docs/PAPER.md, "Reported results"), for plotting beside ours.

Scores are percentages, zero-shot, lm-eval-harness; the metric per task is the paper's headline
(acc_norm, except winogrande and boolq: acc).
"""

from __future__ import annotations

import pandas as pd

COMMONSENSE_TASKS = (
    "hellaswag",
    "openbookqa",
    "winogrande",
    "arc_challenge",
    "arc_easy",
    "boolq",
    "piqa",
)

HEADLINE_METRIC = {
    "hellaswag": "acc_norm",
    "openbookqa": "acc_norm",
    "winogrande": "acc",
    "arc_challenge": "acc_norm",
    "arc_easy": "acc_norm",
    "boolq": "acc",
    "piqa": "acc_norm",
}

# Random-guess accuracy of each task (number of choices; boolq is yes/no).
CHANCE = {
    "hellaswag": 0.25,
    "openbookqa": 0.25,
    "winogrande": 0.5,
    "arc_challenge": 0.25,
    "arc_easy": 0.25,
    "boolq": 0.5,
    "piqa": 0.5,
}

# docs/PAPER.md, "Reported results (commonsense, zero-shot)": HellaSwag, OBQA, WinoGrande, ARC-c,
# ARC-e, BoolQ, PIQA, in COMMONSENSE_TASKS order.
_PAPER_ROWS = {
    "Pythia-1.0B": (47.16, 31.40, 53.43, 27.05, 48.99, 60.83, 69.21),
    "TinyLlama v1.0 (3T)": (59.20, 36.00, 59.12, 30.12, 55.25, 57.83, 73.29),
    "TinyLlama v1.1": (61.47, 36.80, 59.43, 32.68, 55.47, 55.99, 73.56),
    "TinyLlama v1.1 Math&Code": (60.80, 36.40, 60.22, 33.87, 55.20, 57.09, 72.69),
    "TinyLlama v1.1 Chinese": (58.23, 35.20, 59.27, 31.40, 55.35, 61.41, 73.01),
}

# docs/PAPER.md: averages of intermediate v1.0 checkpoints, by tokens seen.
INTERMEDIATE_AVERAGES = {
    103e9: 46.11,
    503e9: 48.28,
    1.0e12: 50.22,
    1.5e12: 51.29,
    2.0e12: 51.64,
    2.5e12: 53.86,
}

# docs/PAPER.md: HumanEval pass@1 (%).
HUMANEVAL_PASS_AT_1 = {"TinyLlama v1.0 (2.5T)": 9.15, "TinyLlama v1.1 Math&Code": 15.24}


def paper_commonsense() -> pd.DataFrame:
    """Long table: model, task, metric, score (%), chance (%)."""
    rows = [
        {
            "model": model,
            "task": task,
            "metric": HEADLINE_METRIC[task],
            "score": score,
            "chance": 100 * CHANCE[task],
        }
        for model, scores in _PAPER_ROWS.items()
        for task, score in zip(COMMONSENSE_TASKS, scores, strict=True)
    ]
    return pd.DataFrame(rows)


def paper_average(model: str) -> float:
    """The paper's average over the seven commonsense tasks, recomputed from its rows."""
    return round(sum(_PAPER_ROWS[model]) / len(COMMONSENSE_TASKS), 2)
