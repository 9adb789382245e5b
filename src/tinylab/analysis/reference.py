"""The paper's reported numbers (docs/PAPER.md, "Reported results"), and ours beside them.

Only results live here; the protocol that produced them (tasks, shots, headline metric, chance)
is params/eval/paper.yaml, the file an evaluation runs, and the tables below take each task's
metric and chance from it; how the paper scored them is params/paper/. Scores are percentages.
docs/PAPER.md holds the commonsense table, the intermediate checkpoints' averages and HumanEval
pass@1; it has no numbers for the Chinese tasks or for MMLU, BBH and DROP, so neither has here.

    paper_reference()                 # every reported number: model, tokens, task, score
    beside_ours(load_run(RUN).evals)  # the run's checkpoints against the paper's rows
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

# docs/PAPER.md, "Reported results": the table's printed Avg column (v1.0's seven scores average
# 52.97; the paper prints 52.99) and the baselines' averages (a secondary source).
PRINTED_AVERAGES = {
    "Pythia-1.0B": 48.30,
    "TinyLlama v1.0 (3T)": 52.99,
    "TinyLlama v1.1": 53.63,
    "TinyLlama v1.1 Math&Code": 53.75,
    "TinyLlama v1.1 Chinese": 53.41,
}
BASELINE_AVERAGES = {"OPT-1.3B": 51.44, "Pythia-1.4B": 51.33}

# docs/PAPER.md, "Reported results": HumanEval pass@1 (%).
HUMANEVAL_PASS_AT_1 = {"TinyLlama v1.0 (2.5T)": 9.15, "TinyLlama v1.1 Math&Code": 15.24}

# Tokens seen by the TinyLlama checkpoints above (docs/PAPER.md, "The v1.1 three-stage pipeline").
MODEL_TOKENS = {
    "TinyLlama v1.0 (3T)": 3e12,
    "TinyLlama v1.0 (2.5T)": 2.5e12,
    "TinyLlama v1.1": 2e12,
    "TinyLlama v1.1 Math&Code": 2e12,
    "TinyLlama v1.1 Chinese": 2e12,
}


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


# The paper row each of the paper pipeline's stages reproduces: the end of a variant's cooldown is
# a released v1.1 model; base ends at 1.5T tokens, one of v1.0's intermediate checkpoints
# (docs/PAPER.md, "Reported results": v1.1's stage 1 is v1.0's recipe on 1.5T tokens).
STAGE_REFERENCE = {
    "base": "TinyLlama v1.0 (1.5T)",
    "cooldown-general": "TinyLlama v1.1",
    "cooldown-mathcode": "TinyLlama v1.1 Math&Code",
    "cooldown-chinese": "TinyLlama v1.1 Chinese",
}
AVERAGE = "commonsense average"
REFERENCE_COLUMNS = ["stage", "paper model", "task", "paper", "ours", "difference", "our stderr"]


def paper_reference() -> pd.DataFrame:
    """Every number docs/PAPER.md reports: model, tokens seen (None: not stated), task (the
    seven commonsense tasks, their average, humaneval), score (%)."""
    rows = [
        (model, task, score)
        for model, scores in _PAPER_ROWS.items()
        for task, score in zip(COMMONSENSE_COLUMNS, scores, strict=True)
    ]
    rows += [(model, AVERAGE, avg) for model, avg in PRINTED_AVERAGES.items()]
    rows += [(model, AVERAGE, avg) for model, avg in BASELINE_AVERAGES.items()]
    rows += [(_intermediate(n), AVERAGE, avg) for n, avg in INTERMEDIATE_AVERAGES.items()]
    rows += [(model, "humaneval", score) for model, score in HUMANEVAL_PASS_AT_1.items()]
    tokens = {**MODEL_TOKENS, **{_intermediate(n): n for n in INTERMEDIATE_AVERAGES}}
    return pd.DataFrame(
        [{"model": m, "tokens": tokens.get(m), "task": t, "score": s} for m, t, s in rows]
    )


def paper_table() -> pd.DataFrame:
    """paper_reference() as the paper prints it: a row per model, a column per task, scores as
    text with two decimals ("" where the paper reports none)."""
    table = paper_reference().pivot_table(index="model", columns="task", values="score", sort=False)
    return table.map(lambda score: "" if pd.isna(score) else f"{score:.2f}")


def _intermediate(tokens: float) -> str:
    size = f"{tokens / 1e12:g}T" if tokens >= 1e12 else f"{tokens / 1e9:g}B"
    return f"TinyLlama v1.0 ({size})"


def beside_ours(evals: pd.DataFrame, references: dict[str, str] = STAGE_REFERENCE) -> pd.DataFrame:
    """Our score of every task the paper reports for the checkpoint a stage reproduces
    (`references`: stage -> paper model; STAGE_REFERENCE, or a release's RELEASE_ROWS row),
    beside the paper's: stage, paper model, task, paper (%), ours (%), difference (ours - paper,
    points) and our stderr (points). The commonsense average is ours
    only when all seven tasks were scored (its stderr from theirs, as independent)."""
    reference = paper_reference()
    rows = []
    for stage, model in references.items():
        ours = evals[evals["stage"] == stage].set_index("task")
        if ours.empty:
            continue
        scores = {t: (100 * ours.at[t, "value"], 100 * (ours.at[t, "stderr"] or 0.0))
                  for t in ours.index}  # fmt: skip
        if all(task in scores for task in COMMONSENSE_COLUMNS):
            values = [scores[task] for task in COMMONSENSE_COLUMNS]
            mean = sum(v for v, _ in values) / len(values)
            scores[AVERAGE] = (mean, sum(e**2 for _, e in values) ** 0.5 / len(values))
        for paper in reference[reference["model"] == model].itertuples():
            if paper.task in scores:
                value, stderr = scores[paper.task]
                rows.append([stage, model, paper.task, paper.score, value, value - paper.score,
                             stderr])  # fmt: skip
    return pd.DataFrame(rows, columns=REFERENCE_COLUMNS)


# The released checkpoints behind the rows above, by (hub id, revision): the rows `tinylab eval`
# puts beside a released model's scores. The hub ids are those of the model cards (docs/PAPER.md,
# opening paragraph); the revision is assumed to be the one the cards' numbers came from (main).
RELEASE_ROWS = {
    ("EleutherAI/pythia-1b", "main"): "Pythia-1.0B",
    ("TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T", "main"): "TinyLlama v1.0 (3T)",
    ("TinyLlama/TinyLlama_v1.1", "main"): "TinyLlama v1.1",
    ("TinyLlama/TinyLlama_v1.1_math_code", "main"): "TinyLlama v1.1 Math&Code",
    ("TinyLlama/TinyLlama_v1.1_chinese", "main"): "TinyLlama v1.1 Chinese",
}
