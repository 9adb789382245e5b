"""Tokenize + pack: documents -> token ids -> fixed windows of seq_len + 1 tokens in binary
shards, with a JSON index (`prepare`); tinylab.data.packed reads them back (`PackedData`).

Layout of a data folder (`<run>/data/`):

    tokenizer/                 transformers folder (AutoTokenizer loads it); sha256 in the index
    shards/<source>-<split>-00000.bin   windows * (seq_len + 1) tokens, uint16 or uint32
    index.json                 dtype, seq_len, BOS/EOS policy, tokenizer hash, per source and
                               split: documents, tokens, windows, bytes, shards with sha256
    data_card.md               what each source is and its licence

Policy (docs/PAPER.md: "documents joined with separator tokens, no cross-document attention
mask"; the reference code changed its BOS/EOS convention mid-run): each document becomes
`[<s>] ids [</s>]` as `add_bos` / `add_eos` say, documents are concatenated in order and cut
into non-overlapping windows of seq_len + 1 tokens (input = w[:-1], target = w[1:]); the tail
that does not fill a window is dropped and counted, never padded. Each document goes to the
validation split when a keyed hash of its text falls below `validation_fraction`, so train and
validation windows never share a document, and the split does not depend on order or workers.

Trade-off: documents are read in order by one process and tokenized by a pool of processes
(`imap`, order kept), so shards are byte-identical across reruns and worker counts; a rerun
reuses a source whose index entry and shard checksums match, and rewrites only the shards
whose bytes differ (missing, partial or corrupt). Every file is written to a temporary name
and renamed.

    tinylab prepare params/data/demo.yaml --out outputs/runs/demo/data
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from collections.abc import Iterable, Iterator
from itertools import chain, islice
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from tinylab.config.data import DataConfig
from tinylab.config.loader import load_config, project_path
from tinylab.data import tokenizer as toks
from tinylab.data.card import write_data_card
from tinylab.data.errors import DataError
from tinylab.data.packed import (
    FORMAT_VERSION,
    SHARDS_DIR,
    SPLITS,
    TOKENIZER_DIR,
    PackedData,
)
from tinylab.data.sources import iter_documents, source_signature
from tinylab.files import (
    json_digest,
    remove_orphans,
    replace_dir_atomic,
    sha256_file,
    write_atomic,
    write_json_atomic,
)
from tinylab.layout import INDEX_FILE, RunLayout

RECIPE_FILE = "tinylab_recipe.json"  # how the tokenizer was made (reuse check)
BATCH_DOCUMENTS = 256  # documents per task sent to a tokenizer process
LENGTH_SAMPLE = 10_000  # document lengths kept per source for plots


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab <= 65,536), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def is_validation(text: str, *, seed: int, fraction: float) -> bool:
    """Keyed hash of the document text -> [0, 1) < fraction: the held-out split."""
    key = seed.to_bytes(8, "little", signed=True)
    value = hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=key).digest()
    return int.from_bytes(value, "little") / 2**64 < fraction


# --------------------------------------------------------------------------------------------
# prepare


def prepare(cfg: DataConfig, data_dir: Path, *, progress: bool = True) -> PackedData:
    """Tokenizer, shards, index and data card in `data_dir`; idempotent (see module docstring).

    A failure leaves what was there usable: a new tokenizer waits in a staging folder
    (files.replace_dir_atomic) and new shards get new names (their source fingerprint) until the
    new index replaces the old one."""
    data_dir = Path(data_dir)
    _make_writable_folder(data_dir)
    recipe = tokenizer_recipe(cfg)
    if tokenizer_matches(data_dir / TOKENIZER_DIR, recipe):
        index = _pack_all(cfg, data_dir, data_dir / TOKENIZER_DIR, progress=progress)
    else:
        with replace_dir_atomic(data_dir / TOKENIZER_DIR) as staging:
            make_tokenizer(cfg, staging, recipe, progress=progress)
            index = _pack_all(cfg, data_dir, staging, progress=progress)
    write_json_atomic(data_dir / INDEX_FILE, index)
    _remove_stale_shards(data_dir, index)
    write_data_card(cfg, data_dir, index)
    return PackedData.open(data_dir)


def _make_writable_folder(data_dir: Path) -> None:
    """Create `data_dir` and clear what killed runs left in it (temporary files and staging
    folders of processes that are gone); a DataError when the folder cannot be written."""
    try:
        (data_dir / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
        probe = data_dir / f".probe.tmp-{os.getpid()}"
        probe.touch()
        probe.unlink()
        remove_orphans(data_dir)
        remove_orphans(data_dir / SHARDS_DIR)
    except OSError as err:
        raise DataError(
            f"{data_dir}: cannot write the data folder ({err.strerror}); make it writable or "
            "give another --out"
        ) from None


def prepare_run(
    data_params: str | Path,
    run_dir: str | Path,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    progress: bool = True,
) -> PackedData:
    """`prepare` a data params file into <run_dir>/data; relative paths resolve against the
    project root (so notebooks run from any working directory)."""
    cfg = load_config(project_path(data_params), DataConfig, overrides=list(overrides))
    return prepare(cfg, RunLayout(project_path(run_dir)).data, progress=progress)


def _pack_all(cfg: DataConfig, data_dir: Path, tok_dir: Path, *, progress: bool) -> dict:
    """Pack every source (reusing valid ones); returns the new index."""
    policy = _policy(cfg, tok_dir)
    old = _read_old_index(data_dir)
    entries = {}
    with _Encoder(tok_dir, policy, cfg.num_workers) as encoder:
        for name, source in cfg.sources.items():
            fingerprint = json_digest([FORMAT_VERSION, policy, source_signature(source, name=name)])
            entry = old.get(name)
            if entry and entry["fingerprint"] == fingerprint and _entry_valid(data_dir, entry):
                entries[name] = entry
                continue
            entries[name] = _pack_source(
                name, source, data_dir, encoder, policy, fingerprint, progress=progress
            )
    return {"format_version": FORMAT_VERSION, **policy, "sources": entries}


def tokenizer_recipe(cfg: DataConfig) -> dict[str, Any]:
    """What makes the tokenizer (its params; for a trained one also the sources and the split),
    with its digest: a tokenizer folder is reused when its recorded digest matches."""
    recipe: dict[str, Any] = {"tokenizer": cfg.tokenizer.model_dump(mode="json")}
    if cfg.tokenizer.kind == "train":
        recipe["sources"] = {n: source_signature(s, name=n) for n, s in cfg.sources.items()}
        recipe["split"] = [cfg.seed, cfg.validation_fraction]
    return {"digest": json_digest(recipe), **recipe}


def tokenizer_matches(folder: Path, recipe: dict[str, Any]) -> bool:
    """True when `folder` holds a tokenizer made by `recipe`."""
    try:
        made = json.loads((folder / RECIPE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (folder / toks.TOKENIZER_FILE).is_file() and made.get("digest") == recipe["digest"]


def make_tokenizer(
    cfg: DataConfig, folder: Path, recipe: dict[str, Any], *, progress: bool = True
) -> None:
    """A new tokenizer in the empty `folder`: trained on the training split of the sources, or
    copied from the hub or a folder; its recipe recorded beside it."""
    if cfg.tokenizer.kind == "train":
        texts = _tokenizer_training_texts(cfg, progress=progress)
        toks.save_trained(toks.train_tokenizer(texts, vocab_size=cfg.tokenizer.vocab_size), folder)
    else:
        toks.fetch_pretrained(cfg.tokenizer, folder)
    write_json_atomic(folder / RECIPE_FILE, recipe)


def _tokenizer_training_texts(cfg: DataConfig, *, progress: bool) -> Iterator[str]:
    """Training-split documents of every source, up to train_bytes_per_source each."""
    budget = cfg.tokenizer.train_bytes_per_source
    for name, source in cfg.sources.items():
        size = 0
        docs = iter_documents(source, name=name)
        for doc in tqdm(docs, desc=f"tokenizer text {name}", unit="doc", disable=not progress):
            if is_validation(doc, seed=cfg.seed, fraction=cfg.validation_fraction):
                continue
            yield doc
            size += len(doc.encode("utf-8"))
            if size >= budget:
                break


def _policy(cfg: DataConfig, tok_dir: Path) -> dict[str, Any]:
    """Everything that decides the bytes of a shard, recorded in the index."""
    ids = toks.special_ids(tok_dir)
    for flag, key in ((cfg.add_bos, "bos"), (cfg.add_eos, "eos")):
        if flag and ids[key] is None:
            raise DataError(
                f"add_{key} = true but the tokenizer ({cfg.tokenizer.name_or_path or 'trained'}) "
                f"declares no {key}_token; set add_{key}: false or use another tokenizer"
            )
    vocab_size = toks.load_fast(tok_dir).get_vocab_size(with_added_tokens=True)
    return {
        "seq_len": cfg.seq_len,
        "window_tokens": cfg.seq_len + 1,
        "dtype": token_dtype(vocab_size).name,
        "vocab_size": vocab_size,
        "tokenizer_sha256": toks.tokenizer_hash(tok_dir),
        "bos_id": ids["bos"] if cfg.add_bos else None,
        "eos_id": ids["eos"] if cfg.add_eos else None,
        "validation_fraction": cfg.validation_fraction,
        "split_seed": cfg.seed,
        "windows_per_shard": max(1, cfg.shard_tokens // (cfg.seq_len + 1)),
    }


# --------------------------------------------------------------------------------------------
# encoding in a pool of processes

_WORKER: dict[str, Any] = {}


def _init_worker(tok_dir: str, policy: dict[str, Any]) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process = one core
    _WORKER["tok"] = toks.load_fast(Path(tok_dir))
    _WORKER["policy"] = policy


def encode_documents(docs: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """One batch: per split, (concatenated ids as uint32, token length per document, UTF-8
    bytes). Runs in a pool process initialised by `_init_worker`."""
    tok, policy = _WORKER["tok"], _WORKER["policy"]
    seed, fraction = policy["split_seed"], policy["validation_fraction"]
    groups: dict[str, list[str]] = {split: [] for split in SPLITS}
    for doc in docs:
        groups["val" if is_validation(doc, seed=seed, fraction=fraction) else "train"].append(doc)
    out = {}
    for split, texts in groups.items():
        ids = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
        flat, lengths = _with_specials(ids, bos=policy["bos_id"], eos=policy["eos_id"])
        out[split] = (flat, lengths, sum(len(t.encode("utf-8")) for t in texts))
    return out


def _with_specials(
    ids: list[list[int]], *, bos: int | None, eos: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate documents' ids as uint32 with BOS/EOS around each; also per-doc lengths."""
    body_lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    body = np.fromiter(chain.from_iterable(ids), dtype=np.uint32, count=int(body_lengths.sum()))
    lengths = body_lengths + (bos is not None) + (eos is not None)
    if bos is None and eos is None:
        return body, lengths
    flat = np.empty(int(lengths.sum()), dtype=np.uint32)
    starts = np.cumsum(lengths) - lengths
    is_body = np.ones(len(flat), dtype=bool)
    if bos is not None:
        flat[starts], is_body[starts] = bos, False
    if eos is not None:
        flat[starts + lengths - 1], is_body[starts + lengths - 1] = eos, False
    flat[is_body] = body
    return flat, lengths


class _Encoder:
    """A pool of tokenizer processes (or the calling process when num_workers is 1)."""

    def __init__(self, tok_dir: Path, policy: dict[str, Any], num_workers: int | None):
        self.num_workers = num_workers or os.cpu_count() or 1
        self.args = (str(tok_dir), policy)
        self.pool = None

    def __enter__(self) -> _Encoder:
        if self.num_workers > 1:
            # fork: works from notebooks and `python -`; workers load their own tokenizer and
            # run single-threaded, so the parent's Rust thread pool is never used after fork
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            context = multiprocessing.get_context(method)
            self.pool = context.Pool(self.num_workers, _init_worker, self.args)
        else:
            _init_worker(*self.args)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()

    def map(self, batches: Iterable[list[str]]) -> Iterator[dict]:
        if self.pool is None:
            return map(encode_documents, batches)
        return self.pool.imap(encode_documents, batches, chunksize=1)


def _batches(docs: Iterable[str], size: int) -> Iterator[list[str]]:
    docs = iter(docs)
    while batch := list(islice(docs, size)):
        yield batch


# --------------------------------------------------------------------------------------------
# shards


class _ShardWriter:
    """Cuts a token stream of one (source, split) into windows and shards; a shard whose file
    already holds the same bytes is left untouched."""

    def __init__(self, data_dir: Path, prefix: str, policy: dict[str, Any]):
        self.data_dir, self.prefix = data_dir, prefix
        self.window = policy["window_tokens"]
        self.shard_tokens = policy["windows_per_shard"] * self.window
        self.dtype = np.dtype(policy["dtype"])
        self.pending: list[np.ndarray] = []
        self.num_pending = 0
        self.shards: list[dict[str, Any]] = []
        self.stats = {"documents": 0, "tokens": 0, "bytes": 0}
        self.lengths: list[int] = []

    def add(self, ids: np.ndarray, lengths: np.ndarray, num_bytes: int) -> None:
        self.stats["documents"] += len(lengths)
        self.stats["tokens"] += int(lengths.sum())
        self.stats["bytes"] += num_bytes
        self.lengths.extend(lengths[: LENGTH_SAMPLE - len(self.lengths)].tolist())
        self.pending.append(ids)
        self.num_pending += len(ids)
        while self.num_pending >= self.shard_tokens:
            self._emit(self.shard_tokens)

    def close(self) -> dict[str, Any]:
        whole = self.num_pending - self.num_pending % self.window
        if whole:
            self._emit(whole)
        windows = sum(s["windows"] for s in self.shards)
        return {
            **self.stats,
            "windows": windows,
            "dropped_tokens": self.stats["tokens"] - windows * self.window,
            "shards": self.shards,
        }

    def _emit(self, num_tokens: int) -> None:
        flat = np.concatenate(self.pending)
        data = flat[:num_tokens].astype(self.dtype).tobytes()
        rest = flat[num_tokens:]
        self.pending, self.num_pending = [rest], len(rest)
        name = f"{self.prefix}-{len(self.shards):05d}.bin"
        sha = hashlib.sha256(data).hexdigest()
        path = self.data_dir / SHARDS_DIR / name
        if not (path.is_file() and path.stat().st_size == len(data) and sha256_file(path) == sha):
            write_atomic(path, data)
        self.shards.append({"file": name, "windows": num_tokens // self.window, "sha256": sha})


def _pack_source(
    name: str,
    source: Any,
    data_dir: Path,
    encoder: _Encoder,
    policy: dict[str, Any],
    fingerprint: str,
    *,
    progress: bool,
) -> dict[str, Any]:
    """Tokenize and pack one source into its train and val shards."""
    writers = {
        split: _ShardWriter(data_dir, f"{name}-{split}-{fingerprint[:10]}", policy)
        for split in SPLITS
    }
    docs = iter_documents(source, name=name)
    bar = tqdm(desc=f"pack {name}", unit="tok", unit_scale=True, disable=not progress)
    with bar:
        for result in encoder.map(_batches(docs, BATCH_DOCUMENTS)):
            for split, (ids, lengths, num_bytes) in result.items():
                writers[split].add(ids, lengths, num_bytes)
                bar.update(len(ids))
    splits = {split: writer.close() for split, writer in writers.items()}
    if splits["train"]["documents"] + splits["val"]["documents"] == 0:
        raise DataError(f"sources.{name}: empty corpus: no non-empty document was read")
    lengths = writers["train"].lengths + writers["val"].lengths
    return {
        "domain": source.domain,
        "kind": source.kind,
        "fingerprint": fingerprint,
        "splits": splits,
        "document_tokens_sample": lengths[:LENGTH_SAMPLE],
    }


def _entry_valid(data_dir: Path, entry: dict[str, Any]) -> bool:
    return all(
        _shard_valid(data_dir / SHARDS_DIR / shard["file"], shard["sha256"])
        for split in entry["splits"].values()
        for shard in split["shards"]
    )


def _shard_valid(path: Path, sha: str) -> bool:
    return path.is_file() and sha256_file(path) == sha


def _read_old_index(data_dir: Path) -> dict[str, Any]:
    """Source entries of an existing index written by this format; {} when there is none."""
    path = data_dir / INDEX_FILE
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(index, dict) or index.get("format_version") != FORMAT_VERSION:
        return {}
    return index.get("sources") or {}


def _remove_stale_shards(data_dir: Path, index: dict[str, Any]) -> None:
    """Delete shard files (and temporaries) that the new index does not list."""
    listed = {
        shard["file"]
        for entry in index["sources"].values()
        for split in entry["splits"].values()
        for shard in split["shards"]
    }
    for path in (data_dir / SHARDS_DIR).glob("*"):
        if path.name not in listed:
            path.unlink()
