"""Shared fixtures: a tiny params tree that tests copy and break; tiny prepared data and one
CPU thread for the tests of tinylab.train."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _train_fixtures import prepare_data

SMALL_MODEL = """\
vocab_size: 300
hidden_size: 64
intermediate_size: 176
num_hidden_layers: 2
num_attention_heads: 4
num_key_value_heads: 2
max_position_embeddings: 64
attention: sdpa
"""

SMALL_DATA = """\
tokenizer: {kind: train, vocab_size: 300}
sources:
  prose: {kind: local, domain: english, paths: ["prose/*.txt"]}
  code: {kind: local, domain: code, paths: ["code/*.jsonl"], text_field: content}
seq_len: 32
"""

BASE_STAGE = """\
name: base
model: small
data: ../data/small.yaml
mixture: {prose: 1.0}
max_tokens: 65536
micro_batch_size: 2
global_batch_tokens: 256
optim: {lr: 1.0e-3, min_lr: 1.0e-4}
schedule: {warmup_tokens: 1024, decay_tokens: 131072}
"""

CHILD_STAGE = """\
extends: base.yaml
name: child
optim: {lr: 1e-3}
init_from: {stage: base}
"""


@pytest.fixture
def params(tmp_path: Path) -> Path:
    """A params/ tree with a small model, data, and two stages."""
    root = tmp_path / "params"
    for kind in ("models", "data", "stages", "pipelines", "eval"):
        (root / kind).mkdir(parents=True)
    (root / "models" / "small.yaml").write_text(SMALL_MODEL)
    (root / "data" / "small.yaml").write_text(SMALL_DATA)
    (root / "stages" / "base.yaml").write_text(BASE_STAGE)
    (root / "stages" / "child.yaml").write_text(CHILD_STAGE)
    return root


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny corpora of _train_fixtures, prepared once per test module."""
    return prepare_data(tmp_path_factory.mktemp("data"))


@pytest.fixture
def one_thread():
    """One torch thread: fast and stable on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
