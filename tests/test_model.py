"""tinylab.model: the paper's sizes, TinyLlama's init, and HF interchange."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from _model_fixtures import SMALL
from transformers import AutoModelForCausalLM

from tinylab.config.loader import ConfigError
from tinylab.model import (
    build_model,
    count_parameters,
    flops_per_token,
    load_hf,
    load_preset,
    resolve_attention,
    save_hf,
    with_resolved_attention,
)


def test_tinyllama_sizes_match_the_paper() -> None:
    cfg = load_preset("tinyllama-1.1b")
    counts = count_parameters(cfg)
    assert counts["params"] == 1_100_048_384
    assert counts["non_embedding"] == 968_976_384
    assert flops_per_token(cfg, 2048) == 7_314_370_560  # 7.314 GFLOP/token (docs/PAPER.md)


def test_tinyllama_init_stds_are_the_formulas() -> None:
    cfg = load_preset("tinyllama-1.1b")
    assert cfg.resolved_init_std == pytest.approx(math.sqrt(2 / (5 * 2048)), rel=1e-3)
    assert cfg.resolved_init_std_residual == pytest.approx(1 / (math.sqrt(2048) * 22), rel=1e-3)


def test_parameter_count_agrees_with_a_real_model() -> None:
    model = build_model(SMALL)
    assert count_parameters(SMALL)["params"] == sum(p.numel() for p in model.parameters())


def test_init_uses_two_stds_and_unit_norms() -> None:
    cfg = SMALL.model_copy(
        update={"hidden_size": 256, "intermediate_size": 704, "vocab_size": 4000}
    )
    model = build_model(cfg, seed=0)
    layer = model.model.layers[0]
    assert layer.self_attn.q_proj.weight.std().item() == pytest.approx(
        cfg.resolved_init_std, rel=0.05
    )
    assert model.model.embed_tokens.weight.std().item() == pytest.approx(
        cfg.resolved_init_std, rel=0.05
    )
    residual = cfg.resolved_init_std_residual
    assert layer.self_attn.o_proj.weight.std().item() == pytest.approx(residual, rel=0.05)
    assert layer.mlp.down_proj.weight.std().item() == pytest.approx(residual, rel=0.05)
    assert torch.all(layer.input_layernorm.weight == 1)
    assert not model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()


def test_same_seed_same_weights() -> None:
    a, b = build_model(SMALL, seed=1), build_model(SMALL, seed=1)
    c = build_model(SMALL, seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)


def test_meta_build_allocates_nothing() -> None:
    model = build_model(load_preset("tinyllama-1.1b"), device="meta")
    assert all(p.is_meta for p in model.parameters())


def test_hf_round_trip_gives_identical_logits(tmp_path: Path) -> None:
    model = build_model(SMALL, seed=0).eval()
    folder = save_hf(model, tmp_path / "hf")
    assert (folder / "model.safetensors").is_file()
    ids = torch.randint(0, SMALL.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        assert torch.equal(plain(ids).logits, expected)
        assert torch.equal(load_hf(folder, attention="sdpa").eval()(ids).logits, expected)


def test_save_hf_replaces_an_old_export(tmp_path: Path) -> None:
    save_hf(build_model(SMALL, seed=0), tmp_path / "hf")
    save_hf(build_model(SMALL, seed=1), tmp_path / "hf")
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]  # no staging folder left
    reloaded = load_hf(tmp_path / "hf", attention="sdpa")
    assert torch.equal(reloaded.lm_head.weight, build_model(SMALL, seed=1).lm_head.weight)


def test_load_hf_rejects_a_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no config.json"):
        load_hf(tmp_path)


def test_attention_backends() -> None:
    assert resolve_attention("sdpa") == "sdpa"
    assert resolve_attention("eager") == "eager"
    if not torch.cuda.is_available():
        assert resolve_attention("auto") == "sdpa"
        with pytest.raises(ConfigError, match="needs the flash-attn package"):
            resolve_attention("flash_attention_2")
    with pytest.raises(ConfigError, match="allowed"):
        resolve_attention("xformers")


def test_sdpa_agrees_with_eager_attention() -> None:
    ids = torch.randint(0, SMALL.vocab_size, (2, 48), generator=torch.Generator().manual_seed(0))
    eager = build_model(SMALL.model_copy(update={"attention": "eager"}), seed=0).eval()
    sdpa = build_model(SMALL.model_copy(update={"attention": "sdpa"}), seed=0).eval()
    # two implementations (HF's matmul-softmax, torch's fused kernel), not one model twice
    assert (eager.config._attn_implementation, sdpa.config._attn_implementation) == (
        "eager",
        "sdpa",
    )
    with torch.no_grad():
        want, got = eager(ids).logits, sdpa(ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_attention_is_resolved_once_to_a_concrete_kernel() -> None:
    resolved = with_resolved_attention(SMALL.model_copy(update={"attention": "auto"}))
    assert resolved.attention == resolve_attention("auto") != "auto"
    assert with_resolved_attention(SMALL) == SMALL  # a concrete choice stays


def test_unknown_preset_lists_presets() -> None:
    with pytest.raises(ConfigError, match="tinyllama-1.1b"):
        load_preset("gpt-5")
