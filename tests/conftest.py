"""Shared fixtures: a tiny params tree that tests copy and break; tiny prepared data and one
CPU thread for the tests of tinylab.train; and a hermetic session: tinylab's cache and the
homes of the tools the tests start (matplotlib, IPython, Jupyter, Hugging Face) live in one
temporary folder, so the suite reaches no registry and writes nothing outside temporary
folders. Tests marked `network` fetch from the real registries, into that temporary cache;
they run only with TINYLAB_NETWORK_TESTS=1 and are reported as skipped otherwise."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from _train_fixtures import prepare_data

NETWORK_OPT_IN = "TINYLAB_NETWORK_TESTS"
_TOOL_HOMES = ("MPLCONFIGDIR", "IPYTHONDIR", "JUPYTER_RUNTIME_DIR", "HF_HOME", "XDG_CACHE_HOME")
_session_home = Path(tempfile.mkdtemp(prefix="tinylab-tests-"))


def pytest_configure(config: pytest.Config) -> None:
    """Before any test module imports matplotlib: the tools' homes in the session folder."""
    for name in _TOOL_HOMES:
        os.environ[name] = str(_session_home / name.lower())


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_session_home, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(NETWORK_OPT_IN) == "1":
        return
    skip = pytest.mark.skip(reason=f"reaches PyPI and Debian; run with {NETWORK_OPT_IN}=1")
    for item in items:
        if "network" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def tinylab_cache() -> Iterator[Path]:
    """An empty $TINYLAB_CACHE for the whole session (never the user's ~/.cache/tinylab):
    tests that need demo corpora or eval suites build small real-format ones in it."""
    root = _session_home / "tinylab-cache"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TINYLAB_CACHE", str(root))
        yield root


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
