"""Helpers of the model tests: a small Llama config that builds in milliseconds on a CPU."""

from __future__ import annotations

from tinylab.config.model import ModelConfig

SMALL = ModelConfig(
    vocab_size=300,
    hidden_size=64,
    intermediate_size=176,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    attention="sdpa",
)
