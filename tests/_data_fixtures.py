"""Tiny real corpora for the tinylab.data tests (imported by tests/test_data_*.py)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from tinylab.config.data import DataConfig

WORDS = [
    "the",
    "king",
    "queen",
    "castle",
    "night",
    "ghost",
    "sword",
    "love",
    "death",
    "honour",
    "crown",
]


def make_corpus(root: Path, *, num_prose: int = 40, num_code: int = 120) -> None:
    """Prose as .txt files (one document each) and code as a .jsonl with a `content` field."""
    rng = random.Random(0)
    (root / "prose").mkdir(parents=True)
    for i in range(num_prose):
        body = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 300)))
        (root / "prose" / f"{i:03d}.txt").write_text(f"Doc {i}: {body}.\n")
    with (root / "code.jsonl").open("w") as out:
        for i in range(num_code):
            text = f"def f{i}(x):\n    return x * {i} + {rng.randint(0, 99)}\n" * rng.randint(1, 9)
            out.write(json.dumps({"content": text, "lang": "python"}) + "\n")


def data_config(root: Path, **changes) -> DataConfig:
    raw = {
        "tokenizer": {"kind": "train", "vocab_size": 320},
        "sources": {
            "prose": {"kind": "local", "domain": "english", "paths": [f"{root}/prose/*.txt"]},
            "code": {
                "kind": "local",
                "domain": "code",
                "paths": [f"{root}/code.jsonl"],
                "text_field": "content",
            },
        },
        "seq_len": 16,
        "validation_fraction": 0.1,
        "shard_tokens": 500,
        "num_workers": 1,
    }
    return DataConfig.model_validate({**raw, **changes})
