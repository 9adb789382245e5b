"""Fused projections (`parallel.fused_projections`): each decoder layer computes q, k and v with
one matmul, and gate and up with one, over the parameters as they are.

TinyLlama's k_proj and v_proj are 2048 -> 256 GEMMs, too small to fill an H200; one 2048 -> 2560
GEMM serves all three, and one 2048 -> 11264 GEMM serves gate_proj and up_proj. The weights are
concatenated inside each forward (under FSDP2 a layer's parameters are unsharded there), so the
parameter names, checkpoints, resume and the HF export stay unchanged, on any number of GPUs;
the copy costs 10 MB (qkv) and 46 MB (gate-up) per layer and forward of the 1.1B in bf16, small
beside the GEMMs, and the matmul keeps it for the backward (up to 1.25 GB more peak memory over
22 layers, unless torch.compile recomputes the copy there). The new forwards are transformers'
LlamaAttention and LlamaMLP forwards (5.17 to 5.24) with the one matmul, for training: a forward
with a KV cache is refused. With Liger's SwiGLU on, its fused-gate-up kernel reads both halves
of the one output in place, given as rows (its backward returns the gradient as rows).

    python bench/throughput.py --variants default default+fuse default+fuse-qkv \
        default+fuse-gate-up
"""

from __future__ import annotations

import importlib
import types
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.llama import modeling_llama

from tinylab.config.loader import ConfigError
from tinylab.config.stage import FUSED_PROJECTIONS


def fuse_projections(model: nn.Module, groups: list[str], *, liger_swiglu: bool) -> None:
    """Give each decoder layer of `model` (a LlamaForCausalLM) forwards that compute the `groups`
    (qkv, gate_up) as one matmul each; `liger_swiglu`: Liger's SwiGLU is on (apply_liger)."""
    swiglu = _liger_fused_swiglu() if liger_swiglu and "gate_up" in groups else None
    mlp_forward = _mlp_forward(swiglu)
    for layer in model.model.layers:
        owners = {"qkv": layer.self_attn, "gate_up": layer.mlp}
        for group in groups:
            linears = [getattr(owners[group], name) for name in FUSED_PROJECTIONS[group]]
            # the config refuses what replaces them (LoRA, float8); biases are never built
            assert all(type(ln) is nn.Linear and ln.bias is None for ln in linears), linears
        if "qkv" in groups:
            layer.self_attn.forward = types.MethodType(_attention_forward, layer.self_attn)
        if "gate_up" in groups:
            layer.mlp.forward = types.MethodType(mlp_forward, layer.mlp)


def _one_matmul(x: torch.Tensor, *linears: nn.Linear) -> torch.Tensor:
    """The outputs of the Linear layers (no biases) side by side, from one matmul."""
    return F.linear(x, torch.cat([linear.weight for linear in linears]))


def _attention_forward(
    self: nn.Module,
    hidden_states: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    attention_mask: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """LlamaAttention.forward with q, k and v from one matmul (no KV cache)."""
    if kwargs.pop("cache", None) is not None or kwargs.pop("past_key_values", None) is not None:
        raise ValueError("parallel.fused_projections serves training: no KV cache")
    input_shape = hidden_states.shape[:-1]
    hidden_shape = (*input_shape, -1, self.head_dim)
    projections = (self.q_proj, self.k_proj, self.v_proj)
    sizes = [linear.out_features for linear in projections]
    query, key, value = (
        states.view(hidden_shape).transpose(1, 2)
        for states in _one_matmul(hidden_states, *projections).split(sizes, dim=-1)
    )
    cos, sin = position_embeddings
    # looked up at call time: Liger's RoPE replaces the module's function
    query, key = modeling_llama.apply_rotary_pos_emb(query, key, cos, sin)
    attention = modeling_llama.ALL_ATTENTION_FUNCTIONS.get_interface(
        self.config._attn_implementation, modeling_llama.eager_attention_forward
    )
    output, weights = attention(
        self,
        query,
        key,
        value,
        attention_mask,
        dropout=0.0 if not self.training else self.attention_dropout,
        scaling=self.scaling,
        **kwargs,
    )
    return self.o_proj(output.reshape(*input_shape, -1).contiguous()), weights


def _mlp_forward(swiglu: type[torch.autograd.Function] | None) -> Callable:
    """LlamaMLP.forward with gate and up from one matmul; `swiglu` (Liger's kernel) takes the
    one [gate | up] output whole, else silu(gate) * up."""

    def forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
        gate_up = _one_matmul(x, self.gate_proj, self.up_proj)
        if swiglu is not None:  # given rows: its backward returns [rows, 2I] (liger 0.8.5)
            rows = swiglu.apply(gate_up.reshape(-1, gate_up.shape[-1]))
            return self.down_proj(rows.view(*gate_up.shape[:-1], -1))
        gate, up = gate_up.chunk(2, dim=-1)
        return self.down_proj(self.act_fn(gate) * up)

    return forward


def _liger_fused_swiglu() -> type[torch.autograd.Function]:
    """Liger's SwiGLU over a fused [gate | up] tensor (no copies of the halves)."""
    fused = getattr(
        importlib.import_module("liger_kernel.ops.swiglu"), "LigerFusedGateUpSiLUMulFunction", None
    )
    if fused is None:
        raise ConfigError(
            "parallel.fused_projections: [gate_up] with parallel.liger: [swiglu] needs a "
            "liger-kernel with LigerFusedGateUpSiLUMulFunction (0.8.5 has it): upgrade it, or "
            "drop swiglu from liger (torch.compile fuses silu * up) or gate_up from "
            "fused_projections"
        )
    return fused
