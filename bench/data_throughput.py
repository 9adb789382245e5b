"""Tokenize + pack throughput of tinylab.data.prepare on the demo corpora, beside the reference
code's approach: a plain loop that tokenizes one document at a time and appends to a list.

Every row reads the same documents from the demo cache with the same trained tokenizer (made
once, before timing) and counts the same tokens (`<s> doc </s>`). tinylab's rows time the whole
public call, `prepare()` with the tokenizer already in place: read, split train/validation,
tokenize in a process pool, cut windows, write shards with sha256 and the index. The loops stop
at an in-memory list, so they do less work. Per-process figures divide by the processes used;
CPU seconds (this process and its reaped pool workers) are robust to other load on the machine.

    python bench/data_throughput.py                     # the demo corpora, 1 and all cores
    python bench/data_throughput.py --data params/data/demo.yaml --workers 1 2
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

from tinylab.config.data import DataConfig
from tinylab.config.loader import PARAMS_DIR, load_config
from tinylab.data import prepare
from tinylab.data.sources import iter_documents
from tinylab.data.tokenizer import load_fast


def plain_loop(cfg: DataConfig, tok_dir: Path, *, hf: bool) -> int:
    """One document at a time, ids appended to a Python list (transformers or raw tokenizers)."""
    if hf:
        from transformers import AutoTokenizer

        encode = AutoTokenizer.from_pretrained(str(tok_dir)).encode
    else:
        raw = load_fast(tok_dir)

        def encode(text: str, add_special_tokens: bool = False) -> list[int]:
            return raw.encode(text, add_special_tokens=add_special_tokens).ids

    ids: list[int] = []
    for name, source in cfg.sources.items():
        for doc in iter_documents(source, name=name):
            ids.extend([1, *encode(doc, add_special_tokens=False), 2])
    return len(ids)


def tinylab_prepare(cfg: DataConfig, tok_dir: Path, work: Path, workers: int) -> int:
    """prepare() into a fresh folder holding only the tokenizer; returns the tokens packed."""
    data_dir = work / f"data-{workers}"
    shutil.rmtree(data_dir, ignore_errors=True)
    shutil.copytree(tok_dir, data_dir / "tokenizer")
    data = prepare(cfg.model_copy(update={"num_workers": workers}), data_dir, progress=False)
    return sum(
        split["tokens"] for e in data.index["sources"].values() for split in e["splits"].values()
    )


def cpu_seconds() -> float:
    """User + system CPU time of this process and its reaped children (the pool workers)."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(fn, *args, **kwargs) -> tuple[int, float, float]:
    """(tokens, wall seconds, CPU seconds) of one call."""
    start, cpu = time.perf_counter(), cpu_seconds()
    tokens = fn(*args, **kwargs)
    return tokens, time.perf_counter() - start, cpu_seconds() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(PARAMS_DIR / "data" / "demo.yaml"))
    parser.add_argument("--workers", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    args = parser.parse_args()
    cfg = load_config(args.data, DataConfig)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepare(cfg, work / "warmup", progress=False)  # fetch corpora, train the tokenizer
        tok = work / "warmup" / "tokenizer"
        rows = [
            ("plain loop, transformers encode per doc", 1, *timed(plain_loop, cfg, tok, hf=True)),
            ("plain loop, tokenizers encode per doc", 1, *timed(plain_loop, cfg, tok, hf=False)),
        ]
        for workers in args.workers:
            result = timed(tinylab_prepare, cfg, tok, work, workers)
            rows.append((f"tinylab prepare, {workers} process(es)", workers, *result))
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{datetime.date.today()}  {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, load average {load}, data {Path(args.data).name}")  # fmt: skip
    print("| method | processes | tokens | wall s | tokens/s | tokens/s per process | CPU s "
          "| tokens per CPU s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for name, procs, tokens, wall, cpu in rows:
        rate = tokens / wall
        cells = [name, procs, f"{tokens:,}", f"{wall:.1f}", f"{rate:,.0f}", f"{rate / procs:,.0f}",
                 f"{cpu:.1f}", f"{tokens / cpu:,.0f}"]  # fmt: skip
        print("| " + " | ".join(str(c) for c in cells) + " |")


if __name__ == "__main__":
    main()
