"""The report's opening summary: what each stage changed most, in sentences made from the numbers.

Reads the stage deltas (`runs.stage_deltas`: each stage's change in every score and domain bits
per byte against its parent, with its 95% paired-bootstrap interval) and writes, per stage, its
largest change of held-out bits per byte and its largest change of a benchmark score, each with
its interval and whether it is within noise, then how many of the stage's changes are beyond
noise. Nothing is written by hand: another run gives other sentences. "Largest" is the largest
absolute change, so a large change within noise is named as such rather than skipped.

    summary.findings(stage_deltas(load_run("outputs/runs/demo")))
"""

from __future__ import annotations

import pandas as pd

from tinylab.analysis.effects import BPB_SUFFIX, verdict


def findings(deltas: pd.DataFrame) -> list[str]:
    """One sentence per stage of the deltas (a stage shared by several variants, as the base,
    once), in their order; a single sentence saying so when there is nothing to compare."""
    if deltas.empty:
        return ["No stage of this run has an evaluated parent, so no stage effect is measured."]
    frame = deltas.assign(name=[_stage_name(r) for r in deltas.itertuples()])
    frame = frame.drop_duplicates(["name", "measure"])
    return [_stage_sentence(name, rows) for name, rows in frame.groupby("name", sort=False)]


def markdown(deltas: pd.DataFrame) -> str:
    """The findings as a Markdown list, for the report's first cell."""
    return "\n".join(f"- {sentence}" for sentence in findings(deltas))


def _stage_name(row) -> str:
    """The stage's own name: `base` (shared by every variant), else `<phase>-<variant>`."""
    return row.stage if row.stage == "base" else f"{row.stage}-{row.variant}"


def _stage_sentence(name: str, rows: pd.DataFrame) -> str:
    is_bpb = rows["measure"].str.endswith(BPB_SUFFIX)
    clauses = [_largest(rows[is_bpb]), _largest(rows[~is_bpb])]
    clauses = [c for c in clauses if c]
    return f"**{name}**: " + "; ".join(clauses) + ". " + _tally(rows)


def _largest(rows: pd.DataFrame) -> str | None:
    """The clause of the largest absolute change among `rows`, or None when there are none."""
    if rows.empty:
        return None
    row = rows.loc[rows["delta"].abs().idxmax()]
    bpb = row["measure"].endswith(BPB_SUFFIX)
    what = (f"{row['measure'].removesuffix(BPB_SUFFIX)} bits per byte" if bpb
            else f"{row['measure']}")  # fmt: skip
    if row["delta"] == 0:
        change = f"{what} did not change"
    else:
        change = f"{what} {'rose' if row['delta'] > 0 else 'fell'} by {_amount(row['delta'], bpb)}"
    notes = [] if row["delta"] == 0 else [_better(row)]
    if pd.isna(row["low"]):
        notes.append("no per-item data for an interval")
    else:
        interval = f"95% interval {_signed(row['low'], bpb)} to {_signed(row['high'], bpb)}"
        notes.append(f"{interval}, {verdict(bool(row['within_noise']))}")
    return f"{change} ({'; '.join(notes)})"


def _better(row: pd.Series) -> str:
    return "better" if (row["delta"] > 0) == (row["better"] == "higher") else "worse"


def _tally(rows: pd.DataFrame) -> str:
    known = rows["within_noise"].dropna()
    beyond = int((~known.astype(bool)).sum())
    verb = "is" if beyond == 1 else "are"
    text = f"{beyond} of its {len(rows)} measured changes {verb} beyond noise"
    missing = len(rows) - len(known)
    return text + (f" ({missing} without per-item data)." if missing else ".")


def _amount(value: float, bpb: bool) -> str:
    return f"{abs(value):.3f}" if bpb else f"{100 * abs(value):.1f} points"


def _signed(value: float, bpb: bool) -> str:
    return f"{value:+.3f}" if bpb else f"{100 * value:+.1f}"
