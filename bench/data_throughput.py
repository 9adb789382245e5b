"""Tokenize + pack throughput of tinylab.data.prepare on the demo corpora: the single-process
path beside the scaled-out one (datatrove's local executor, N task processes), and the reference
code's approach, a plain loop that tokenizes one document at a time and appends to a list; then
the paper's data (params/data/tinyllama.yaml, `tinylab prepare-plan`) projected at the measured
per-core rate onto 128 cores, beside the reference's "about a day" (docs/PAPER.md, "Known
pitfalls of the reference code").

Every row reads the same documents from the demo cache with the same trained tokenizer (made
once, before timing) and counts the same tokens (`<s> doc </s>`). tinylab's rows time the whole
public call, `prepare()` with the tokenizer already in place: read, split train/validation,
tokenize, cut windows, write shards with sha256 and the index. "single process" is workers=1
with one tokenizer process (num_workers=1); "datatrove, N processes" deals the units (here the
four demo sources) to N task processes. The loops stop at an in-memory list, so they do less
work. Per-process figures divide by the processes used; CPU seconds (this process and its
reaped children) are robust to other load on the machine. The rows run back to back.

    python bench/data_throughput.py                     # the demo corpora, 1 and all cores
    python bench/data_throughput.py --data params/data/demo.yaml --workers 1 2 --no-loops
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
from tinylab.data.plan import format_plan, preparation_plan
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
    """prepare() into a fresh folder holding only the tokenizer, one tokenizer process per task
    process; returns the tokens packed."""
    data_dir = work / f"data-{workers}"
    shutil.rmtree(data_dir, ignore_errors=True)
    shutil.copytree(tok_dir, data_dir / "tokenizer")
    single = cfg.model_copy(update={"num_workers": 1})
    data = prepare(single, data_dir, progress=False, workers=workers)
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
    parser.add_argument("--no-loops", dest="loops", action="store_false", help="skip the loops")
    args = parser.parse_args()
    cfg = load_config(args.data, DataConfig)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepare(cfg, work / "warmup", progress=False)  # fetch corpora, train the tokenizer
        tok = work / "warmup" / "tokenizer"
        rows = []
        if args.loops:
            for label, hf in (("transformers", True), ("tokenizers", False)):
                result = timed(plain_loop, cfg, tok, hf=hf)
                rows.append((f"plain loop, {label} encode per doc", 1, *result))
        for workers in args.workers:
            result = timed(tinylab_prepare, cfg, tok, work, workers)
            label = "single process" if workers == 1 else f"datatrove, {workers} processes"
            rows.append((f"tinylab prepare, {label}", workers, *result))
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
    name, procs, tokens, wall, cpu = max((r for r in rows if "prepare" in r[0]), key=lambda r: r[1])
    projection(tokens / cpu, f"{name}, tokens per CPU second")


def projection(rate: float, measured: str, cores: int = 128) -> None:
    """The paper's data at `rate` tokens/s per core on `cores` cores: the rate is the tokens per
    CPU second of the row with the most processes (every core busy; what a node with a core per
    task gives, which other load on this machine does not distort)."""
    paper = load_config(PARAMS_DIR / "data" / "tinyllama.yaml", DataConfig)
    frame = preparation_plan(paper, cores=cores, tokens_per_core_s=rate)
    hours = frame[f"hours on {cores} cores"].iloc[-1]
    print(f"\nparams/data/tinyllama.yaml at {rate:,.0f} tokens/s per core ({measured}):")
    print(format_plan(frame, cores=cores, tokens_per_core_s=rate))
    print(f"= {hours:.1f} h on {cores} cores; the reference: about a day (docs/PAPER.md)")


if __name__ == "__main__":
    main()
