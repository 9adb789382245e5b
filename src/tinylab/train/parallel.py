"""Processes, devices and the sharded model: FSDP2 per decoder layer plus the root.

More processes (torchrun) shard the model with FSDP2 `fully_shard` over a device mesh: 1-D
(FSDP) by default, 2-D (replicate x shard = HSDP) when `parallel.replicate_nodes` > 1, with a
MixedPrecisionPolicy of bf16 params and fp32 gradient reduction. One process has two paths, an
explicit choice (`parallel.single_process`), both measured in bench/RESULTS.md: `plain` (the
default: notebooks, CPU, the demo) trains the module itself, with bf16 autocast over fp32
weights, no process group and no FSDP copies; `fsdp` (the paper stages) takes the multi-process
path over a one-device mesh and a process group of one, bf16 parameters in compute instead of
autocast's per-use casts (6.6% faster at micro-batch 16 on one H100). The plain path is the same
math as FSDP2 but not the same code below `parallelize`; tests check they agree to 1e-6 in fp32.

Options applied per decoder layer before sharding: activation checkpointing (full: every layer;
selective: every other layer), torch.compile (`compile: model` compiles the whole unsharded
model instead, fusing across layers and into the loss; under FSDP2 it is a ConfigError; compiled
graphs take each output's gradient in that output's strides, torch 2.13's default), and
the Liger-Kernel ops `parallel.liger` lists (fused RMSNorm, RoPE, SwiGLU, linear cross-entropy)
when the package is installed; lm_head stays in the root FSDP unit. `precision: fp8` swaps the
Linear layers (all but `parallel.fp8.keep_bf16`'s: lm_head by default) for torchao's
Float8Linear before compile and sharding: float8 matmuls with dynamic scales, bf16 elsewhere,
fp32 master weights (`fp8.bf16_inputs`' layers, down_proj by default: only the input-gradient
matmul in float8); with `fp8.all_gather` FSDP2 gathers those weights in float8. A
peft wrapper (LoRA) is looked through: its Llama is what is sharded. `fused_projections` gives
each layer one matmul for q, k and v and one for gate and up, over the same parameters
(tinylab.train.fused). Under gradient accumulation FSDP2 reduces gradients only in a step's last
backward, and with `reshard_after_backward: false` keeps the gathered parameters between its
micro-batches (`prepare_micro_batch`). `compute_context` wraps each forward (and so the backward
it records) in bf16 autocast for the unsharded model and in the SDPA backend that
`parallel.sdpa_backend` picks.

    torchrun --nproc-per-node 2 -m tinylab.train --config resolved.yaml --run-dir RUN
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch._functorch import config as functorch_config
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

from tinylab.config.loader import ConfigError
from tinylab.config.stage import Float8Config, ParallelConfig
from tinylab.train.fused import fuse_projections


@dataclass
class Distributed:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    mesh: DeviceMesh | None
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """Mean of a tensor over ranks (in place on a copy)."""
        value = value.detach().clone()
        if self.world_size > 1:
            dist.all_reduce(value, op=dist.ReduceOp.AVG if value.is_cuda else dist.ReduceOp.SUM)
            if not value.is_cuda:
                value /= self.world_size
        return value

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        value = value.detach().clone()
        if self.world_size > 1:
            dist.all_reduce(value)
        return value

    def agree(self, ok: bool) -> bool:
        """Whether `ok` holds on every rank (collective), so all ranks take the same branch."""
        if self.world_size == 1:
            return ok
        return not self.sum(torch.tensor(0.0 if ok else 1.0, device=self.device)).item()


def init_distributed(parallel: ParallelConfig) -> Distributed:
    """Join the torchrun job named by the environment (or run alone) and build the mesh."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    check_parallel(parallel, world)
    device = _device(parallel, local_rank)
    if world == 1 and parallel.single_process == "plain":
        return Distributed(0, 1, 0, device, None)
    owns = not dist.is_initialized()
    if owns:
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        if world == 1:  # no torchrun: a process group of one, rendezvous in memory
            kwargs.update(store=dist.HashStore(), rank=0, world_size=1)
        dist.init_process_group(backend, **kwargs)
    replicas = parallel.replicate_nodes
    if replicas == 1:
        mesh = init_device_mesh(device.type, (world,), mesh_dim_names=("shard",))
    else:
        shape = (replicas, world // replicas)
        mesh = init_device_mesh(device.type, shape, mesh_dim_names=("replicate", "shard"))
    return Distributed(rank, world, local_rank, device, mesh, owns)


def check_parallel(parallel: ParallelConfig, world_size: int) -> None:
    """ConfigError for options that cannot run on `world_size` processes."""
    if world_size % parallel.replicate_nodes:
        raise ConfigError(
            f"parallel.replicate_nodes = {parallel.replicate_nodes} must divide the world size "
            f"({world_size} processes)"
        )
    sharded = world_size > 1 or parallel.single_process == "fsdp"
    if parallel.compile == "model" and sharded:
        raise ConfigError(
            "parallel.compile = 'model' compiles the whole unsharded model, but this run shards "
            f"it with FSDP2 ({world_size} process(es), single_process: "
            f"{parallel.single_process}); use compile: layers"
        )


def shutdown(ctx: Distributed) -> None:
    """Leave the process group if this module created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def _device(parallel: ParallelConfig, local_rank: int) -> torch.device:
    want = parallel.device
    if want == "cuda" and not torch.cuda.is_available():
        raise ConfigError("parallel.device = 'cuda' but no CUDA GPU is visible")
    if want == "cpu" or (want == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def parallelize(model: nn.Module, parallel: ParallelConfig, ctx: Distributed) -> nn.Module:
    """Apply kernels (Liger, float8, fused projections), activation checkpointing, compile and
    FSDP2 to a built model (the Llama inside a peft wrapper), in place."""
    unwrap = getattr(model, "get_base_model", None)  # duck-typed: full stages never import peft
    model = model if unwrap is None else unwrap()
    liger = bool(parallel.liger) and apply_liger(model, ctx.device, parallel.liger)
    if parallel.precision == "fp8":
        apply_float8(model, parallel.fp8, ctx.device)
    if parallel.fused_projections:
        swiglu = liger and "swiglu" in parallel.liger
        fuse_projections(model, parallel.fused_projections, liger_swiglu=swiglu)
    if parallel.compile != "off":
        expect_gradients_in_output_strides()
    layers = list(model.model.layers)
    for i, layer in enumerate(layers):
        if parallel.activation_checkpointing == "full" or (
            parallel.activation_checkpointing == "selective" and i % 2 == 0
        ):
            checkpoint_layer(layer)
        if parallel.compile == "layers":
            layer.compile()
    if ctx.mesh is None:
        if parallel.compile == "model":
            model.compile()
        return model
    policy = MixedPrecisionPolicy(
        param_dtype=None if parallel.precision == "fp32" else torch.bfloat16,
        reduce_dtype=torch.float32,
    )
    for layer in layers:
        fully_shard(
            layer,
            mesh=ctx.mesh,
            reshard_after_forward=parallel.reshard_after_forward,
            mp_policy=policy,
        )
    fully_shard(
        model, mesh=ctx.mesh, reshard_after_forward=parallel.reshard_after_forward, mp_policy=policy
    )
    return model


def expect_gradients_in_output_strides() -> None:
    """Compiled graphs expect each output's gradient in that output's own strides (torch 2.13's
    default; process-wide). torch 2.11 expects contiguous ones and copies any other: per-layer
    compile breaks the graph at FlashAttention-4, whose dq, dk, dv come back in [B, T, H, D]
    order for q, k, v that leave the graph [B, H, T, D]-shaped, so every layer and micro-batch
    copied them (1.5% of the 1.1B's step on an H200, bench/RESULTS.md). 2.11 lacks 2.13's
    fallback for an output that overlaps itself (an expand()): its backward would fail loudly;
    the decoder layers' graphs have none."""
    functorch_config.guess_tangent_strides_as_outputs = True


def apply_float8(model: nn.Module, fp8: Float8Config, device: torch.device) -> None:
    """Swap the model's Linear layers, except `fp8.keep_bf16`'s, for torchao's Float8Linear
    (float8 matmuls with dynamic scales in forward and backward; weights stay as they are)."""
    major_minor = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    if major_minor is None or major_minor < (8, 9):
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
        raise ConfigError(
            f"parallel.precision = 'fp8' needs a CUDA GPU of compute capability 8.9 or later "
            f"(H100, H200, L40S, RTX 4090); this run is on {where}: use precision: bf16"
        )
    if importlib.util.find_spec("torchao") is None:
        raise ConfigError(
            "parallel.precision = 'fp8' needs torchao (pip install 'tinylab[gpu]'); "
            "use precision: bf16 without it"
        )
    convert_float8(model, fp8)


def convert_float8(model: nn.Module, fp8: Float8Config, *, emulate: bool = False) -> None:
    """The swap itself: `fp8.bf16_inputs` layers with float8 in their input-gradient matmul
    only, then the other eligible layers with `fp8.recipe` in all three matmuls (`emulate`:
    torchao's float8 emulation, which runs anywhere: for tests)."""
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    config = Float8LinearConfig.from_recipe_name(fp8.recipe)
    if fp8.all_gather:
        config = dataclasses.replace(config, enable_fsdp_float8_all_gather=True)
    for role, role_config in (("input_gradient", input_gradient_only()), ("all", config)):
        convert_to_float8_training(
            model, config=dataclasses.replace(role_config, emulate=emulate),
            module_filter_fn=lambda module, name, role=role: float8_role(module, name, fp8) == role,
        )  # fmt: skip


def input_gradient_only():
    """torchao's config for a Linear layer whose input stays in bf16: the forward (input x
    weight) and weight-gradient (output gradient x input) matmuls in bf16, the input-gradient
    matmul (output gradient x weight) in float8 with one scale per tensor."""
    from torchao.float8 import Float8LinearConfig
    from torchao.float8.config import CastConfig, ScalingType

    def off() -> CastConfig:  # one object per operand: torchao sets each one's dtype
        return CastConfig(scaling_type=ScalingType.DISABLED)

    return Float8LinearConfig(
        cast_config_input=off(), cast_config_weight=off(),
        cast_config_input_for_grad_weight=off(), cast_config_grad_output_for_grad_weight=off(),
        cast_config_grad_output=CastConfig(), cast_config_weight_for_grad_input=CastConfig(),
    )  # fmt: skip


def float8_role(module: nn.Module, name: str, fp8: Float8Config) -> str | None:
    """Which of a Linear layer's matmuls run in float8: "all", "input_gradient" (named in
    `fp8.bf16_inputs`), or None: named in `fp8.keep_bf16` (by name or suffix), not a Linear,
    or dimensions that are not multiples of 16 (what float8 matmuls need)."""
    if not isinstance(module, nn.Linear) or module.in_features % 16 or module.out_features % 16:
        return None
    if _names(name, fp8.keep_bf16):
        return None
    return "input_gradient" if _names(name, fp8.bf16_inputs) else "all"


def _names(name: str, names: list[str]) -> bool:
    return any(name == k or name.endswith("." + k) for k in names)


def after_optimizer_step(model: nn.Module, parallel: ParallelConfig) -> None:
    """With float8 all-gather, compute the next step's weight scales for all layers at once (one
    all-reduce) instead of one per layer during the forward."""
    if parallel.precision == "fp8" and parallel.fp8.all_gather:
        from torchao.float8 import precompute_float8_dynamic_scale_for_fsdp

        precompute_float8_dynamic_scale_for_fsdp(model)


def prepare_micro_batch(model: nn.Module, parallel: ParallelConfig, *, last: bool) -> None:
    """Under FSDP2, before a micro-batch: reduce-scatter gradients in its backward only when it
    is the step's `last` (earlier ones accumulate unsharded fp32 gradients locally), and with
    `parallel.reshard_after_backward` off keep the gathered parameters until that last one."""
    root = next((m for m in model.modules() if isinstance(m, FSDPModule)), None)
    if root is not None:  # the outermost FSDP module (inside a peft wrapper for LoRA)
        root.set_requires_gradient_sync(last)
        root.set_reshard_after_backward(last or parallel.reshard_after_backward)


def checkpoint_layer(layer: nn.Module) -> None:
    """Recompute `layer`'s activations in backward; parameter names stay HF's."""
    forward = layer.forward

    def recomputed(*args, **kwargs):
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    layer.forward = recomputed


def apply_liger(model: nn.Module, device: torch.device, ops: list[str]) -> bool:
    """Liger-Kernel's fused Llama `ops` (of LIGER_OPS; `loss` = fused linear cross-entropy) on
    this model; False (with a warning) when unavailable."""
    if importlib.util.find_spec("liger_kernel") is None or device.type != "cuda":
        warnings.warn(
            "parallel.liger is on but liger-kernel is not installed or no GPU is used; "
            "training with the standard kernels",
            stacklevel=2,
        )
        return False
    from liger_kernel.transformers import apply_liger_kernel_to_llama

    apply_liger_kernel_to_llama(
        rope="rope" in ops,
        rms_norm="rms_norm" in ops,
        swiglu="swiglu" in ops,
        cross_entropy=False,
        fused_linear_cross_entropy="loss" in ops,
        model=model,
    )
    return True


SDPA_BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}


@contextlib.contextmanager
def compute_context(parallel: ParallelConfig, ctx: Distributed) -> Iterator[None]:
    """The chosen SDPA backend, and bf16 autocast for the unsharded model (FSDP2's policy casts
    the sharded one)."""
    with contextlib.ExitStack() as stack:
        if parallel.sdpa_backend != "auto":
            stack.enter_context(sdpa_kernel(SDPA_BACKENDS[parallel.sdpa_backend]))
        if parallel.precision != "fp32" and ctx.mesh is None:
            stack.enter_context(torch.autocast(ctx.device.type, dtype=torch.bfloat16))
        yield


def grad_norm_and_clip(model: nn.Module, max_norm: float | None) -> torch.Tensor:
    """Global L2 norm of the gradients (over all shards), clipping to `max_norm` if given."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.get_total_norm([p.grad for p in params], norm_type=2.0)
    if max_norm is not None:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm.full_tensor() if isinstance(norm, DTensor) else norm
