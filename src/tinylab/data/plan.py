"""What preparing a data params file costs before it runs: tokens per source, the disk its shards
take and the wall time on N cores at a measured tokens/s per core (bench/data_throughput.py).

Tokens come from each hub source's `approx_tokens` (its dataset card); other sources are
unknown until prepared. Preparation is dealt out by files (tinylab.data.pack), so the wall time
is the tokens over the cores' rate (the reading of the hub is assumed to keep up, and one file,
which a task cannot split, to be small beside the whole).

    table = preparation_plan(cfg, cores=128, tokens_per_core_s=750_000)
"""

from __future__ import annotations

import pandas as pd

from tinylab.config.data import DataConfig, HubSource

DEFAULT_BYTES_PER_TOKEN = 2  # uint16: every vocabulary up to 65,536 (the Llama-2 one: 32,000)


def preparation_plan(
    cfg: DataConfig,
    *,
    cores: int,
    tokens_per_core_s: float,
    bytes_per_token: int = DEFAULT_BYTES_PER_TOKEN,
) -> pd.DataFrame:
    """One row per source and a total: tokens, disk (GB), core-hours and hours on `cores`."""
    rows = []
    for name, source in cfg.sources.items():
        tokens = source.approx_tokens if isinstance(source, HubSource) else None
        rows.append({"source": name, "domain": source.domain, "tokens": tokens})
    frame = pd.DataFrame(rows)
    total = frame["tokens"].sum(min_count=1)
    frame = pd.concat(
        [frame, pd.DataFrame([{"source": "total", "domain": "", "tokens": total}])],
        ignore_index=True,
    )
    frame["disk GB"] = frame["tokens"] * bytes_per_token / 1e9
    frame["core-hours"] = frame["tokens"] / tokens_per_core_s / 3600
    frame[f"hours on {cores} cores"] = frame["core-hours"] / cores
    return frame


def format_plan(frame: pd.DataFrame, *, cores: int, tokens_per_core_s: float) -> str:
    """The plan as text, with the rate it assumes and what is unknown."""
    shown = frame.copy()
    shown["tokens"] = shown["tokens"].map(lambda t: "unknown" if pd.isna(t) else f"{t / 1e9:,.1f}B")
    for column in shown.columns[3:]:
        shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else f"{v:,.1f}")
    lines = [shown.to_string(index=False)]
    lines.append(f"at {tokens_per_core_s:,.0f} tokens/s per core on {cores} cores")
    if frame["tokens"].isna().any():
        lines.append("unknown: sources without approx_tokens (hub only) are not counted")
    return "\n".join(lines)
