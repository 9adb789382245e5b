"""Sources: turn one `sources:` entry of a data params file into a stream of document strings.

Three kinds, all yielding plain `str` documents in a fixed order (so tokenization is
reproducible): `hub` datasets through `datasets.load_dataset` (streaming by default, with
`exclude` filters on dotted fields, e.g. SlimPajama without RedPajamaGithub), `local` files
(txt = one document per file, jsonl, parquet; globs; relative paths resolve against the project
root) and the built-in `demo` corpora (tinylab.data.demo_corpora). Trade-off: documents are read
in one process, in order, and tokenized in many; at full scale the reading is rarely the
bottleneck, and order is what makes a rerun rebuild byte-identical shards.

    from tinylab.data.sources import iter_documents
    for doc in iter_documents(cfg.sources["english"]): ...
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tinylab.config.data import DemoSource, HubSource, LocalSource
from tinylab.config.loader import project_path
from tinylab.data.errors import DataError

SUFFIX_FORMATS = {
    ".txt": "txt",
    ".md": "txt",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
}


def iter_documents(source: Any, *, name: str = "source") -> Iterator[str]:
    """Documents of one source, non-empty, capped by its max_documents / max_bytes."""
    if isinstance(source, LocalSource):
        docs = _local_documents(source, name)
    elif isinstance(source, HubSource):
        docs = _hub_documents(source, name)
    elif isinstance(source, DemoSource):
        from tinylab.data.demo_corpora import demo_documents

        docs = demo_documents(source.corpus)
    else:
        kind = getattr(source, "kind", type(source).__name__)
        raise DataError(f"sources.{name}: unknown source kind {kind!r}; use hub, local or demo")
    return _capped(docs, max_documents=source.max_documents, max_bytes=source.max_bytes)


def _capped(docs: Iterable[str], *, max_documents: int | None, max_bytes: int | None):
    count = size = 0
    for doc in docs:
        if not doc.strip():
            continue
        yield doc
        count += 1
        size += len(doc.encode("utf-8"))
        if (max_documents and count >= max_documents) or (max_bytes and size >= max_bytes):
            return


def source_signature(source: Any, *, name: str) -> dict[str, Any]:
    """What identifies a source's content: its params plus, for local files, their sizes and
    modification times, and for demo corpora their version (a change means re-tokenizing);
    `name` is the source's key under `sources:`, for error messages."""
    signature: dict[str, Any] = {"params": source.model_dump(mode="json")}
    if isinstance(source, LocalSource):
        files = local_files(source, name)
        signature["files"] = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    elif isinstance(source, DemoSource):
        from tinylab.data.demo_corpora import corpus_version

        signature["corpus_version"] = corpus_version(source.corpus)
    return signature


# --------------------------------------------------------------------------------------------
# local files


def local_files(source: LocalSource, name: str) -> list[Path]:
    """The files a local source names, globs expanded, in sorted order."""
    files: list[Path] = []
    for pattern in source.paths:
        full = str(project_path(pattern))
        matched = sorted(Path(p) for p in glob.glob(full, recursive=True) if Path(p).is_file())
        if not matched:
            raise DataError(f"sources.{name}.paths: {pattern!r} matches no file ({full})")
        files.extend(matched)
    return files


def _local_documents(source: LocalSource, name: str) -> Iterator[str]:
    for path in local_files(source, name):
        fmt = source.format if source.format != "auto" else SUFFIX_FORMATS.get(path.suffix)
        if fmt is None:
            raise DataError(
                f"sources.{name}: {path}: cannot tell the format from {path.suffix!r}; "
                f"set format: txt, jsonl or parquet"
            )
        if fmt == "txt":
            yield path.read_text(encoding="utf-8", errors="replace")
        elif fmt == "jsonl":
            yield from _jsonl_documents(path, source.text_field, name)
        else:
            yield from _parquet_documents(path, source.text_field, name)


def _jsonl_documents(path: Path, field: str, name: str) -> Iterator[str]:
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"sources.{name}: {path}:{number}: not JSON ({err})") from None
            yield text_of(row, field, where=f"sources.{name}: {path}:{number}")


def _parquet_documents(path: Path, field: str, name: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    columns = parquet.schema_arrow.names
    if field not in columns:
        raise DataError(
            f"sources.{name}: {path}: text_field {field!r} is not a column; columns: {columns}"
        )
    for batch in parquet.iter_batches(columns=[field], batch_size=1024):
        for number, text in enumerate(batch.column(0).to_pylist()):
            if not isinstance(text, str) and text is not None:
                raise DataError(
                    f"sources.{name}: {path}: row {number} {field} is {type(text).__name__}"
                )
            yield text or ""


def text_of(row: dict[str, Any], field: str, *, where: str) -> str:
    """The text field of one record, or a DataError naming the record and its keys."""
    if not isinstance(row, dict) or field not in row:
        keys = sorted(row) if isinstance(row, dict) else type(row).__name__
        raise DataError(f"{where}: text_field {field!r} missing; the record has {keys}")
    text = row[field]
    if not isinstance(text, str):
        raise DataError(f"{where}: {field} is {type(text).__name__}, expected a string")
    return text


# --------------------------------------------------------------------------------------------
# Hugging Face hub


def load_hub_dataset(source: HubSource, name: str) -> Iterable[dict[str, Any]]:
    """`datasets.load_dataset` with the source's id, config, files, revision and split."""
    import datasets

    try:
        return datasets.load_dataset(
            source.path,
            name=source.name,
            data_dir=source.data_dir,
            data_files=source.data_files,
            revision=source.revision,
            split=source.split,
            streaming=source.streaming,
        )
    except Exception as err:  # datasets raises many types (network, auth, missing config)
        raise DataError(
            f"sources.{name}: cannot load hub dataset {source.path!r} (name={source.name!r}, "
            f"split={source.split!r}): {type(err).__name__}: {err}. Without hub access, copy the "
            "files and use kind: local, or pass data_files"
        ) from err


def _hub_documents(source: HubSource, name: str) -> Iterator[str]:
    where = f"sources.{name} ({source.path})"
    for number, row in enumerate(load_hub_dataset(source, name)):
        if _excluded(row, source.exclude, where=f"{where} record {number}"):
            continue
        yield text_of(row, source.text_field, where=f"{where} record {number}")


def _excluded(row: dict[str, Any], exclude: dict[str, list[str]], *, where: str) -> bool:
    for dotted, values in exclude.items():
        value: Any = row
        for part in dotted.split("."):
            if not isinstance(value, dict) or part not in value:
                raise DataError(f"{where}: exclude field {dotted!r} not found in the record")
            value = value[part]
        if value in values:
            return True
    return False
