"""The schema of params/models/: a Llama architecture, in HF LlamaConfig's names."""

from __future__ import annotations

import math
from typing import ClassVar, Literal

from pydantic import (
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationInfo,
    field_validator,
)

from tinylab.config.loader import Schema


class ModelConfig(Schema):
    """A Llama architecture, in HF LlamaConfig's names (TinyLlama: docs/PAPER.md, 'Model')."""

    params_kind: ClassVar[str] = "models"

    vocab_size: PositiveInt = Field(description="tokenizer vocabulary size")
    hidden_size: PositiveInt = Field(description="model width d")
    intermediate_size: PositiveInt = Field(description="SwiGLU inner width")
    num_hidden_layers: PositiveInt = Field(description="decoder blocks L")
    num_attention_heads: PositiveInt = Field(description="query heads")
    num_key_value_heads: PositiveInt = Field(description="key/value heads (GQA)")
    max_position_embeddings: PositiveInt = Field(description="context length the model supports")
    rms_norm_eps: PositiveFloat = Field(1e-5, description="RMSNorm epsilon")
    rope_theta: PositiveFloat = Field(10000.0, description="RoPE base")
    tie_word_embeddings: bool = Field(False, description="share embedding and lm_head weights")
    bos_token_id: NonNegativeInt = Field(1, description="beginning-of-sequence id")
    eos_token_id: NonNegativeInt = Field(2, description="end-of-sequence id")
    init_std: PositiveFloat | None = Field(
        None, description="std of embeddings and linears; default sqrt(2 / (5 d))"
    )
    init_std_residual: PositiveFloat | None = Field(
        None, description="std of o_proj and down_proj; default 1 / (sqrt(d) * L)"
    )
    attention: Literal["auto", "sdpa", "eager", "flash_attention_2", "flash_attention_4"] = Field(
        "auto",
        description="attention kernel; auto = flash_attention_4 on a Hopper GPU (H100, H200) "
        "with flash-attn-4 installed (measured fastest there), else flash_attention_2 if "
        "flash-attn is installed and a CUDA GPU is present, else sdpa; decided once when a stage "
        "starts and written into its resolved.yaml; flash_attention_4 = flash-attn-4's CuTe "
        "kernels (causal, no padding)",
    )

    @field_validator("num_attention_heads")
    @classmethod
    def _heads_divide_width(cls, heads: int, info: ValidationInfo) -> int:
        hidden = info.data.get("hidden_size")
        if hidden is not None and hidden % heads:
            raise ValueError(f"must divide hidden_size ({hidden})")
        return heads

    @field_validator("num_key_value_heads")
    @classmethod
    def _kv_heads_divide_heads(cls, kv_heads: int, info: ValidationInfo) -> int:
        heads = info.data.get("num_attention_heads")
        if heads is not None and heads % kv_heads:
            raise ValueError(f"must divide num_attention_heads ({heads})")
        return kv_heads

    @field_validator("bos_token_id", "eos_token_id")
    @classmethod
    def _token_in_vocab(cls, token_id: int, info: ValidationInfo) -> int:
        vocab = info.data.get("vocab_size")
        if vocab is not None and token_id >= vocab:
            raise ValueError(f"must be below vocab_size ({vocab})")
        return token_id

    @property
    def resolved_init_std(self) -> float:
        return self.init_std or math.sqrt(2 / (5 * self.hidden_size))

    @property
    def resolved_init_std_residual(self) -> float:
        return self.init_std_residual or 1 / (math.sqrt(self.hidden_size) * self.num_hidden_layers)
