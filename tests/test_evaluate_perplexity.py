"""tinylab.evaluate.perplexity: per-domain perplexity and bits per byte on the held-out windows of
a real prepared data folder, checked against HF's own loss."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from _evaluate_fixtures import TINY_MODEL

from tinylab.analysis.effects import window_bpb
from tinylab.config.data import DataConfig
from tinylab.config.eval import EvalConfig
from tinylab.data.packed import bits_per_byte
from tinylab.evaluate import evaluate_checkpoint
from tinylab.evaluate.perplexity import domain_perplexity, window_nll
from tinylab.model import build_model, save_hf

WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "that",
    "it",
    "for",
    "on",
    "with",
    "as",
    "by",
    "at",
    "from",
    "river",
    "stone",
    "light",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):
    from tinylab.data import prepare

    root = tmp_path_factory.mktemp("ppl")
    rng = random.Random(0)
    (root / "txt").mkdir()
    for i in range(40):
        prose = " ".join(rng.choice(WORDS) for _ in range(150))
        (root / "txt" / f"prose{i}.txt").write_text(prose)
        code = "\n".join(
            f"def f{i}_{j}(x):\n    return x * {rng.randint(0, 99)}" for j in range(20)
        )
        (root / "txt" / f"code{i}.py").write_text(code)
    cfg = DataConfig.model_validate({
        "tokenizer": {"kind": "train", "vocab_size": TINY_MODEL.vocab_size},
        "sources": {
            "prose": {"kind": "local", "domain": "english", "paths": [f"{root}/txt/*.txt"]},
            "code": {"kind": "local", "domain": "code", "paths": [f"{root}/txt/*.py"],
                     "format": "txt"},
        },
        "seq_len": 32, "validation_fraction": 0.25, "num_workers": 1,
    })  # fmt: skip
    return prepare(cfg, root / "data", progress=False)


def test_window_nll_equals_the_models_own_loss() -> None:
    model = build_model(TINY_MODEL, seed=0).eval()
    windows = np.random.default_rng(0).integers(0, TINY_MODEL.vocab_size, size=(3, 17))
    ours = window_nll(model, windows, batch_size=2)
    for row, value in zip(windows, ours, strict=True):
        ids = torch.as_tensor(row)[None]
        with torch.no_grad():
            assert value == pytest.approx(model(ids, labels=ids).loss.item(), rel=1e-5)


def test_bits_per_byte_per_domain(data) -> None:
    model = build_model(TINY_MODEL, seed=0).eval()
    rows = {r["task"]: r for r, _ in domain_perplexity(model, data, max_windows=4)}
    assert set(rows) == {"perplexity/code", "perplexity/english"}
    english = rows["perplexity/english"]
    refs = data.validation_windows(4)["english"]  # training's validation windows
    windows = np.stack([data.window(source, i, "val") for source, i in refs])
    nats = float(window_nll(model, windows).mean())
    assert english["n"] == 4
    assert english["metrics"]["perplexity"] == pytest.approx(math.exp(nats), rel=1e-5)
    expected = nats / math.log(2) / data.bytes_per_token("english")
    assert english["value"] == pytest.approx(expected, rel=1e-5)
    # training's validation formula, to the last bit
    reported = english["metrics"]["nats_per_token"]
    assert english["value"] == bits_per_byte(reported, data.bytes_per_token("english"))
    # a random model is near log(vocab) nats per token
    assert abs(nats - math.log(TINY_MODEL.vocab_size)) < 0.5


def test_evaluate_checkpoint_adds_perplexity_rows_and_reuses_them(data, tmp_path: Path) -> None:
    hf_dir = save_hf(build_model(TINY_MODEL, seed=0), tmp_path / "hf")
    cfg = EvalConfig(perplexity_max_windows=2, device="cpu")
    first = evaluate_checkpoint(hf_dir, cfg, tmp_path / "eval", name="b", data_dir=data.data_dir)
    assert [r["task"] for r in first["results"]] == ["perplexity/code", "perplexity/english"]
    assert all(r["kind"] == "perplexity" and r["n"] == 2 for r in first["results"])
    again = evaluate_checkpoint(hf_dir, cfg, tmp_path / "eval", name="b", data_dir=data.data_dir)
    assert again == first
    # the windows behind each row are stored beside it, one samples line per window
    windows = window_bpb(tmp_path, "b", "code")  # tmp_path/eval: a run folder's eval/
    assert windows.index.tolist() == [f"{s}/{i}" for s, i in data.validation_windows(2)["code"]]
    assert windows.mean() == pytest.approx(first["results"][0]["value"], rel=1e-6)


def test_per_window_records_add_up_to_the_domains_bits_per_byte(data) -> None:
    """The per-window values a bootstrap resamples reproduce the reported aggregate: the mean of
    the windows' bpb and sum(nats) / sum(bytes) / ln 2 are the domain's bpb, each window's id
    is its (source, index) and its nats the window's mean loss times seq_len (equal to float32
    rounding: the reported mean is taken over the float32 losses, as before)."""
    model = build_model(TINY_MODEL, seed=0).eval()
    for row, windows in domain_perplexity(model, data, max_windows=4):
        domain = row["task"].partition("/")[2]
        refs = data.validation_windows(4)[domain]
        assert [w["window"] for w in windows] == [f"{s}/{i}" for s, i in refs]
        assert len(windows) == row["n"] == 4
        assert all(w["tokens"] == data.seq_len for w in windows)
        nll = window_nll(model, np.stack([data.window(s, i, "val") for s, i in refs]))
        assert [w["nats"] for w in windows] == pytest.approx(nll * data.seq_len, rel=1e-6)
        assert np.mean([w["bits_per_byte"] for w in windows]) == pytest.approx(
            row["value"], rel=1e-6
        )
        ratio = sum(w["nats"] for w in windows) / sum(w["bytes"] for w in windows) / math.log(2)
        assert ratio == pytest.approx(row["value"], rel=1e-6)


def test_perplexity_and_training_validation_read_the_same_windows(data) -> None:
    """One definition of held-out bits per byte: tinylab eval's rows and a stage's validation
    both measure PackedData.validation_windows, spread over the held-out split."""
    last = data.num_windows("prose", "val") - 1
    assert last > 1
    assert data.validation_windows(2)["english"] == [("prose", 0), ("prose", last)]
    model = build_model(TINY_MODEL, seed=0).eval()
    row = {r["task"]: r for r, _ in domain_perplexity(model, data, max_windows=2)}
    windows = np.stack([data.window("prose", i, "val") for i in (0, last)])
    expected = bits_per_byte(
        float(window_nll(model, windows).mean()), data.bytes_per_token("english")
    )
    assert row["perplexity/english"]["value"] == pytest.approx(expected, rel=1e-6)
