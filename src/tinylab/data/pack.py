"""Tokenize + pack: documents -> token ids -> fixed windows of seq_len + 1 tokens in binary
shards, with a JSON index (`prepare`); tinylab.data.packed reads them back (`PackedData`).

Layout of a data folder (`<run>/data/`):

    tokenizer/                 transformers folder (AutoTokenizer loads it); sha256 in the index
    shards/<source>-<split>-<fingerprint>[-<unit>]-00000.bin   windows * (seq_len + 1) tokens,
                               uint16 or uint32
    work/                      while preparing: unit results and datatrove's task logs
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

Units and tasks: a source is read as units (tinylab.data.sources.source_units: each file of a
hub source, else the whole source); each unit is tokenized in order and cut into its own
windows and shards (`<source>-<split>-<fingerprint>[-<unit>]-<shard>.bin`; a unit's tail that
fills no window is dropped and counted), and its result (counts, shards with sha256) is
recorded in `work/units/`. Units are dealt round-robin to tasks that datatrove runs
(tinylab.data.distribute: N local processes, or a SLURM job array); at the end the results
become the one index, in unit order. So shards are byte-identical whatever the number of
workers or tasks; a rerun reuses a source whose index entry and shard checksums match, and
within a source every unit whose result and shards are intact, redoing only the others. Every
file is written to a temporary name and renamed. With one worker (the demo) the tasks run in
this process and a pool of `num_workers` processes tokenizes (`imap`, order kept).

    tinylab prepare params/data/demo.yaml --out outputs/runs/demo/data
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from itertools import chain, islice
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from tinylab.config.data import DataConfig
from tinylab.config.loader import load_config, project_path
from tinylab.data import tokenizer as toks
from tinylab.data.card import write_data_card
from tinylab.data.distribute import run_local, submit_slurm
from tinylab.data.errors import DataError
from tinylab.data.packed import (
    FORMAT_VERSION,
    SHARDS_DIR,
    SPLITS,
    TOKENIZER_DIR,
    PackedData,
)
from tinylab.data.sources import iter_documents, source_signature, source_units, unit_documents
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
WORK_DIR = "work"  # unit results and task logs while a preparation is under way
SPLIT_COUNTS = ("documents", "tokens", "bytes", "windows", "dropped_tokens")
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


def prepare(
    cfg: DataConfig,
    data_dir: Path,
    *,
    progress: bool = True,
    workers: int = 1,
    tasks: int | None = None,
) -> PackedData:
    """Tokenizer, shards, index and data card in `data_dir`; idempotent (see module docstring).

    The units of work run as `tasks` datatrove tasks (default: one per unit), `workers` local
    processes at a time (1: in this process, with the tokenizer pool of `cfg.num_workers`).
    A failure leaves what was there usable: a new tokenizer waits in a staging folder
    (files.replace_dir_atomic) and new shards get new names (their source fingerprint) until the
    new index replaces the old one; finished units are kept for the rerun."""
    data_dir = Path(data_dir)
    _make_writable_folder(data_dir)
    recipe = tokenizer_recipe(cfg)
    run = {"workers": workers, "tasks": tasks, "progress": progress}
    if tokenizer_matches(data_dir / TOKENIZER_DIR, recipe):
        index = _pack_locally(cfg, data_dir, data_dir / TOKENIZER_DIR, **run)
    else:
        with replace_dir_atomic(data_dir / TOKENIZER_DIR) as staging:
            make_tokenizer(cfg, staging, recipe, progress=progress)
            index = _pack_locally(cfg, data_dir, staging, **run)
    write_index(cfg, data_dir, index)
    shutil.rmtree(data_dir / WORK_DIR, ignore_errors=True)  # task logs: the index says it all
    return PackedData.open(data_dir)


def _pack_locally(
    cfg: DataConfig,
    data_dir: Path,
    tok_dir: Path,
    *,
    workers: int,
    tasks: int | None,
    progress: bool,
) -> dict[str, Any]:
    """Run the units as tasks on this machine; the new index."""
    # a pool inside a pool is not allowed: with several task processes each encodes alone
    encoders = cfg.num_workers if workers == 1 else 1
    job = plan_job(cfg, data_dir, tok_dir, encode_workers=encoders, progress=progress)
    run_local(
        job.run_task,
        tasks=job.tasks(tasks),
        workers=workers,
        logging_dir=job.logs,
        quiet=not progress,
    )
    return job.merge()


def submit_prepare(
    cfg: DataConfig,
    data_dir: Path,
    *,
    tasks: int | None,
    partition: str,
    time: str,
    cpus_per_task: int = 1,
    env_command: str | None = None,
) -> PrepareJob:
    """The tokenizer here (in place), then the units as a SLURM job array of `tasks` tasks
    (default: one per unit) and the index as one job after it
    (tinylab.data.distribute.submit_slurm); each task tokenizes with `cpus_per_task` processes."""
    data_dir = Path(data_dir)
    _make_writable_folder(data_dir)
    recipe = tokenizer_recipe(cfg)
    if not tokenizer_matches(data_dir / TOKENIZER_DIR, recipe):
        with replace_dir_atomic(data_dir / TOKENIZER_DIR) as staging:
            make_tokenizer(cfg, staging, recipe, progress=True)
    job = plan_job(cfg, data_dir, data_dir / TOKENIZER_DIR, encode_workers=cpus_per_task)
    submit_slurm(
        job.run_task,
        job.finish,
        tasks=job.tasks(tasks),
        logging_dir=job.logs,
        partition=partition,
        time=time,
        cpus_per_task=cpus_per_task,
        env_command=env_command,
    )
    return job


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


@dataclass
class Unit:
    """One unit of work: a file of a hub source, or a whole source (file None)."""

    source: str
    number: int
    file: str | None
    fingerprint: str
    single: bool  # the source's only unit: its shards keep the source's plain names

    def prefix(self, split: str) -> str:
        base = f"{self.source}-{split}-{self.fingerprint[:10]}"
        return base if self.single else f"{base}-{self.number:05d}"

    @property
    def result_name(self) -> str:
        return f"{self.source}-{self.fingerprint[:10]}-{self.number:05d}.json"


@dataclass
class PrepareJob:
    """What the tasks of one preparation share: the params, folders, policy, the reused index
    entries and the units still to pack (dealt to tasks round-robin by position)."""

    cfg: DataConfig
    data_dir: Path
    tok_dir: Path
    policy: dict[str, Any]
    reused: dict[str, Any]
    units: list[Unit]
    encode_workers: int | None
    progress: bool = False

    @property
    def work(self) -> Path:
        return self.data_dir / WORK_DIR

    @property
    def logs(self) -> Path:
        """datatrove's logging folder, keyed by what the tasks do (a changed job starts anew)."""
        digest = json_digest([self.policy, [asdict(u) for u in self.units]])
        return self.work / f"logs-{digest[:12]}"

    def tasks(self, tasks: int | None) -> int:
        return max(1, min(tasks or len(self.units), len(self.units)))

    def run_task(self, rank: int, world_size: int) -> None:
        """Pack this task's units (every world_size-th, from rank) unless a valid result of
        the same unit is already there (a rerun redoes only what is missing or damaged)."""
        mine = [u for i, u in enumerate(self.units) if i % world_size == rank]
        todo = [u for u in mine if self._result(u) is None]
        if not todo:
            return
        with _Encoder(self.tok_dir, self.policy, self.encode_workers) as encoder:
            for unit in todo:
                result = _pack_unit(unit, self, encoder)
                write_json_atomic(self.work / "units" / unit.result_name, result)

    def merge(self) -> dict[str, Any]:
        """The index: reused entries plus, per source, its units' results in unit order."""
        entries = dict(self.reused)
        for name, source in self.cfg.sources.items():
            if name in entries:
                continue
            results = []
            for unit in (u for u in self.units if u.source == name):
                result = self._result(unit)
                if result is None:
                    raise DataError(
                        f"sources.{name}: unit {unit.number} ({unit.file or 'whole source'}) "
                        f"has no valid result in {self.work}; rerun prepare to redo it"
                    )
                results.append(result)
            entries[name] = _source_entry(name, source, results)
        return {"format_version": FORMAT_VERSION, **self.policy, "sources": entries}

    def finish(self) -> None:
        """The index job: merge the units' results and write the index."""
        write_index(self.cfg, self.data_dir, self.merge())

    def _result(self, unit: Unit) -> dict[str, Any] | None:
        """A unit's recorded result when it belongs to this unit and its shards are intact."""
        try:
            path = self.work / "units" / unit.result_name
            result = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if result.get("unit") != asdict(unit) or not _entry_valid(self.data_dir, result):
            return None
        return result


def write_index(cfg: DataConfig, data_dir: Path, index: dict[str, Any]) -> None:
    """One index at the end; then the shards it does not list, the unit results, the card."""
    write_json_atomic(data_dir / INDEX_FILE, index)
    _remove_stale_shards(data_dir, index)
    shutil.rmtree(data_dir / WORK_DIR / "units", ignore_errors=True)
    write_data_card(cfg, data_dir, index)


def plan_job(
    cfg: DataConfig,
    data_dir: Path,
    tok_dir: Path,
    *,
    encode_workers: int | None,
    progress: bool = False,
) -> PrepareJob:
    """The sources to pack (those whose index entry and shards are not reusable) as units, each
    task tokenizing with `encode_workers` processes (None: all cores)."""
    policy = _policy(cfg, tok_dir)
    old = _read_old_index(data_dir)
    reused: dict[str, Any] = {}
    units: list[Unit] = []
    for name, source in cfg.sources.items():
        fingerprint = json_digest([FORMAT_VERSION, policy, source_signature(source, name=name)])
        entry = old.get(name)
        if entry and entry["fingerprint"] == fingerprint and _entry_valid(data_dir, entry):
            reused[name] = entry
            continue
        files = source_units(source, name=name)
        units += [
            Unit(name, number, file, fingerprint, single=len(files) == 1)
            for number, file in enumerate(files)
        ]
    return PrepareJob(cfg, data_dir, tok_dir, policy, reused, units, encode_workers, progress)


def tokenizer_recipe(cfg: DataConfig) -> dict[str, Any]:
    """What makes the tokenizer (its params; for a trained one also the sources and the split),
    with its digest: a tokenizer folder is reused when its recorded digest matches."""
    recipe: dict[str, Any] = {"tokenizer": cfg.tokenizer.model_dump(mode="json")}
    if recipe["tokenizer"]["revision"] is None:  # as before releases: prepared tokenizers hold
        del recipe["tokenizer"]["revision"]
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
    elif cfg.tokenizer.kind == "gguf":
        toks.save_gguf(cfg.tokenizer, folder)
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


def _pack_unit(unit: Unit, job: PrepareJob, encoder: _Encoder) -> dict[str, Any]:
    """Tokenize and pack one unit into its train and val shards; its result record."""
    source = job.cfg.sources[unit.source]
    writers = {
        split: _ShardWriter(job.data_dir, unit.prefix(split), job.policy) for split in SPLITS
    }
    docs = unit_documents(source, unit.file, name=unit.source)
    label = unit.source if unit.single else f"{unit.source} {unit.number}"
    bar = tqdm(desc=f"pack {label}", unit="tok", unit_scale=True, disable=not job.progress)
    with bar:
        for result in encoder.map(_batches(docs, BATCH_DOCUMENTS)):
            for split, (ids, lengths, num_bytes) in result.items():
                writers[split].add(ids, lengths, num_bytes)
                bar.update(len(ids))
    lengths = writers["train"].lengths + writers["val"].lengths
    return {
        "unit": asdict(unit),
        "splits": {split: writer.close() for split, writer in writers.items()},
        "document_tokens_sample": lengths[:LENGTH_SAMPLE],
    }


def _source_entry(name: str, source: Any, results: list[dict[str, Any]]) -> dict[str, Any]:
    """A source's index entry: its units' counts summed and shard lists joined in unit order."""
    splits = {}
    for split in SPLITS:
        parts = [r["splits"][split] for r in results]
        splits[split] = {key: sum(part[key] for part in parts) for key in SPLIT_COUNTS} | {
            "shards": [shard for part in parts for shard in part["shards"]]
        }
    if splits["train"]["documents"] + splits["val"]["documents"] == 0:
        raise DataError(f"sources.{name}: empty corpus: no non-empty document was read")
    sample = [n for r in results for n in r["document_tokens_sample"]]
    return {
        "domain": source.domain,
        "kind": source.kind,
        "fingerprint": results[0]["unit"]["fingerprint"],
        "splits": splits,
        "document_tokens_sample": sample[:LENGTH_SAMPLE],
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
