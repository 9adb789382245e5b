"""tinylab.analysis.summary: the report's opening sentences, made from a run's stage deltas."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from _analysis_fixtures import write_lineage_run

from tinylab.analysis import summary
from tinylab.analysis.runs import load_run, stage_deltas

COLUMNS = ["variant", "stage", "measure", "delta", "low", "high", "within_noise", "better"]


def test_sentences_come_from_a_synthetic_runs_numbers(tmp_path: Path) -> None:
    """The lineage run: each stage lowers code bpb by 0.5 on every window and gets 5 more of
    100 arc_easy items right (real changes); boolq's items swing but its mean does not move."""
    sentences = summary.findings(stage_deltas(load_run(write_lineage_run(tmp_path))))
    assert len(sentences) == 2
    continual, cooldown = sentences
    assert continual.startswith(
        "**continual-code**: code bits per byte fell by 0.500 (better; 95% interval -0.500 to "
        "-0.500, beyond noise); arc_easy rose by 5.0 points (better; 95% interval +1.0 to "
        "+10.0, beyond noise). "
    )
    assert continual.endswith(
        "2 of its 4 measured changes are beyond noise (1 without per-item data)."
    )  # english bpb has no windows; boolq is within noise
    assert cooldown.startswith("**cooldown-code**: code bits per byte fell by 0.500")


def test_a_large_change_within_noise_is_named_as_such() -> None:
    deltas = pd.DataFrame(
        [
            ("zh", "continual", "zh_sentiment", -0.15, -0.40, 0.10, True, "higher"),
            ("zh", "continual", "zh_poem", 0.05, 0.01, 0.09, False, "higher"),
            ("zh", "continual", "chinese bpb", 0.002, float("nan"), float("nan"), None, "lower"),
        ],
        columns=COLUMNS,
    )
    (sentence,) = summary.findings(deltas)
    assert sentence == (
        "**continual-zh**: chinese bits per byte rose by 0.002 (worse; no per-item data for an "
        "interval); zh_sentiment fell by 15.0 points (worse; 95% interval -40.0 to +10.0, "
        "within noise). 1 of its 3 measured changes is beyond noise (1 without per-item data)."
    )


def test_a_base_shared_by_variants_is_said_once_and_no_stage_says_so() -> None:
    rows = [
        (v, "base", "arc_easy", 0.1, 0.05, 0.15, False, "higher") for v in ("code", "zh")
    ]  # a released model's base: one base row per variant
    sentences = summary.findings(pd.DataFrame(rows, columns=COLUMNS))
    assert len(sentences) == 1 and sentences[0].startswith("**base**: arc_easy rose by 10.0")
    assert summary.markdown(pd.DataFrame(rows, columns=COLUMNS)).startswith("- **base**")
    (nothing,) = summary.findings(pd.DataFrame(columns=COLUMNS))
    assert "no stage effect is measured" in nothing
