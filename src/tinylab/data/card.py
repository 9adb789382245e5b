"""The data card: a Markdown file in the run's data folder saying what each source is, where
it came from, its licence and how many tokens it gave. Written by `prepare`; the report embeds it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tinylab.config.data import DataConfig, DemoSource, HubSource, LocalSource
from tinylab.files import write_atomic

CARD_FILE = "data_card.md"


def source_origin(source: Any) -> tuple[str, str]:
    """(where the text comes from, its licence) for one source."""
    if isinstance(source, DemoSource):
        from tinylab.data.demo_corpora import CORPORA

        corpus = CORPORA[source.corpus]
        return corpus.origin, corpus.licence
    if isinstance(source, HubSource):
        files = ", ".join(f"`{pattern}`" for pattern in source.data_files)
        where = f"hub dataset `{source.path}`, files {files}"
        return where, "see the dataset card on the Hugging Face hub"
    if isinstance(source, LocalSource):
        return "local files " + ", ".join(f"`{p}`" for p in source.paths), "as given by the owner"
    return "unknown", "unknown"


def render_data_card(cfg: DataConfig, index: dict[str, Any]) -> str:
    """The card's Markdown text."""
    lines = [
        "# Data card",
        "",
        f"Tokenizer sha256 `{index['tokenizer_sha256']}`, vocab {index['vocab_size']:,}, "
        f"{index['dtype']} shards; windows of {index['window_tokens']} tokens; "
        f"BOS id {index['bos_id']}, EOS id {index['eos_id']} around every document; "
        f"{index['validation_fraction']:.2%} of documents held out (by a hash of their text).",
        "",
        "| source | domain | origin | licence | documents | train tokens | val tokens |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, source in cfg.sources.items():
        origin, licence = source_origin(source)
        splits = index["sources"][name]["splits"]
        docs = splits["train"]["documents"] + splits["val"]["documents"]
        lines.append(
            f"| {name} | {source.domain} | {origin} | {licence} | {docs:,} | "
            f"{splits['train']['tokens']:,} | {splits['val']['tokens']:,} |"
        )
    return "\n".join(lines) + "\n"


def write_data_card(cfg: DataConfig, data_dir: Path, index: dict[str, Any]) -> Path:
    """Write data_card.md into `data_dir` (atomically)."""
    path = Path(data_dir) / CARD_FILE
    write_atomic(path, render_data_card(cfg, index).encode("utf-8"))
    return path
