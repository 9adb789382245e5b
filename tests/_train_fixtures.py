"""Tiny corpora, prepared data and stage configs shared by the tests of tinylab.train."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from tinylab.config.data import DataConfig
from tinylab.config.loader import deep_merge
from tinylab.config.stage import StageConfig
from tinylab.data import prepare

WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "sat",
    "on",
    "mat",
    "ran",
    "far",
    "away",
    "house",
    "tree",
    "river",
    "stone",
    "light",
    "dark",
    "moon",
    "sun",
]
DATA = {
    "tokenizer": {"kind": "train", "vocab_size": 300},
    "sources": {
        "prose": {"kind": "local", "domain": "english", "paths": ["corpus/prose/*.txt"]},
        "code": {
            "kind": "local", "domain": "code", "paths": ["corpus/code/*.jsonl"],
            "text_field": "content",
        },
    },
    "seq_len": 32,
    "validation_fraction": 0.1,
    "num_workers": 1,
}  # fmt: skip
MODEL = {
    "vocab_size": 320,  # the trained tokenizer adds specials to its 300
    "hidden_size": 64,
    "intermediate_size": 176,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
    "attention": "sdpa",
}
STAGE = {
    "name": "base",
    "model": MODEL,
    "data": DATA,
    "mixture": {"prose": 1.0},
    "max_tokens": 8192,  # 8 steps
    "micro_batch_size": 4,
    "global_batch_tokens": 1024,  # 32 windows of 32 tokens
    "optim": {"lr": 1e-2, "min_lr": 1e-3},
    "schedule": {"warmup_tokens": 2048, "decay_tokens": 16384},
    "checkpoint": {"every_steps": 3, "keep_last": 2},
    "validation": {"every_steps": 4, "max_windows": 8},
    "parallel": {"precision": "fp32"},
}


def write_corpora(root: Path) -> None:
    """English-like prose (30 files) and Python one-liners (one jsonl), deterministic."""
    rng = random.Random(0)
    (root / "corpus" / "prose").mkdir(parents=True, exist_ok=True)
    (root / "corpus" / "code").mkdir(parents=True, exist_ok=True)
    for i in range(30):
        paragraphs = [
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 80))).capitalize() + "."
            for _ in range(8)
        ]
        (root / "corpus" / "prose" / f"{i}.txt").write_text("\n\n".join(paragraphs))
    lines = [
        json.dumps({"content": f"def f{i}(x):\n    return x * {i} + {rng.randint(0, 9)}\n"})
        for i in range(200)
    ]
    (root / "corpus" / "code" / "a.jsonl").write_text("\n".join(lines) + "\n")


def prepare_data(root: Path, data_params: dict | None = None) -> Path:
    """Prepared data of the tiny corpora under `root`/data (data params: DATA unless given)."""
    write_corpora(root)
    data = deep_merge(DATA if data_params is None else data_params, {})
    for source in data["sources"].values():
        source["paths"] = [str(root / p) for p in source["paths"]]
    prepare(DataConfig.model_validate(data), root / "data", progress=False)
    return root / "data"


def stage_config(**overrides: Any) -> StageConfig:
    """The tiny stage with nested overrides, e.g. stage_config(optim={"lr": 1e-3})."""
    return StageConfig.model_validate(deep_merge(STAGE, overrides))


def new_run(tmp_path: Path, data_dir: Path, name: str = "run") -> Path:
    """A run folder whose data/ is the shared prepared data."""
    run = tmp_path / name
    run.mkdir()
    (run / "data").symlink_to(data_dir)
    return run


def train_records(run: Path, stage: str = "base") -> list[dict]:
    lines = (run / "stages" / stage / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "train"]


def curve(records: list[dict]) -> list[tuple]:
    """The deterministic part of the training records (no wall-clock values)."""
    return [(r["step"], r["tokens"], r["loss"], r["lr"], r["grad_norm"]) for r in records]


def final_weights(run: Path, stage: str = "base") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "stages" / stage / "hf" / "model.safetensors")


def run_module(config: Path, run: Path, *, fault: str = "", extra: tuple[str, ...] = ()):
    """`python -m tinylab.train` in a subprocess with one thread (bitwise-comparable runs)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TINYLAB_FAULT": fault}
    command = [
        sys.executable,
        "-m",
        "tinylab.train",
        "--config",
        str(config),
        "--run-dir",
        str(run),
    ]
    return subprocess.run([*command, *extra], env=env, capture_output=True, text=True, timeout=300)
