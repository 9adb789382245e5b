"""Sources: turn one `sources:` entry of a data params file into a stream of document strings.

Three kinds, all yielding plain `str` documents in a fixed order (so tokenization is
reproducible): `hub` dataset repositories, whose files (`data_files` globs minus `exclude_files`)
are read directly over `hf://` with fsspec (jsonl, .jsonl.zst through `zstandard`, parquet), never
through a loading script, keeping only the text and the `exclude` fields (so subsets whose other
columns differ, Proof-Pile-2's `meta`, StarCoderData's special folders, never meet in one table);
`local` files (txt = one document per file, jsonl, parquet; globs; relative paths resolve against
the project root) and the built-in `demo` corpora (tinylab.data.demo_corpora).

Units of work: a hub source without caps is one unit per file (tinylab.data.pack deals units to
tasks, so a failed file redoes only itself); every other source is one unit, read in order.
`hub_root` redirects a hub source to a local folder with the same relative paths (a mirror).

    from tinylab.data.sources import iter_documents
    for doc in iter_documents(cfg.sources["english"]): ...
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterable, Iterator
from fnmatch import fnmatch
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
        docs = (d for url in hub_files(source, name) for d in hub_file_documents(source, url, name))
    elif isinstance(source, DemoSource):
        from tinylab.data.demo_corpora import demo_documents

        docs = demo_documents(source.corpus)
    else:
        kind = getattr(source, "kind", type(source).__name__)
        raise DataError(f"sources.{name}: unknown source kind {kind!r}; use hub, local or demo")
    return _capped(docs, max_documents=source.max_documents, max_bytes=source.max_bytes)


def source_units(source: Any, *, name: str) -> list[str | None]:
    """The units of work of a source: its files for an uncapped hub source, else [None] (the
    whole source, read in order by one process)."""
    if isinstance(source, HubSource) and not (source.max_documents or source.max_bytes):
        return list(hub_files(source, name))
    return [None]


def unit_documents(source: Any, unit: str | None, *, name: str) -> Iterator[str]:
    """Documents of one unit (see source_units): one hub file, or the whole source."""
    if unit is None:
        return iter_documents(source, name=name)
    return _capped(hub_file_documents(source, unit, name), max_documents=None, max_bytes=None)


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
    modification times, for hub sources their file list, and for demo corpora their version (a
    change means re-tokenizing);
    `name` is the source's key under `sources:`, for error messages."""
    signature: dict[str, Any] = {"params": source.model_dump(mode="json")}
    if isinstance(source, LocalSource):
        files = local_files(source, name)
        signature["files"] = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    elif isinstance(source, HubSource):
        signature["files"] = hub_files(source, name)
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
# Hugging Face hub: the repository's files, read directly

# The gated-access message, the one way to fix it (datasets under terms need a logged-in account
# that accepted them).
GATED_HINT = (
    "accept its terms at https://huggingface.co/datasets/{path}, then log in with "
    "`hf auth login` (or set HF_TOKEN) on every machine that prepares data"
)


def hub_repo_url(source: HubSource) -> str:
    """The repository's root as an fsspec URL: hf://datasets/<id>[@rev], or the mirror folder."""
    root = source.hub_root.rstrip("/")
    if "://" not in root:
        return str(project_path(root) / source.path)
    revision = f"@{source.revision}" if source.revision else ""
    return f"{root}/{source.path}{revision}"


def hub_files(source: HubSource, name: str) -> list[str]:
    """URLs of the files `data_files` selects, minus `exclude_files`, sorted by relative path;
    a DataError naming the source for a gated, missing or unreadable repository and for a
    pattern that matches nothing."""
    import fsspec

    root = hub_repo_url(source)
    try:
        fs, base = fsspec.core.url_to_fs(root)
        files: dict[str, str] = {}
        for pattern in source.data_files:
            matched = [p for p in fs.glob(f"{base}/{pattern}") if fs.isfile(p)]
            if not matched:
                raise DataError(f"sources.{name}.data_files: {pattern!r} matches no file in {root}")
            for full in matched:
                relative = full[len(base.rstrip("/")) + 1 :]
                if not any(fnmatch(relative, skip) for skip in source.exclude_files):
                    files[relative] = full
    except DataError:
        raise
    except Exception as err:  # fsspec and huggingface_hub raise many types
        raise hub_error(err, source, name) from err
    protocol = root.split("://")[0] + "://" if "://" in root else ""
    return [protocol + files[relative] for relative in sorted(files)]


def hub_error(
    err: BaseException, source: HubSource, name: str, *, url: str | None = None
) -> DataError:
    """One line for a hub failure (of the repository, or of its file `url`): gated (how to get
    access), missing, or anything else."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    where = f"sources.{name} ({source.path})"
    chain: list[BaseException] = []
    cause: BaseException | None = err
    while cause is not None and len(chain) < 10:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    status = {getattr(getattr(c, "response", None), "status_code", None) for c in chain}
    if any(isinstance(c, GatedRepoError) for c in chain) or status & {401, 403}:
        return DataError(f"{where}: the dataset is gated: {GATED_HINT.format(path=source.path)}")
    if any(isinstance(c, RepositoryNotFoundError) for c in chain):
        return DataError(
            f"{where}: repository not found at {hub_repo_url(source)} (or gated: "
            f"{GATED_HINT.format(path=source.path)})"
        )
    return DataError(
        f"{where}: cannot read {url or hub_repo_url(source)}: {type(err).__name__}: {err}. "
        "Without hub access, copy the files into a folder with the same relative paths and set "
        "hub_root"
    )


def hub_file_documents(source: HubSource, url: str, name: str) -> Iterator[str]:
    """Documents of one repository file, excluded records dropped."""
    where = f"sources.{name}: {url}"
    fmt = source.format if source.format != "auto" else _hub_format(url)
    if fmt is None:
        raise DataError(f"{where}: cannot tell the format from the name; set format")
    try:
        rows = _parquet_rows(url, source, where) if fmt == "parquet" else _jsonl_rows(url, where)
        for number, row in enumerate(rows):
            here = f"{where} record {number}"
            if not _excluded(row, source.exclude, where=here):
                yield text_of(row, source.text_field, where=here)
    except DataError:
        raise
    except Exception as err:
        raise hub_error(err, source, name, url=url) from err


def _hub_format(url: str) -> str | None:
    stem = url.removesuffix(".zst").removesuffix(".gz")
    return {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}.get(Path(stem).suffix)


def _jsonl_rows(url: str, where: str) -> Iterator[dict[str, Any]]:
    """Records of a JSON-lines file (.zst and .gz by suffix)."""
    for number, line in enumerate(_lines(url, where), start=1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}:{number}: not JSON ({err})") from None


def _lines(url: str, where: str) -> Iterator[str]:
    """Text lines of a file; zstd through `zstandard` with a check that the last frame ends
    (a truncated download would otherwise end early without a word)."""
    import fsspec

    if not url.endswith(".zst"):
        with fsspec.open(url, "rt", encoding="utf-8", compression="infer") as text:
            yield from text
        return
    with fsspec.open(url, "rb") as raw:
        rest = b""
        for chunk in _zstd_chunks(raw, where):
            *lines, rest = (rest + chunk).split(b"\n")
            yield from (line.decode("utf-8") for line in lines)
        if rest:
            yield rest.decode("utf-8")


def _zstd_chunks(raw: Any, where: str) -> Iterator[bytes]:
    """Decompressed bytes of a zstd file of one or more frames; a DataError if it ends inside
    a frame."""
    import zstandard

    context = zstandard.ZstdDecompressor()
    frame, in_frame = context.decompressobj(), False
    while data := raw.read(1 << 20):
        while data:
            in_frame = True
            yield frame.decompress(data)
            if not frame.eof:
                break
            data, frame, in_frame = frame.unused_data, context.decompressobj(), False
    if in_frame:
        raise DataError(
            f"{where}: the zstd data ends inside a frame (a truncated file?); fetch it again"
        )


def _parquet_rows(url: str, source: HubSource, where: str) -> Iterator[dict[str, Any]]:
    """Records of a parquet file, only the columns we use: the text and the excluded fields
    (so folders whose other columns differ read alike)."""
    import fsspec
    import pyarrow.parquet as pq

    wanted = [source.text_field, *(dotted.split(".")[0] for dotted in source.exclude)]
    with fsspec.open(url, "rb") as handle:
        parquet = pq.ParquetFile(handle)
        columns = parquet.schema_arrow.names
        missing = [c for c in wanted if c not in columns]
        if missing:
            raise DataError(f"{where}: no column {missing}; the file has columns {columns}")
        for batch in parquet.iter_batches(columns=list(dict.fromkeys(wanted)), batch_size=1024):
            yield from batch.to_pylist()


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
