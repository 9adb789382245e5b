"""parallel.fused_projections (tinylab.train.fused): one matmul for q, k, v and one for gate, up
computes the same logits, loss and gradients as transformers' Llama, over the same parameters,
trains the same losses (plain and FSDP2), and is refused where it cannot serve (float8, LoRA)."""

from __future__ import annotations

import copy
import json
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from _train_fixtures import MODEL, STAGE, new_run, stage_config, train_records
from torch._dynamo.utils import counters

from tinylab.config.loader import ConfigError, deep_merge, load_config
from tinylab.config.model import ModelConfig
from tinylab.config.stage import (
    FUSED_PROJECTIONS,
    LLAMA_BLOCK_LINEARS,
    ParallelConfig,
    StageConfig,
)
from tinylab.model import build_model
from tinylab.train import run_stage
from tinylab.train.fused import fuse_projections

pytestmark = pytest.mark.usefixtures("one_thread")
GROUPS = [["qkv"], ["gate_up"], ["qkv", "gate_up"]]


def tiny_pair(attention: str, groups: list[str], *, liger_swiglu: bool = False) -> tuple:
    """A tiny Llama and a copy of it with `groups` fused."""
    plain = build_model(ModelConfig(**{**MODEL, "attention": attention}), seed=0)
    fused = copy.deepcopy(plain)
    fuse_projections(fused, groups, liger_swiglu=liger_swiglu)
    return plain, fused


def run(model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Logits, loss and every parameter's gradient of one forward and backward."""
    model.zero_grad()
    out = model(input_ids=ids, labels=ids, use_cache=False)
    out.loss.backward()
    return out.logits, out.loss, {n: p.grad for n, p in model.named_parameters()}


def record_calls(model: torch.nn.Module) -> set[str]:
    """The short names of the Linear layers that run (filled as the model runs)."""
    called: set[str] = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            short = name.rpartition(".")[2]
            module.register_forward_hook(lambda *_, short=short: called.add(short))
    return called


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("groups", GROUPS, ids="+".join)
def test_fused_model_computes_the_same_logits_loss_and_gradients(attention, groups) -> None:
    plain, fused = tiny_pair(attention, groups)
    called = record_calls(fused)
    ids = torch.randint(0, MODEL["vocab_size"], (2, 16), generator=torch.Generator().manual_seed(0))
    want_logits, want_loss, want_grads = run(plain, ids)
    logits, loss, grads = run(fused, ids)
    torch.testing.assert_close(logits, want_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, want_loss, rtol=1e-6, atol=1e-6)
    assert grads.keys() == want_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, want_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    fused_names = {n for g in groups for n in FUSED_PROJECTIONS[g]}
    assert called == set(LLAMA_BLOCK_LINEARS) - fused_names | {"lm_head"}
    assert list(fused.state_dict()) == list(plain.state_dict())


def test_compiled_fused_layers_share_one_graph_without_breaks() -> None:
    """As parallelize compiles them (per layer; dynamo's tracing and autograd, without inductor's
    code generation): no graph break, one graph for every layer, the same loss."""
    _, fused = tiny_pair("sdpa", ["qkv", "gate_up"])
    ids = torch.arange(24).view(2, 12)
    want = fused(input_ids=ids, labels=ids, use_cache=False).loss
    torch._dynamo.reset()
    counters.clear()
    for layer in fused.model.layers:
        layer.compile(backend="aot_eager", fullgraph=True)
    loss = fused(input_ids=ids, labels=ids, use_cache=False).loss
    loss.backward()
    assert counters["stats"]["unique_graphs"] == 1
    torch.testing.assert_close(loss, want)


def test_fused_attention_refuses_a_kv_cache() -> None:
    _, fused = tiny_pair("sdpa", ["qkv"])
    with pytest.raises(ValueError, match="parallel.fused_projections serves training"):
        fused(input_ids=torch.zeros(1, 4, dtype=torch.long), use_cache=True)


def fake_liger(monkeypatch, swiglu: types.ModuleType) -> None:
    for name in ("liger_kernel", "liger_kernel.ops"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "liger_kernel.ops.swiglu", swiglu)


def test_liger_swiglu_gets_the_one_gate_up_output(monkeypatch) -> None:
    """Liger's fused-gate-up kernel (here its math in torch, with liger 0.8.5's shapes: the
    gradient comes back as [rows, 2I] whatever the input's shape) takes [gate | up] whole;
    the loss and gradients are the unfused model's."""
    seen: list[tuple] = []

    class Fused(torch.autograd.Function):
        @staticmethod
        def forward(ctx, y: torch.Tensor) -> torch.Tensor:
            seen.append(tuple(y.shape))
            rows = y.reshape(-1, y.shape[-1])
            ctx.save_for_backward(rows)
            gate, up = rows.chunk(2, dim=-1)
            return (F.silu(gate) * up).view(*y.shape[:-1], -1)

        @staticmethod
        def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
            (rows,) = ctx.saved_tensors
            with torch.enable_grad():
                rows = rows.detach().requires_grad_()
                gate, up = rows.chunk(2, dim=-1)
                out = F.silu(gate) * up
                (grad_rows,) = torch.autograd.grad(out, rows, grad.reshape(out.shape))
            return grad_rows  # as liger's kernel: rows, not the input's shape

    module = types.ModuleType("liger_kernel.ops.swiglu")
    module.LigerFusedGateUpSiLUMulFunction = Fused
    fake_liger(monkeypatch, module)
    plain, fused = tiny_pair("sdpa", ["gate_up"], liger_swiglu=True)
    ids = torch.arange(12).view(1, 12)
    (logits, loss, grads), (want_logits, want_loss, want_grads) = run(fused, ids), run(plain, ids)
    torch.testing.assert_close(logits, want_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, want_grads[name], rtol=1e-4, atol=1e-5, msg=name)
    assert seen == [(12, 2 * MODEL["intermediate_size"])] * MODEL["num_hidden_layers"]


def test_an_older_liger_without_the_fused_kernel_is_a_config_error(monkeypatch) -> None:
    fake_liger(monkeypatch, types.ModuleType("liger_kernel.ops.swiglu"))
    with pytest.raises(ConfigError, match=r"fused_projections: \[gate_up\] with parallel.liger"):
        tiny_pair("sdpa", ["gate_up"], liger_swiglu=True)


@pytest.mark.parametrize("single_process", ["plain", "fsdp"])
def test_fused_training_runs_the_same_losses(tmp_path, prepared, single_process) -> None:
    def losses(name: str, groups: list[str]) -> list[float]:
        parallel = {"precision": "fp32", "single_process": single_process}
        stage = stage_config(
            max_tokens=2048,
            checkpoint={"every_steps": 100},
            parallel={**parallel, "fused_projections": groups},
        )
        run = new_run(tmp_path, prepared, name)
        run_stage(stage, run, progress=False)
        return [r["loss"] for r in train_records(run)]

    assert losses("fused", ["qkv", "gate_up"]) == pytest.approx(losses("plain", []), abs=1e-5)


def test_an_unused_option_dumps_as_before_and_a_used_one_round_trips() -> None:
    assert "fused_projections" not in ParallelConfig().model_dump()
    parallel = ParallelConfig(fused_projections=["gate_up", "qkv"])
    assert ParallelConfig.model_validate(parallel.model_dump(mode="json")) == parallel


def load_stage(tmp_path, **overrides) -> StageConfig:
    path = tmp_path / "stage.yaml"
    path.write_text(json.dumps(deep_merge(STAGE, overrides)))
    return load_config(path, StageConfig)


LORA = {"init_from": {"stage": "parent", "carry": ["weights"]}}
REFUSED = [
    ({"parallel": {"precision": "fp8", "fused_projections": ["qkv"]}},
     r"parallel.fused_projections = \['qkv'\]: cannot run with precision: fp8"),
    ({"parallel": {"fused_projections": ["qkv", "qkv"]}},
     r"parallel.fused_projections = \['qkv', 'qkv'\]: each group may appear once"),
    ({"parallel": {"fused_projections": ["qk"]}}, r"parallel.fused_projections.0 = 'qk'"),
    ({**LORA, "adapter": "lora", "parallel": {"fused_projections": ["qkv"]}},
     r"fused_projections = \['qkv'\] computes q_proj, k_proj, v_proj .* LoRA adapter on "
     r"q_proj, k_proj, v_proj \(adapter.target_modules\)"),
    ({**LORA, "adapter": {"target_modules": ["up_proj"]},
      "parallel": {"fused_projections": ["qkv", "gate_up"]}}, r"LoRA adapter on up_proj "),
]  # fmt: skip


@pytest.mark.parametrize(("overrides", "message"), REFUSED)
def test_what_fused_projections_cannot_serve_is_a_config_error(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_stage(tmp_path, **overrides)


def test_a_lora_adapter_beside_the_fused_layers_is_allowed(tmp_path) -> None:
    adapter = {"target_modules": ["o_proj", "down_proj"]}
    parallel = {"fused_projections": ["qkv", "gate_up"]}
    stage = load_stage(tmp_path, **LORA, adapter=adapter, parallel=parallel)
    assert stage.parallel.fused_projections == ["qkv", "gate_up"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (`pytest -m gpu`)")
@pytest.mark.parametrize("liger", [["loss"], ["rms_norm", "rope", "swiglu", "loss"]], ids=str)
def test_fused_training_on_gpu_runs_the_same_losses(tmp_path, prepared, liger) -> None:
    """The paper's kernels (per-layer compile, FSDP2 on one GPU, bf16; Liger's when installed):
    24 steps fused and not, same batches and init, per-step losses within 0.05 nats (as
    test_gpu.py allows bf16 kernels)."""
    parallel = {"precision": "bf16", "compile": "layers", "liger": liger,
                "single_process": "fsdp", "reshard_after_forward": False}  # fmt: skip
    model = {"hidden_size": 128, "intermediate_size": 352, "max_position_embeddings": 64}
    losses = {}
    for groups in ([], ["qkv", "gate_up"]):
        stage = stage_config(
            model=model, max_tokens=24 * STAGE["global_batch_tokens"],
            checkpoint={"every_steps": 100}, parallel={**parallel, "fused_projections": groups},
        )  # fmt: skip
        run = new_run(tmp_path, prepared, "+".join(groups) or "plain")
        run_stage(stage, run, progress=False)
        losses[bool(groups)] = [r["loss"] for r in train_records(run)]
    print("max |loss diff|:", max(abs(a - b) for a, b in zip(*losses.values(), strict=True)))
    assert losses[True] == pytest.approx(losses[False], abs=0.05)
