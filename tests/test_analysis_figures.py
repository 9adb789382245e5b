"""tinylab.analysis.figures on small synthetic metrics: they draw, and bytes are deterministic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tinylab.analysis import figures
from tinylab.analysis.reference import AVERAGE, paper_commonsense, paper_reference

STAGES = [  # stage, phase, variant, first token, last token
    ("base", "base", "base", 0, 1000),
    ("continual-mathcode", "continual", "mathcode", 1000, 1500),
    ("continual-chinese", "continual", "chinese", 1000, 1500),
    ("cooldown-mathcode", "cooldown", "mathcode", 1500, 1800),
]


@pytest.fixture
def metrics() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for stage, phase, variant, start, stop in STAGES:
        for tokens in np.linspace(start, stop, 12):
            rows.append(
                {
                    "stage": stage,
                    "phase": phase,
                    "variant": variant,
                    "tokens": tokens,
                    "loss": 8 - tokens / 400 + rng.normal(0, 0.05),
                    "lr": 1e-3 * (1 - tokens / 2000),
                    "grad_norm": 1 + rng.random(),
                    "tokens_per_s": 5000 + rng.normal(0, 50),
                    "mfu": None,
                }
            )
    return pd.DataFrame(rows)


@pytest.fixture
def validation(metrics: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for domain in ("english", "code"):
        for _, row in metrics.iloc[::4].iterrows():
            rows.append(
                {
                    **row[["stage", "phase", "variant", "tokens"]],
                    "domain": domain,
                    "bpb": 3 - row["tokens"] / 1000,
                }
            )
    return pd.DataFrame(rows)


def test_figures_draw_and_save_deterministically(metrics, validation, tmp_path: Path) -> None:
    columns = ["variant", "stage", "measure", "delta", "better"]
    deltas = pd.DataFrame(
        [
            ("mathcode", "continual", "code bpb", -0.2, "lower"),
            ("mathcode", "continual", "arc_easy", 0.01, "higher"),
            ("mathcode", "cooldown", "code bpb", -0.05, "lower"),
            ("mathcode", "cooldown", "arc_easy", -0.02, "higher"),
        ],
        columns=columns,
    )
    ours = pd.DataFrame(
        [
            {"model": "demo base", "task": "arc_easy", "score": 30.0, "chance": 25.0},
            {"model": "demo base", "task": "boolq", "score": 52.0, "chance": 50.0},
        ]
    )
    paper = paper_commonsense()
    paper = paper[paper["task"].isin(["arc_easy", "boolq"])]
    ours_reference = pd.DataFrame(
        [{"model": "ours: cooldown-mathcode", "tokens": 2e12, "task": t, "score": s}
         for t, s in ((AVERAGE, 50.0), ("humaneval", 12.0))]
    )  # fmt: skip
    drawings = {
        "loss": lambda: figures.loss_curves(metrics),
        "bpb": lambda: figures.validation_bits_per_byte(validation),
        "contrib": lambda: figures.stage_contributions(deltas),
        "bench": lambda: figures.benchmarks_vs_paper(ours, paper),
        "speed": lambda: figures.throughput(metrics),
        "reference": lambda: figures.reference_rows(paper_reference(), ours_reference),
    }
    for name, draw in drawings.items():
        first = figures.save_figure(draw(), tmp_path / "a" / name)
        second = figures.save_figure(draw(), tmp_path / "b" / name)
        for one, two in zip(first, second, strict=True):
            assert one.stat().st_size > 1000
            assert one.read_bytes() == two.read_bytes(), f"{one.name} differs between two saves"


def test_stage_contribution_sign_follows_better(tmp_path: Path) -> None:
    deltas = pd.DataFrame(
        [
            {"variant": "v", "stage": "s", "measure": "bpb", "delta": -1.0, "better": "lower"},
            {"variant": "v", "stage": "s", "measure": "acc", "delta": -1.0, "better": "higher"},
        ]
    )
    fig = figures.stage_contributions(deltas)
    heat = fig.axes[0]
    labels = [t.get_text() for t in heat.texts]
    assert labels == ["1.00", "-1.00"]  # lower bpb is an improvement, lower acc is not
    with_stderr = figures.stage_contributions(deltas.assign(stderr=[float("nan"), 0.5]))
    assert [t.get_text() for t in with_stderr.axes[0].texts] == ["1.00", "-1.00\n±0.50"]


def _legend_colors(ax) -> dict[str, tuple]:
    legend = ax.get_legend()
    handles = getattr(legend, "legend_handles", None) or legend.legendHandles
    return {
        text.get_text(): tuple(
            handle.get_color() if hasattr(handle, "get_xdata") else handle.get_facecolor()
        )[:3]
        for text, handle in zip(legend.get_texts(), handles, strict=True)
    }


def test_a_variant_has_one_colour_in_every_figure(metrics) -> None:
    import matplotlib.colors as mcolors

    def rgb(color) -> tuple:
        return tuple(round(c, 3) for c in mcolors.to_rgb(color))

    lines = {k: rgb(v) for k, v in _legend_colors(figures.loss_curves(metrics).axes[0]).items()}
    assert set(lines) == {"base", "mathcode", "chinese"}
    ours = pd.DataFrame(
        [{"model": f"ours: {s}", "task": "arc_easy", "score": 30.0, "chance": 25.0}
         for s in ("base", "continual-chinese", "cooldown-mathcode")]
    )  # fmt: skip
    paper = paper_commonsense()
    bars = _legend_colors(
        figures.benchmarks_vs_paper(ours, paper[paper["task"] == "arc_easy"]).axes[0]
    )
    assert rgb(bars["ours: base"]) == lines["base"]
    assert rgb(bars["ours: cooldown-mathcode"]) == lines["mathcode"]
    assert rgb(bars["ours: continual-chinese"]) != lines["chinese"]  # a lighter shade of it
    speed = figures.throughput(metrics).axes[0]
    by_stage = dict(
        zip([t.get_text() for t in speed.get_yticklabels()], speed.patches, strict=True)
    )
    assert rgb(by_stage["cooldown-mathcode"].get_facecolor()) == lines["mathcode"]


def test_phase_shading_has_no_gaps_and_is_named_once(metrics, validation) -> None:
    """A stage logs its first step after its parent's last: the shading still has no gap."""
    later = {"base": 0, "continual": 50, "cooldown": 100}
    metrics = metrics.assign(tokens=metrics["tokens"] + metrics["phase"].map(later))
    validation = validation.assign(tokens=validation["tokens"] + validation["phase"].map(later))
    for fig in (figures.loss_curves(metrics), figures.validation_bits_per_byte(validation)):
        spans = sorted(
            (p.get_x(), p.get_x() + p.get_width())
            for p in fig.axes[0].patches
            if p.get_zorder() == 0
        )
        assert [stop for _, stop in spans[:-1]] == [start for start, _ in spans[1:]]
        assert not fig.axes[0].texts  # no labels inside the panels
        assert [t.get_text() for t in fig.legends[0].get_texts()] == [
            "base",
            "continual",
            "cooldown",
        ]


def test_tokens_axes_count_with_separators_and_no_offset(metrics, validation) -> None:
    scale = {"tokens": metrics["tokens"] * 1000}  # up to 1.8M tokens
    for fig in (
        figures.loss_curves(metrics.assign(**scale)),
        figures.validation_bits_per_byte(validation.assign(tokens=validation["tokens"] * 100)),
    ):
        fig.canvas.draw()
        ax = fig.axes[-1] if len(fig.axes) == 3 else fig.axes[0]
        ticks = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
        assert any("," in t or t.endswith("M") for t in ticks), ticks
        assert ax.xaxis.get_offset_text().get_text() == ""  # no "1e6" above the axis


def test_stage_contributions_legend_names_stages() -> None:
    deltas = pd.DataFrame(
        [{"variant": "mathcode", "stage": p, "measure": "bpb", "delta": -1.0, "better": "lower"}
         for p in ("continual", "cooldown")]
    )  # fmt: skip
    legend = figures.stage_contributions(deltas).axes[1].get_legend()
    assert legend.get_title().get_text() == "stage"
    assert [t.get_text() for t in legend.get_texts()] == ["continual-mathcode", "cooldown-mathcode"]


def test_stage_contributions_show_intervals_and_grey_out_noise() -> None:
    """With intervals (runs.stage_deltas), a cell shows the gain and its 95% interval in gain
    sign (bounds swapped where lower is better); a change within noise is a grey cell of its
    own mesh and a pale bar."""
    deltas = pd.DataFrame(
        [
            {"variant": "v", "stage": "s", "measure": "bpb", "delta": -1.0, "low": -1.2,
             "high": -0.8, "within_noise": False, "better": "lower"},
            {"variant": "v", "stage": "s", "measure": "acc", "delta": 0.01, "low": -0.05,
             "high": 0.07, "within_noise": True, "better": "higher"},
        ]
    )  # fmt: skip
    fig = figures.stage_contributions(deltas)
    heat, bars = fig.axes[0], fig.axes[1]
    assert [t.get_text() for t in heat.texts] == ["1.00\n[0.80, 1.20]", "0.01\n[-0.05, 0.07]"]
    colored, grey = heat.collections[:2]
    assert list(colored.get_array().mask.ravel()) == [False, True]
    assert list(grey.get_array().mask.ravel()) == [True, False]
    assert "within noise" in heat.get_title()
    assert [p.get_alpha() for p in bars.patches] == [1.0, 0.35]


def test_stage_contributions_of_a_run_with_one_stage_say_so() -> None:
    """A run with only its first stage has no contributions: the figure says so (it once raised
    ZeroDivisionError in the report of such a run)."""
    columns = ["variant", "stage", "measure", "delta", "better", "low", "high", "within_noise"]
    fig = figures.stage_contributions(pd.DataFrame(columns=columns))
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == ["no stage with a scored parent stage: no contributions yet"]
