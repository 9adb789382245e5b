"""Figures of a run, drawn with seaborn from tidy DataFrames (see tinylab.analysis.runs).

Each function takes the frames that `load_run` returns and gives a matplotlib Figure; `save_figure`
writes it as PNG and SVG with deterministic bytes (same data, same file), so figures can be
diffed and cached; `draw(run, name)` makes one of the report's FIGURES into RUN/figures/.

Stage names follow `<phase>[-<variant>]` (base, continual-mathcode, cooldown-chinese, ...): the
phase gives the background bands, the variant the colour, the same in every figure of a run
(`variant_palette`; a continual stage is a lighter shade of its variant than the cooldown; the
paper's rows are grey).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

from tinylab.analysis.formatting import count_tick
from tinylab.analysis.reference import AVERAGE, beside_ours, paper_commonsense, paper_reference
from tinylab.analysis.runs import Run, benchmark_table, stage_deltas
from tinylab.layout import RunLayout

PHASE_COLORS = {"base": "#f2f2f2", "continual": "#e3eef9", "cooldown": "#fbeee0"}
NOISE_COLOR = "#d9d9d9"  # a stage contribution within noise


def _tokens_axis(ax: plt.Axes, label: str) -> None:
    """Label a tokens axis; its ticks 200,000 or 1.5M, never an offset such as 1e12."""
    ax.set_xlabel(label)
    ax.xaxis.set_major_formatter(FuncFormatter(count_tick))


def save_figure(fig: plt.Figure, stem: Path) -> list[Path]:
    """Write `stem`.png and `stem`.svg with no timestamps or random ids; close the figure."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    with plt.rc_context({"svg.hashsalt": "tinylab", "svg.fonttype": "none"}):
        fig.savefig(paths[0], dpi=120, metadata={"Software": None}, bbox_inches="tight")
        fig.savefig(paths[1], metadata={"Date": None, "Creator": None}, bbox_inches="tight")
    plt.close(fig)
    return paths


def _style() -> None:
    sns.set_theme(style="whitegrid", context="notebook", palette="colorblind")


def _phase_bands(ax: plt.Axes, metrics: pd.DataFrame) -> None:
    """Shade each phase from its first logged tokens to the next phase's (no gaps between)."""
    spans = metrics.groupby("phase", sort=False)["tokens"].agg(["min", "max"]).sort_values("min")
    stops = [*spans["min"].iloc[1:], spans["max"].iloc[-1]]
    for (phase, start), stop in zip(spans["min"].items(), stops, strict=True):
        ax.axvspan(start, stop, color=PHASE_COLORS.get(phase, "#eeeeee"), zorder=0, lw=0)


def _phase_legend(fig: plt.Figure, metrics: pd.DataFrame) -> None:
    """The phases' shading named once for the figure, below it (no labels inside the panels,
    which overlap where a panel is narrow)."""
    phases = list(dict.fromkeys(metrics.sort_values("tokens")["phase"]))
    handles = [Patch(color=PHASE_COLORS.get(p, "#eeeeee"), label=p) for p in phases]
    fig.legend(
        handles=handles, title="phase (shading)", loc="lower center", ncols=len(handles),
        bbox_to_anchor=(0.5, 0), frameon=False, fontsize=8, title_fontsize=8,
    )  # fmt: skip


def variant_palette(variants: Iterable[str]) -> dict[str, tuple]:
    """One colour per variant, the same in every figure: base first (its colour kept where a
    figure has no base, as in stage contributions), then alphabetical."""
    names = ["base", *sorted(set(variants) - {"base"})]
    return dict(zip(names, sns.color_palette("colorblind", len(names)), strict=True))


def stage_palette(stages: Iterable[str]) -> dict[str, tuple]:
    """A colour per stage: its variant's (variant_palette), lighter for a continual stage."""
    stages = list(dict.fromkeys(stages))
    variant = {stage: stage.partition("-")[2] or stage for stage in stages}
    palette = variant_palette(variant.values())
    return {
        stage: sns.set_hls_values(palette[variant[stage]], l=0.72)
        if stage.startswith("continual-")
        else palette[variant[stage]]
        for stage in stages
    }


def _palette(frame: pd.DataFrame) -> dict[str, tuple]:
    return variant_palette(frame["variant"])


def _ema(losses: pd.Series, fraction: float) -> pd.Series:
    """Exponential moving average spanning `fraction` of the series (at least 2 points)."""
    return losses.ewm(span=max(2, round(fraction * len(losses))), adjust=True).mean()


def _stage_lines(frame: pd.DataFrame, y: str, ax: plt.Axes, palette: dict, **style) -> None:
    """One line per stage against tokens, coloured by variant."""
    sns.lineplot(frame, x="tokens", y=y, hue="variant", palette=palette, units="stage",
                 estimator=None, ax=ax, **style)  # fmt: skip


def loss_curves(metrics: pd.DataFrame, *, ema: float = 0.1) -> plt.Figure:
    """Training loss (raw and an EMA spanning `ema` of each stage's steps), learning rate and
    gradient norm against tokens, all stages and variants, with phase bands. Needs columns
    tokens, loss, lr, grad_norm, stage, phase, variant."""
    _style()
    frame = metrics.sort_values(["stage", "tokens"]).copy()
    frame["loss (EMA)"] = frame.groupby("stage")["loss"].transform(lambda s: _ema(s, ema))
    palette = _palette(frame)
    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True, height_ratios=[3, 1, 1])
    for ax in axes:
        _phase_bands(ax, frame)
    _stage_lines(frame, "loss", axes[0], palette, alpha=0.25, lw=0.8, legend=False)
    _stage_lines(frame, "loss (EMA)", axes[0], palette)
    axes[0].set_ylabel("training loss (nats/token)")
    _stage_lines(frame, "lr", axes[1], palette, legend=False)
    _stage_lines(frame, "grad_norm", axes[2], palette, legend=False)
    _tokens_axis(axes[2], "tokens seen (all stages)")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    _phase_legend(fig, frame)
    return fig


def validation_bits_per_byte(validation: pd.DataFrame) -> plt.Figure:
    """Held-out bits per byte of every domain through the stages, one panel per domain. Needs
    columns tokens, domain, bpb, stage, phase, variant."""
    _style()
    domains = sorted(validation["domain"].unique())
    palette = _palette(validation)
    fig, axes = plt.subplots(
        1, len(domains), figsize=(3.2 * len(domains), 3.4), sharex=True, squeeze=False
    )
    for ax, domain in zip(axes[0], domains, strict=True):
        part = validation[validation["domain"] == domain].sort_values("tokens")
        _phase_bands(ax, part)
        _stage_lines(part, "bpb", ax, palette, marker="o", ms=3, legend=ax is axes[0][-1])
        ax.set_title(domain, pad=4)
        ax.set_ylabel("bits per byte" if ax is axes[0][0] else "")
        _tokens_axis(ax, "tokens seen")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    _phase_legend(fig, validation)
    return fig


def stage_contributions(deltas: pd.DataFrame) -> plt.Figure:
    """The change each stage causes in every score and domain loss, per variant: a heatmap of
    signed deltas and bars of the same, signed so that + is better. Needs columns variant,
    stage, measure, delta, better ('higher' or 'lower'); with `low`/`high`/`within_noise`
    (runs.stage_deltas) each cell shows its 95% interval and bars carry it as error bars, and a
    change within noise is a grey cell and a pale bar; else a `stderr` column is shown as ±."""
    _style()
    if deltas.empty:  # one stage only, or none with a parent scored
        fig, ax = plt.subplots(figsize=(7, 1.2))
        ax.text(0.5, 0.5, "no stage with a scored parent stage: no contributions yet",
                ha="center", va="center")  # fmt: skip
        ax.set_axis_off()
        return fig
    frame = _gains(deltas)
    table = frame.pivot_table(index="measure", columns="stage", values="gain", sort=False)
    frame["label"] = [_cell_label(r) for r in frame.itertuples()]
    labels = frame.pivot(index="measure", columns="stage", values="label")
    labels = labels.reindex(index=table.index, columns=table.columns)
    noise = frame.pivot(index="measure", columns="stage", values="noise")
    noise = noise.reindex(index=table.index, columns=table.columns).fillna(False).astype(bool)
    heat_width = 1.3 * len(table.columns) + 3  # room for a cell's "[-0.15, 0.15]"
    fig, axes = plt.subplots(1, 2, figsize=(heat_width + 7, 0.7 * len(table) + 2.5),
                             width_ratios=[heat_width, 7])  # fmt: skip
    limit = max(float(table.abs().max().max()), 1e-9)
    cells = {"annot": labels.to_numpy(), "fmt": "", "annot_kws": {"fontsize": 8}, "ax": axes[0]}
    sns.heatmap(table, mask=noise.to_numpy(), cmap="RdBu", vmin=-limit, vmax=limit, center=0,
                cbar_kws={"label": "improvement (sign: better is +)"}, **cells)  # fmt: skip
    if noise.to_numpy().any():
        sns.heatmap(table, mask=~noise.to_numpy(), cmap=[NOISE_COLOR], cbar=False, **cells)
        axes[0].set_title("grey: within noise (the 95% interval holds 0)", fontsize=9)
    axes[0].set_xlabel("")
    axes[0].set_ylabel("")
    _contribution_bars(frame, axes[1])
    fig.tight_layout()
    return fig


def _gains(deltas: pd.DataFrame) -> pd.DataFrame:
    """Deltas signed so that + is better (interval bounds swapped where lower is better), the
    stage's own name in `stage`, and `noise`: whether the change is within noise."""
    frame = deltas.copy()
    flip = frame["better"] != "higher"
    frame["gain"] = frame["delta"].where(~flip, -frame["delta"])
    for column in ("low", "high", "stderr", "within_noise"):
        if column not in frame:
            frame[column] = math.nan if column != "within_noise" else None
    frame["gain_low"] = frame["low"].where(~flip, -frame["high"])
    frame["gain_high"] = frame["high"].where(~flip, -frame["low"])
    frame["noise"] = frame["within_noise"].map(lambda v: v is True)
    frame["stage"] = frame["stage"] + "-" + frame["variant"]
    return frame


def _cell_label(row) -> str:
    if pd.notna(row.gain_low):
        return f"{row.gain:.2f}\n[{row.gain_low:.2f}, {row.gain_high:.2f}]"
    return f"{row.gain:.2f}" + (f"\n±{row.stderr:.2f}" if pd.notna(row.stderr) else "")


def _contribution_bars(frame: pd.DataFrame, ax: plt.Axes) -> None:
    """Horizontal bars of the gains, one per stage within each measure, with the 95% interval
    as an error bar; a bar within noise is pale."""
    measures = list(dict.fromkeys(frame["measure"]))
    stages = list(dict.fromkeys(frame["stage"]))
    palette = stage_palette(stages)
    height = 0.8 / len(stages)
    for k, stage in enumerate(stages):
        rows = frame[frame["stage"] == stage]
        y = [measures.index(m) - 0.4 + height * (k + 0.5) for m in rows["measure"]]
        errors = [
            rows["gain"] - rows["gain_low"],
            rows["gain_high"] - rows["gain"],
        ]
        ax.barh(y, rows["gain"], height=height, color=palette[stage], label=stage,
                xerr=errors, error_kw={"lw": 0.8, "capsize": 2})  # fmt: skip
        for patch, noisy in zip(ax.patches[-len(rows) :], rows["noise"], strict=True):
            patch.set_alpha(0.35 if noisy else 1.0)
    ax.set_yticks(range(len(measures)), measures)
    ax.invert_yaxis()
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("improvement caused by the stage (bars: 95% interval; pale: within noise)")
    ax.legend(title="stage", loc="best", fontsize=8)


def benchmarks_vs_paper(ours: pd.DataFrame, paper: pd.DataFrame) -> plt.Figure:
    """Scores per task, ours beside the paper's rows, with a chance line per task. Both frames
    need columns model, task, score (%), chance (%)."""
    _style()
    frame = pd.concat([ours.assign(source="this run"), paper.assign(source="paper")])
    tasks = list(dict.fromkeys(frame["task"]))
    fig, ax = plt.subplots(figsize=(max(7, 1.4 * len(tasks)), 4.2))
    sns.barplot(frame, x="task", y="score", hue="model", order=tasks, ax=ax,
                palette=_model_palette(ours["model"], paper["model"]), saturation=1)  # fmt: skip
    chance = frame.groupby("task")["chance"].first().reindex(tasks)
    for i, level in enumerate(chance):
        ax.hlines(level, i - 0.45, i + 0.45, colors="black", linestyles="--", lw=1)
    ax.plot([], [], "k--", lw=1, label="chance")
    ax.legend(fontsize=7, ncols=2, loc="upper left", bbox_to_anchor=(1, 1))
    ax.set_ylabel("score (%)")
    ax.set_xlabel("")
    ax.tick_params(axis="x", labelrotation=30)
    fig.tight_layout()
    return fig


def _model_palette(ours: Iterable[str], paper: Iterable[str]) -> dict[str, tuple]:
    """Our models ("ours: <stage>") in their stages' colours, the paper's in greys."""
    ours, paper = list(dict.fromkeys(ours)), list(dict.fromkeys(paper))
    stages = stage_palette(name.removeprefix("ours: ") for name in ours)
    greys = sns.color_palette("Greys", len(paper) + 2)[2:]
    return {
        **{name: stages[name.removeprefix("ours: ")] for name in ours},
        **dict(zip(paper, greys, strict=True)),
    }


def reference_rows(reference: pd.DataFrame, ours: pd.DataFrame) -> plt.Figure:
    """The paper's commonsense averages against tokens seen (v1.0's checkpoints as a line, the
    released models as points) and its HumanEval pass@1, with ours where a run scored them. Both
    frames need columns model, tokens, task, score (%)."""
    _style()
    frame = pd.concat([reference.assign(source="paper"), ours.assign(source="this run")])
    frame = frame.dropna(subset=["tokens"])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), width_ratios=[1.6, 1])
    average = frame[frame["task"] == AVERAGE]
    v10 = average[average["model"].str.startswith("TinyLlama v1.0")].sort_values("tokens")
    axes[0].plot(v10["tokens"], v10["score"], "o-", color="grey", label="TinyLlama v1.0 (paper)")
    others = average[~average["model"].isin(v10["model"])]
    palette = _model_palette(
        frame.loc[frame["source"] == "this run", "model"],
        frame.loc[frame["source"] == "paper", "model"],
    )
    sns.scatterplot(others, x="tokens", y="score", hue="model", style="source", s=80, ax=axes[0],
                    palette=palette)  # fmt: skip
    _tokens_axis(axes[0], "tokens seen")
    axes[0].set_ylabel("commonsense average (%)")
    axes[0].legend(fontsize=7)
    humaneval = frame[frame["task"] == "humaneval"]
    sns.barplot(humaneval, y="model", x="score", hue="source", ax=axes[1], orient="h")
    axes[1].set_xlabel("HumanEval pass@1 (%)")
    axes[1].set_ylabel("")
    fig.tight_layout()
    return fig


def throughput(metrics: pd.DataFrame) -> plt.Figure:
    """Tokens per second and MFU of every stage. Needs columns stage, tokens_per_s, mfu."""
    _style()
    frame = metrics.groupby("stage", sort=False)[["tokens_per_s", "mfu"]].median().reset_index()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    colors = {"hue": "stage", "palette": stage_palette(frame["stage"]), "legend": False,
              "saturation": 1}  # fmt: skip
    sns.barplot(frame, y="stage", x="tokens_per_s", ax=axes[0], orient="h", **colors)
    axes[0].set_xlabel("tokens/s (median over steps)")
    if frame["mfu"].notna().any():
        sns.barplot(frame, y="stage", x="mfu", ax=axes[1], orient="h", **colors)
        axes[1].set_xlabel("MFU (median over steps)")
    else:
        axes[1].text(0.5, 0.5, "MFU not defined on CPU", ha="center", va="center")
        axes[1].set_axis_off()
    axes[0].set_ylabel("")
    axes[1].set_ylabel("")
    fig.tight_layout()
    return fig


def _benchmarks(run: Run) -> plt.Figure:
    ours = benchmark_table(run)
    paper = paper_commonsense()
    return benchmarks_vs_paper(ours, paper[paper["task"].isin(ours["task"])])


def _reference(run: Run) -> plt.Figure:
    ours = beside_ours(run.evals)
    tokens = {name: result.tokens for name, result in run.results.items()}
    frame = pd.DataFrame(
        {
            "model": "ours: " + ours["stage"],
            "tokens": ours["stage"].map(tokens),
            "task": ours["task"],
            "score": ours["ours"],
        }
    )
    return reference_rows(paper_reference(), frame)


FIGURES = {
    "loss": lambda run: loss_curves(run.metrics),
    "bits_per_byte": lambda run: validation_bits_per_byte(run.validation),
    "stage_contributions": lambda run: stage_contributions(stage_deltas(run)),
    "benchmarks": _benchmarks,
    "throughput": lambda run: throughput(run.metrics),
    "reference": _reference,
}


def draw(run: Run, name: str) -> Path:
    """Draw one of FIGURES for a run into RUN/figures/ (PNG + SVG); return the PNG."""
    if name not in FIGURES:
        raise ValueError(f"figure {name!r}: allowed: {', '.join(FIGURES)}")
    return save_figure(FIGURES[name](run), RunLayout(run.run_dir).figures / name)[0]


def run_palette(runs: Iterable[str]) -> dict[str, tuple]:
    """One colour per compared run, in the order given (the first is the baseline)."""
    runs = list(dict.fromkeys(runs))
    return dict(zip(runs, sns.color_palette("colorblind", len(runs)), strict=True))


def _run_lines(frame: pd.DataFrame, y: str, ax: plt.Axes, palette: dict, **style) -> None:
    """One line per (run, stage) against tokens, coloured by run, dashed by variant."""
    lines = frame.assign(line=frame["run"] + "/" + frame["stage"])
    dashes = sorted(set(frame["variant"]), key=lambda variant: (variant != "base", variant))
    sns.lineplot(lines, x="tokens", y=y, hue="run", palette=palette, units="line",
                 style="variant", style_order=dashes, estimator=None, ax=ax, **style)  # fmt: skip


def runs_loss_curves(metrics: pd.DataFrame, *, ema: float = 0.1) -> plt.Figure:
    """Training loss (raw and EMA, as in `loss_curves`) and learning rate of several runs
    against tokens, one colour per run (column run; the first run is the baseline, whose phases
    give the bands; one dash per variant). Needs columns run, tokens, loss, lr, stage, phase,
    variant."""
    _style()
    frame = metrics.sort_values(["run", "stage", "tokens"]).copy()
    frame["loss (EMA)"] = frame.groupby(["run", "stage"])["loss"].transform(lambda s: _ema(s, ema))
    palette = run_palette(metrics["run"])
    first = frame[frame["run"] == next(iter(palette))]
    fig, axes = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True, height_ratios=[3, 1])
    for ax in axes:
        _phase_bands(ax, first)
    _run_lines(frame, "loss", axes[0], palette, alpha=0.2, lw=0.8, legend=False)
    _run_lines(frame, "loss (EMA)", axes[0], palette)
    axes[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    axes[0].set_ylabel("training loss (nats/token)")
    _run_lines(frame, "lr", axes[1], palette, legend=False)
    axes[1].set_ylabel("learning rate")
    _tokens_axis(axes[1], "tokens seen (all stages)")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    _phase_legend(fig, first)
    return fig


def runs_bits_per_byte(validation: pd.DataFrame) -> plt.Figure:
    """Held-out bits per byte of every domain through the stages of several runs, one panel per
    domain, one colour per run, one dash per variant (the first run's phases give the bands).
    Needs columns run, tokens, domain, bpb, stage, phase, variant."""
    _style()
    domains = sorted(validation["domain"].unique())
    palette = run_palette(validation["run"])
    first = validation[validation["run"] == next(iter(palette))]
    fig, axes = plt.subplots(
        1, len(domains), figsize=(3.2 * len(domains), 3.6), sharex=True, squeeze=False
    )
    for ax, domain in zip(axes[0], domains, strict=True):
        part = validation[validation["domain"] == domain].sort_values("tokens")
        if domain in set(first["domain"]):
            _phase_bands(ax, first[first["domain"] == domain])
        _run_lines(part, "bpb", ax, palette, marker="o", ms=3, legend=ax is axes[0][-1])
        if ax is axes[0][-1]:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
        ax.set_title(domain, pad=4)
        ax.set_ylabel("bits per byte" if ax is axes[0][0] else "")
        _tokens_axis(ax, "tokens seen")
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    _phase_legend(fig, first)
    return fig
