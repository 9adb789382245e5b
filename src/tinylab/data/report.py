"""Tables and figures of prepared data and of mixtures, for notebooks/01_prepare_data.ipynb:
per-source token counts, document-length distributions, and the mixture schedule of stages
(expected weights beside the realized share of windows). Read from the index only, never from
the shards, so they are instant at any scale.

    from tinylab.data.report import token_table
    token_table(PackedData.open(Path("outputs/runs/demo/data")))
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from tinylab.config.loader import PARAMS_DIR, ConfigError, load_config, load_raw, project_path
from tinylab.config.stage import StageConfig
from tinylab.data.card import CARD_FILE
from tinylab.data.mixture import MixtureSampler
from tinylab.data.packed import PackedData

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def token_table(data: PackedData) -> pd.DataFrame:
    """One row per source: documents, tokens and windows per split, bytes per token."""
    rows = []
    for name, entry in data.index["sources"].items():
        train, val = entry["splits"]["train"], entry["splits"]["val"]
        rows.append(
            {
                "source": name,
                "domain": entry["domain"],
                "documents": train["documents"] + val["documents"],
                "train_tokens": train["tokens"],
                "val_tokens": val["tokens"],
                "train_windows": train["windows"],
                "val_windows": val["windows"],
                "text_MB": (train["bytes"] + val["bytes"]) / 1e6,
                "bytes_per_token": (train["bytes"] + val["bytes"])
                / max(train["tokens"] + val["tokens"], 1),
            }
        )
    return pd.DataFrame(rows)


def document_lengths(data: PackedData) -> pd.DataFrame:
    """Token length of (up to 10,000) documents per source, as recorded at packing time."""
    frames = [
        pd.DataFrame({"source": name, "domain": e["domain"], "tokens": e["document_tokens_sample"]})
        for name, e in data.index["sources"].items()
    ]
    return pd.concat(frames, ignore_index=True)


def plot_document_lengths(data: PackedData) -> Figure:
    """Histogram of document lengths (tokens, log scale), one colour per domain."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    frame = document_lengths(data)
    fig, ax = plt.subplots(figsize=(7, 3.5), layout="constrained")
    sns.histplot(
        frame, x="tokens", hue="domain", log_scale=True, element="step", stat="density",
        common_norm=False, ax=ax,
    )  # fmt: skip
    ax.axvline(data.window_tokens, color="grey", ls="--", lw=1)
    ax.text(data.window_tokens, ax.get_ylim()[1] * 0.95, " window", color="grey", va="top")
    ax.set(xlabel="document length (tokens)", title="Document lengths per domain")
    return fig


def mixture_schedule(
    stage: StageConfig, num_windows: dict[str, int], *, points: int | None = None
) -> pd.DataFrame:
    """Expected weight and realized share of windows per source over a stage, in bins (default:
    about 50 windows each, 5 to 50 bins): columns stage, tokens (bin centre), source, expected,
    realized."""
    seq_len = stage.data.seq_len
    sampler = MixtureSampler.for_stage(stage, num_windows)
    total = stage.max_tokens // seq_len
    points = points or int(np.clip(total // 50, 5, 50))
    edges = np.unique(np.linspace(0, total, points + 1).astype(int))
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        expected = sampler.weights_at(np.arange(lo, hi) * seq_len).mean(axis=0)
        realized = sampler.realized(lo, hi)
        for i, name in enumerate(sampler.names):
            rows.append(
                {
                    "stage": stage.name,
                    "tokens": (lo + hi) / 2 * seq_len,
                    "source": name,
                    "expected": float(expected[i]),
                    "realized": realized[name],
                }
            )
    return pd.DataFrame(rows)


def plot_mixture_schedules(stages: Sequence[StageConfig], *, columns: int = 4) -> Figure:
    """One panel per stage: expected weights (lines) and realized shares of windows (dots) over
    the stage's tokens, one colour per source throughout. (Which source a window reads does not
    depend on source sizes, so no prepared data is needed.) No stages: a panel that says so."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    if not stages:
        fig, ax = plt.subplots(figsize=(3.6, 1.0))
        ax.text(0.5, 0.5, "no stage under params/stages/ uses this data", ha="center")
        ax.set_axis_off()
        return fig
    frames = [mixture_schedule(s, dict.fromkeys(s.data.sources, 1)) for s in stages]
    frame = pd.concat(frames, ignore_index=True)
    sources = sorted(frame["source"].unique())
    colours = dict(zip(sources, sns.color_palette("tab10", len(sources)), strict=True))
    cols = min(columns, len(stages))
    rows = -(-len(stages) // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.6 * cols, 2.8 * rows), sharey=True, squeeze=False,
        layout="constrained",
    )  # fmt: skip
    for ax, stage in zip(axes.flat, stages, strict=False):
        part = frame[frame["stage"] == stage.name]
        for source, group in part.groupby("source"):
            ax.plot(group["tokens"], group["expected"], color=colours[source], label=source)
            ax.scatter(group["tokens"], group["realized"], color=colours[source], s=8)
        ax.set(title=stage.name, xlabel="tokens into the stage", ylim=(-0.03, 1.03))
    for ax in axes.flat[len(stages) :]:
        ax.set_axis_off()
    for ax in axes[:, 0]:
        ax.set_ylabel("share of windows")
    handles = [plt.Line2D([], [], color=colours[s], marker="o", label=s) for s in sources]
    fig.legend(handles=handles, loc="outside right upper", title="source")
    return fig


def stages_using(data_params: str | Path) -> list[StageConfig]:
    """Every stage under params/stages/ whose `data` is `data_params`, sorted by file path."""
    target = project_path(data_params).resolve()
    stages = []
    for path in sorted((PARAMS_DIR / "stages").rglob("*.yaml")):
        try:
            ref = load_raw(path, StageConfig).get("data")
        except ConfigError:
            continue
        if isinstance(ref, str) and Path(ref).resolve() == target:
            stages.append(load_config(path, StageConfig))
    return stages


def data_card(data: PackedData):  # -> IPython.display.Markdown
    """The run's data card, for display in a notebook."""
    from IPython.display import Markdown

    return Markdown((data.data_dir / CARD_FILE).read_text(encoding="utf-8"))
