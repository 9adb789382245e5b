"""Tables and figures of evaluation results (what notebooks/03_evaluate.ipynb shows).

A table is one row per task straight from the results JSON; the figure is a seaborn bar chart
of the headline metric per task with its standard error and the chance level marked, so a score
at chance reads as such at a glance. Perplexity rows (bits per byte, not a [0, 1] score) stay
in the table and out of the bar chart.

    from tinylab.evaluate import load_results, scores_table, plot_scores
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from tinylab.evaluate.errors import EvalError

COLUMNS = ["task", "metric", "value", "stderr", "n", "shots", "chance", "protocol", "dtype", "kind"]


def scores_table(results: dict) -> pd.DataFrame:
    """One row per task: task, metric, value, stderr, n, shots, chance, protocol, dtype, kind."""
    rows = [{column: row.get(column) for column in COLUMNS} for row in results["results"]]
    table = pd.DataFrame(rows, columns=COLUMNS)
    for column in ("value", "stderr", "chance"):
        table[column] = pd.to_numeric(table[column], errors="coerce")
    return table


def timings(results: dict) -> pd.DataFrame:
    """Seconds and items per second of each evaluated task (as measured when it ran)."""
    rows = [
        {"task": r["task"], "n": r.get("n"), "seconds": r.get("seconds"),
         "items_per_s": r.get("items_per_s")}
        for r in results["results"]
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=["task", "n", "seconds", "items_per_s"])


def plot_scores(table: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Headline metric per task (bars, ±1 stderr) with chance levels marked (black ticks)."""
    scores = table[table["kind"] != "perplexity"].reset_index(drop=True)
    if scores.empty:
        raise EvalError("no benchmark scores to plot (only perplexity or nothing)")
    labels = [f"{t} ({m})" for t, m in zip(scores["task"], scores["metric"], strict=True)]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(scores) + 1.2))
    sns.barplot(x=scores["value"], y=labels, ax=ax, color=sns.color_palette("deep")[0])
    ax.errorbar(
        scores["value"],
        range(len(scores)),
        xerr=scores["stderr"].fillna(0),
        fmt="none",
        ecolor="0.25",
        capsize=3,
    )
    has_chance = scores["chance"].notna()
    ax.scatter(
        scores.loc[has_chance, "chance"],
        scores.index[has_chance],
        marker="|",
        s=400,
        color="black",
        zorder=3,
        label="chance",
    )
    ax.set_xlim(0, 1)
    ax.set_xlabel("score")
    ax.set_ylabel("")
    ax.legend(loc="lower right", frameon=False)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig
