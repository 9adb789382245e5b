"""tinylab.analysis.probe: load an HF folder, generate, per-token losses agree with the model."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
import torch
from _analysis_fixtures import write_stage
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from tinylab.analysis.probe import (
    find_hf_folder,
    generate,
    load_for_probing,
    token_loss_figure,
    token_losses,
)
from tinylab.config.loader import ConfigError
from tinylab.config.model import ModelConfig
from tinylab.layout import RunLayout
from tinylab.model import build_model, save_hf
from tinylab.notebook import NOTEBOOKS_DIR, execute_notebook

TEXT = "the quick brown fox jumps over the lazy dog. " * 20


@pytest.fixture
def stage_dir(tmp_path: Path) -> Path:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        [TEXT], trainers.BpeTrainer(vocab_size=60, special_tokens=["<unk>", "<s>", "</s>"])
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    cfg = ModelConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        attention="sdpa",
    )
    stage = RunLayout(tmp_path).stage("base")
    save_hf(build_model(cfg, seed=0), stage.hf, tokenizer=tokenizer)
    return stage.root


def test_token_losses_average_to_the_model_loss(stage_dir: Path) -> None:
    model, tokenizer = load_for_probing(stage_dir)
    losses = token_losses(model, tokenizer, "the lazy dog jumps over the quick fox")
    ids = tokenizer("the lazy dog jumps over the quick fox", return_tensors="pt").input_ids
    with torch.no_grad():
        expected = model(ids, labels=ids).loss.item()
    assert losses["loss"].mean() == pytest.approx(expected, rel=1e-5)
    assert list(losses["position"]) == list(range(1, ids.shape[1]))
    token_loss_figure(losses)


def test_greedy_generation_is_deterministic(stage_dir: Path) -> None:
    model, tokenizer = load_for_probing(stage_dir)
    first = generate(model, tokenizer, "the quick", max_new_tokens=8, temperature=0)
    assert first == generate(model, tokenizer, "the quick", max_new_tokens=8, temperature=0)
    assert generate(model, tokenizer, "the quick", max_new_tokens=8, seed=3) == generate(
        model, tokenizer, "the quick", max_new_tokens=8, seed=3
    )


def test_find_hf_folder_errors_clearly(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no HF model here"):
        find_hf_folder(tmp_path)


def test_token_losses_needs_two_tokens(stage_dir: Path) -> None:
    model, tokenizer = load_for_probing(stage_dir)
    with pytest.raises(ConfigError, match="at least two tokens"):
        token_losses(model, tokenizer, "the")


@pytest.mark.slow
def test_the_explore_notebook_runs_on_a_stage(stage_dir: Path, tmp_path: Path) -> None:
    write_stage(tmp_path, "base", {}, 3.0, 0.3, (1000, 1000), 100)  # metrics beside the model
    parameters = {"model_path": str(stage_dir), "run_dir": str(tmp_path), "max_new_tokens": 4}
    out = execute_notebook(NOTEBOOKS_DIR / "05_explore.ipynb", tmp_path / "out.ipynb", parameters)
    outputs = [
        o for cell in nbformat.read(out, as_version=4).cells for o in cell.get("outputs", [])
    ]
    text = "".join(o.get("text", "") for o in outputs)
    assert text.startswith("The king said")  # the prompt and its continuation
    tables = [o["data"]["text/plain"] for o in outputs if "text/html" in o.get("data", {})]
    assert "code" in tables[0] and "english" in tables[0]  # last validation by domain
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 1  # the token losses, drawn once
