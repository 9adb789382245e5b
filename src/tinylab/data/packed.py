"""Reading prepared data: `PackedData` opens a data folder written by `tinylab.data.prepare`
(see tinylab/data/pack.py for the layout and the packing policy), checks it against its index,
and serves windows of seq_len + 1 token ids by (source, index, split).

Trade-off: `open` checks the tokenizer hash, every shard's size and every shard's sha256 against
the index; a shard's hash is computed once per state of its file and remembered in
`.verified.json` (keyed by size, mtime, ctime and inode; when the folder is read-only, in the
process), so at full scale the terabytes are read once, not at every start (the demo data, 13
MB of shards: 22 ms once, then 1 ms). `verify=True` re-hashes everything. Every window read is
range-checked against the vocabulary, so a shard corrupted after its check is named, not fed to
the model. Shards are memory-mapped on first use, so opening one in every rank costs nothing.

    data = PackedData.open(Path("outputs/runs/demo/data"))
    data.window("english", 0)          # (257,) int64
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from tinylab.data import tokenizer as toks
from tinylab.data.errors import DataError
from tinylab.files import sha256_file, write_json_atomic
from tinylab.layout import INDEX_FILE

FORMAT_VERSION = 1
SHARDS_DIR = "shards"
TOKENIZER_DIR = "tokenizer"
VERIFIED_FILE = ".verified.json"  # shard -> [size, mtime_ns, ctime_ns, inode, sha256] checked
SPLITS = ("train", "val")

_VERIFIED_HERE: set[tuple[str, tuple]] = set()  # (shard path, state) hashed by this process


class PackedData:
    """Read access to a prepared data folder: windows by (source, split, index).

    `open` checks the index against the files (tokenizer hash, every shard's size and sha256,
    each hash once per state of the file; `verify=True`: every hash again). Shards are
    memory-mapped on first use, so a PackedData is cheap to create in each rank.
    """

    def __init__(self, data_dir: Path, index: dict[str, Any]):
        self.data_dir = Path(data_dir)
        self.index = index
        self.seq_len: int = index["seq_len"]
        self.window_tokens: int = index["window_tokens"]
        self.dtype = np.dtype(index["dtype"])
        self.vocab_size: int = index["vocab_size"]
        self.tokenizer_dir = self.data_dir / TOKENIZER_DIR
        self.sources: dict[str, str] = {n: e["domain"] for n, e in index["sources"].items()}
        self._maps: dict[str, np.ndarray] = {}

    @classmethod
    def open(cls, data_dir: Path, *, verify: bool = False) -> PackedData:
        """Open and validate `data_dir` (written by `prepare`); DataError names what is wrong."""
        data_dir = Path(data_dir)
        index = _load_index(data_dir / INDEX_FILE)
        _check_tokenizer(data_dir, index)
        shards = [
            shard
            for entry in index["sources"].values()
            for split in entry["splits"].values()
            for shard in split["shards"]
        ]
        for shard in shards:
            _check_size(data_dir, shard, index)
        _check_hashes(data_dir, shards, recheck=verify)
        return cls(data_dir, index)

    def num_windows(self, source: str, split: str = "train") -> int:
        """Number of whole windows of `source` in `split` ("train" or "val")."""
        return self._split(source, split)["windows"]

    def window(self, source: str, index: int, split: str = "train") -> np.ndarray:
        """Window `index` of a source's split: (seq_len + 1,) int64 token ids."""
        shards, starts = self._shard_table(source, split)
        total = int(starts[-1])
        if not 0 <= index < total:
            raise IndexError(f"{source}/{split}: window {index} out of range [0, {total})")
        k = int(np.searchsorted(starts, index, side="right")) - 1
        offset = (index - int(starts[k])) * self.window_tokens
        tokens = self._map(shards[k]["file"])[offset : offset + self.window_tokens]
        if tokens.max() >= self.vocab_size:
            raise DataError(
                f"{self.data_dir / SHARDS_DIR / shards[k]['file']}: token id {tokens.max()} in "
                f"window {index} of {source}/{split} is >= the vocabulary size "
                f"{self.vocab_size}: the shard changed since it was checked; rerun "
                f"`tinylab prepare DATA_YAML --out {self.data_dir}`"
            )
        return tokens.astype(np.int64)

    def bytes_per_token(self, domain: str) -> float:
        """UTF-8 bytes per token over the held-out documents of `domain` (BOS/EOS counted as
        tokens, since the model predicts them): bits/byte = nats/token / ln 2 / this."""
        splits = [
            e["splits"]["val"] for e in self.index["sources"].values() if e["domain"] == domain
        ]
        if not splits:
            raise DataError(f"domain {domain!r} not in the data; domains: {self.domains}")
        num_bytes, num_tokens = sum(s["bytes"] for s in splits), sum(s["tokens"] for s in splits)
        if num_tokens == 0:
            raise DataError(f"domain {domain!r} has no held-out documents")
        return num_bytes / num_tokens

    def validation_windows(self, max_windows: int) -> dict[str, list[tuple[str, int]]]:
        """The held-out windows that measure each domain, for training's validation and
        `tinylab eval`'s perplexity alike (so both give one number for one model): up to
        `max_windows` (source, index) pairs per domain, spread evenly over each source."""
        refs: dict[str, list[tuple[str, int]]] = {}
        for domain in self.domains:
            names = sorted(s for s, d in self.sources.items() if d == domain)
            per_source = -(-max_windows // len(names))
            picked = [
                (name, int(i))
                for name in names
                for i in _spread(self.num_windows(name, "val"), per_source)
            ]
            if picked:
                refs[domain] = picked[:max_windows]
        return refs

    @property
    def domains(self) -> list[str]:
        return sorted(set(self.sources.values()))

    @property
    def tokenizer_sha256(self) -> str:
        return self.index["tokenizer_sha256"]

    def _split(self, source: str, split: str) -> dict[str, Any]:
        if source not in self.sources:
            raise DataError(f"unknown source {source!r}; sources: {sorted(self.sources)}")
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; splits: {list(SPLITS)}")
        return self.index["sources"][source]["splits"][split]

    def _shard_table(self, source: str, split: str) -> tuple[list[dict], np.ndarray]:
        shards = self._split(source, split)["shards"]
        starts = np.cumsum([0] + [s["windows"] for s in shards])
        return shards, starts

    def _map(self, name: str) -> np.ndarray:
        if name not in self._maps:
            path = self.data_dir / SHARDS_DIR / name
            self._maps[name] = np.memmap(path, dtype=self.dtype, mode="r")
        return self._maps[name]


def _spread(n: int, k: int) -> list[int]:
    """Up to k indices spread evenly over range(n)."""
    if n <= k:
        return list(range(n))
    return sorted({int(i) for i in np.linspace(0, n - 1, k).round()})


def bits_per_byte(nats_per_token: float, bytes_per_token: float) -> float:
    """A held-out loss (or its standard error) in bits per UTF-8 byte, comparable across
    tokenizers: nats/token / ln 2 / bytes per token (`PackedData.bytes_per_token`)."""
    return nats_per_token / math.log(2) / bytes_per_token


def _load_index(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(
            f"{path}: no data index; run `tinylab prepare DATA_YAML --out {path.parent}`"
        )
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise DataError(f"{path}: not valid JSON ({err}); rerun tinylab prepare") from None
    if not isinstance(index, dict) or index.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{path}: format_version is not {FORMAT_VERSION}; rerun tinylab prepare")
    return index


def _check_tokenizer(data_dir: Path, index: dict[str, Any]) -> None:
    actual = toks.tokenizer_hash(data_dir / TOKENIZER_DIR)
    if actual != index["tokenizer_sha256"]:
        raise DataError(
            f"{data_dir / INDEX_FILE}: tokenizer_sha256 = {index['tokenizer_sha256'][:12]}... but "
            f"{data_dir / TOKENIZER_DIR / toks.TOKENIZER_FILE} hashes to {actual[:12]}...: the "
            "shards were made with another tokenizer; rerun tinylab prepare"
        )


def _check_size(data_dir: Path, shard: dict[str, Any], index: dict) -> None:
    path = data_dir / SHARDS_DIR / shard["file"]
    expected = shard["windows"] * index["window_tokens"] * np.dtype(index["dtype"]).itemsize
    if not path.is_file():
        raise DataError(f"{path}: shard listed in index.json is missing; rerun tinylab prepare")
    size = path.stat().st_size
    if size != expected:
        raise DataError(
            f"{path}: {size} bytes, index.json expects {expected} ({shard['windows']} windows x "
            f"{index['window_tokens']} tokens x {index['dtype']}): truncated or overwritten; "
            "rerun tinylab prepare"
        )


def _check_hashes(data_dir: Path, shards: list[dict[str, Any]], *, recheck: bool) -> None:
    """Every shard's sha256 against the index, each hashed once per state of its file (see
    the module docstring); `recheck`: all of them again."""
    marker = data_dir / VERIFIED_FILE
    known = {} if recheck else _read_verified(marker)
    verified = {}
    for shard in shards:
        path = data_dir / SHARDS_DIR / shard["file"]
        stat = path.stat()
        state = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, shard["sha256"]]
        seen = (str(path.resolve()), tuple(state))
        if known.get(shard["file"]) != state and (recheck or seen not in _VERIFIED_HERE):
            if sha256_file(path) != shard["sha256"]:
                raise DataError(
                    f"{path}: sha256 differs from index.json: the shard is corrupt; rerun "
                    f"`tinylab prepare DATA_YAML --out {data_dir}` (it rewrites corrupt shards)"
                )
            _VERIFIED_HERE.add(seen)
        verified[shard["file"]] = state
    if verified != known:
        with contextlib.suppress(OSError):  # read-only: this process remembers what it hashed
            write_json_atomic(marker, verified, indent=None)


def _read_verified(marker: Path) -> dict[str, list]:
    try:
        verified = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return verified if isinstance(verified, dict) else {}
