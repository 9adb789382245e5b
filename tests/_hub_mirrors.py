"""Tiny local mirrors of the four hub datasets of params/data/tinyllama.yaml, in their published
layouts: the same relative paths, file formats (jsonl, jsonl.zst, parquet) and field names, with
SlimPajama's GitHub subset, StarCoderData's four special folders (other columns) and
Proof-Pile-2's loading script and differing `meta`. Reading them takes only `hub_root` redirected.
Each document carries a marker word naming where it came from, so a test can tell which were read.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from tinylab.config.data import DataConfig
from tinylab.config.loader import PARAMS_DIR, load_config

SOURCES = ("slimpajama", "starcoder", "proofpile", "skypile")  # of params/data/tinyllama.yaml

WORDS = [
    *("the", "of", "a", "to", "in", "is", "that", "for", "it", "as", "with"),
    *("was", "on", "be", "by", "at", "this", "from", "or", "an", "are"),
]
STARCODER_SPECIAL = {  # folder -> its columns (other than the language folders')
    "git-commits-cleaned": ["commit", "old_file", "new_file", "old_contents", "new_contents",
                            "subject", "message", "lang", "license", "repos"],
    "github-issues-filtered-structured": ["repo", "issue_id", "issue_number", "pull_request",
                                          "events", "text_size", "content", "usernames"],
    "jupyter-scripts-dedup-filtered": ["max_stars_repo_path", "max_stars_repo_name",
                                       "max_stars_count", "id", "content"],
    "jupyter-structured-clean-dedup": ["max_stars_repo_path", "max_stars_repo_name",
                                       "max_stars_count", "id", "cells"],
}  # fmt: skip


def text(rng: random.Random, marker: str, words: int = 60) -> str:
    return " ".join([marker, *(rng.choice(WORDS) for _ in range(words))])


def write_jsonl(path: Path, rows: list[dict], *, zstd: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()
    path.write_bytes(zstandard.ZstdCompressor().compress(data) if zstd else data)


def write_parquet(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def slimpajama(root: Path, rng: random.Random, docs: int) -> None:
    repo = root / "cerebras" / "SlimPajama-627B"
    sets = ["RedPajamaCommonCrawl", "RedPajamaC4", "RedPajamaGithub", "RedPajamaBook"]
    for folder, name, n in (
        ("train/chunk1", "example_train_0.jsonl.zst", docs),
        ("train/chunk2", "example_train_1.jsonl.zst", docs),
        ("validation/chunk1", "example_holdout_0.jsonl.zst", 5),
        ("test/chunk1", "example_holdout_0.jsonl.zst", 5),
    ):
        rows = []
        for i in range(n):
            subset = sets[i % len(sets)]
            marker = "githubdoc" if subset == "RedPajamaGithub" else f"slim{folder[:4]}"
            rows.append({"text": text(rng, marker), "meta": {"redpajama_set_name": subset}})
        write_jsonl(repo / folder / name, rows, zstd=True)
    (repo / "README.md").write_text("# SlimPajama-627B\n")


def starcoderdata(root: Path, rng: random.Random, docs: int) -> None:
    repo = root / "bigcode" / "starcoderdata"
    for lang in ("python", "javascript"):
        rows = [
            {
                "max_stars_repo_path": f"src/f{i}.{lang[:2]}",
                "max_stars_repo_name": f"user/repo{i}",
                "max_stars_count": i,
                "id": f"{lang}-{i}",
                "content": text(rng, f"code{lang}"),
            }
            for i in range(docs)
        ]
        write_parquet(repo / lang / "train-00000-of-00001.parquet", rows)
    for folder, columns in STARCODER_SPECIAL.items():
        row = {c: text(rng, "specialfolder") if c == "content" else f"{c}-value" for c in columns}
        if "events" in row:
            row["events"] = [{"action": "opened", "text": "an issue"}]
        write_parquet(repo / folder / "train-00000-of-00001.parquet", [row] * 3)
    (repo / "README.md").write_text("---\nextra_gated_prompt: terms\n---\n")


def proofpile2(root: Path, rng: random.Random, docs: int) -> None:
    repo = root / "EleutherAI" / "proof-pile-2"
    (repo / "proof-pile-2.py").parent.mkdir(parents=True, exist_ok=True)
    script = "import datasets\n\nclass ProofPile2(datasets.GeneratorBasedBuilder): ...\n"
    (repo / "proof-pile-2.py").write_text(script)  # what datasets >= 4 refuses to run
    metas = {  # the subsets' meta structs differ
        "arxiv/train/arXiv_000.jsonl.zst": lambda i: {
            "arxiv_id": f"2101.{i:05d}", "language": "en", "timestamp": "2021-01-01",
            "url": f"https://arxiv.org/abs/2101.{i:05d}", "yymm": "2101"},
        "open-web-math/train/shard-0000.jsonl.zst": lambda i: {
            "url": f"https://example.org/{i}", "date": "2023",
            "extraction_info": {"found_math": True}},
        "algebraic-stack/train/lean/lean0000.jsonl.zst": lambda i: {
            "max_stars_count": i, "alphanum_fraction": 0.5, "lang": "lean"},
    }  # fmt: skip
    for path, meta in metas.items():
        rows = [{"text": text(rng, "mathdoc"), "meta": meta(i)} for i in range(docs)]
        write_jsonl(repo / path, rows, zstd=True)


def skypile(root: Path, rng: random.Random, docs: int) -> None:
    repo = root / "Skywork" / "SkyPile-150B"
    for name in ("2020-40_zh_head_0000.jsonl", "2020-40_zh_middle_0001.jsonl"):
        rows = [{"text": text(rng, "中文网页") + " 你好世界"} for _ in range(docs)]
        write_jsonl(repo / "data" / name, rows)


def make_mirrors(root: Path, docs: int = 40, seed: int = 0) -> Path:
    """All four mirrors under `root` (the hub_root to read them from)."""
    rng = random.Random(seed)
    for build in (slimpajama, starcoderdata, proofpile2, skypile):
        build(root, rng, docs)
    return root


def mirrored_overrides(root: Path) -> list[str]:
    """--set lines reading params/data/tinyllama.yaml from the mirrors under `root` (only
    hub_root), with a small trained tokenizer and short windows (the Llama one is on the hub)."""
    overrides = [f"sources.{name}.hub_root={root}" for name in SOURCES]
    small = ["tokenizer.kind=train", "tokenizer.vocab_size=400", "seq_len=63",
             "validation_fraction=0.05", "shard_tokens=4096", "num_workers=1"]  # fmt: skip
    return overrides + small


def mirrored_config(root: Path, *extra: str) -> DataConfig:
    """params/data/tinyllama.yaml read from the mirrors (mirrored_overrides) plus `extra`."""
    path = PARAMS_DIR / "data" / "tinyllama.yaml"
    return load_config(path, DataConfig, overrides=[*mirrored_overrides(root), *extra])
