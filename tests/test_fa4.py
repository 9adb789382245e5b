"""`model.attention: flash_attention_4` (issue 21): FlashAttention-4's kernels (flash-attn-4's
`flash_attn.cute`) through tinylab's adapter in transformers' attention registry.

On the CPU a fake `flash_attn.cute` stands in (its `flash_attn_func` computes SDPA in FA4's
layouts and records its arguments): the adapter's transposes, GQA heads, causal flag and
scaling, the refusals, that flash-attn-4 does not pass for FlashAttention-2, and that a model
compiled per layer takes FA4's gradients without copying them. On a CUDA GPU with
flash-attn-4 installed (`pytest -m gpu`): its kernels against SDPA, forward and backward, and in
the profile."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import re
import subprocess
import sys
import types
import zipfile
from pathlib import Path
from typing import get_args

import pytest
import torch
import torch.nn.functional as F
from _model_fixtures import SMALL
from torch._functorch import config as functorch_config
from torch.profiler import ProfilerActivity, profile

from tinylab.config.loader import ConfigError
from tinylab.config.model import ModelConfig
from tinylab.config.stage import ParallelConfig
from tinylab.model import (
    ATTENTION_BACKENDS,
    build_model,
    fa4_attention_forward,
    load_hf,
    resolve_attention,
    save_hf,
)
from tinylab.train.parallel import Distributed, parallelize
from tinylab.train.profiling import kernel_kinds

ROOT = Path(__file__).resolve().parents[1]
BENCH, GPU_ENV = ROOT / "bench" / "throughput.py", ROOT / "scripts" / "gpu_env.sh"
# FA4's CuTe DSL kernel names as the profiler shows them (Dao-AILab/flash-attention#2564 quotes
# them; sm90 as on the H200)
FA4_KERNELS = re.compile(r"flash_attncuteflash_(fwd|bwd)\w*FlashAttention(Forward|Backward)")
# fake_fa4 makes a GPU "present"; inductor, compiling for the CPU, needs the truth
REAL_CUDA_IS_AVAILABLE = torch.cuda.is_available


def _module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)  # find_spec sees it installed
    module.__dict__.update(attrs)
    return module


def _sdpa_in_fa4_layout(q, k, v, scale, causal):
    out = F.scaled_dot_product_attention(
        *(t.transpose(1, 2) for t in (q, k, v)), is_causal=causal, scale=scale, enable_gqa=True
    )
    return out.transpose(1, 2)


class _AttentionInFA4Layouts(torch.autograd.Function):
    """SDPA with FA4's memory layouts: its output contiguous in [B, T, H, D], and dq, dk, dv
    allocated like q, k, v (`torch.empty_like`, as flash_attn.cute's backward does)."""

    @staticmethod
    def forward(ctx, q, k, v, scale, causal):
        ctx.save_for_backward(q, k, v)
        ctx.scale, ctx.causal = scale, causal
        return _sdpa_in_fa4_layout(q, k, v, scale, causal).contiguous()

    @staticmethod
    def backward(ctx, dout):
        q, k, v = ctx.saved_tensors
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_() for t in (q, k, v)]
            out = _sdpa_in_fa4_layout(*leaves, ctx.scale, ctx.causal)
            grads = torch.autograd.grad(out, leaves, dout)
        return (
            *(torch.empty_like(t).copy_(g) for t, g in zip((q, k, v), grads, strict=True)),
            None,
            None,
        )


@pytest.fixture
def fake_fa4(monkeypatch):
    """flash-attn-4 as installed (`flash_attn` with only `.cute`), a CUDA GPU "present"; the
    calls of its `flash_attn_func`."""
    calls = []

    def flash_attn_func(q, k, v, softmax_scale=None, causal=False):
        calls.append({"shapes": (q.shape, k.shape, v.shape), "scale": softmax_scale,
                      "causal": causal})  # fmt: skip
        out = _AttentionInFA4Layouts.apply(q, k, v, softmax_scale, causal)
        return out, torch.zeros(q.shape[0], q.shape[2], q.shape[1])

    cute = _module("flash_attn.cute", flash_attn_func=flash_attn_func)
    monkeypatch.setitem(sys.modules, "flash_attn", _module("flash_attn", cute=cute))
    monkeypatch.setitem(sys.modules, "flash_attn.cute", cute)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    return calls


def test_the_adapter_runs_fa4_in_its_layout_and_matches_sdpa(fake_fa4) -> None:
    ids = torch.randint(0, SMALL.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    fa4 = build_model(SMALL.model_copy(update={"attention": "flash_attention_4"}), seed=0)
    sdpa = build_model(SMALL, seed=0)
    assert fa4.config._attn_implementation == "tinylab_fa4"  # not transformers' own FA4 path
    losses = [m(ids, labels=ids).loss for m in (fa4, sdpa)]
    for loss in losses:
        loss.backward()
    torch.testing.assert_close(losses[0], losses[1], atol=1e-6, rtol=1e-6)
    for a, b in zip(fa4.parameters(), sdpa.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5)
    head_dim = SMALL.hidden_size // SMALL.num_attention_heads
    q_shape, kv_shape = torch.Size([2, 24, 4, head_dim]), torch.Size([2, 24, 2, head_dim])
    assert fake_fa4 == [{"shapes": (q_shape, kv_shape, kv_shape), "scale": head_dim**-0.5,
                         "causal": True}] * SMALL.num_hidden_layers  # fmt: skip


def test_the_adapter_refuses_a_padding_mask_and_dropout(fake_fa4) -> None:
    model = build_model(SMALL.model_copy(update={"attention": "flash_attention_4"}), seed=0)
    ids = torch.randint(0, SMALL.vocab_size, (2, 8))
    model(ids, attention_mask=torch.ones_like(ids))  # no padding: no mask reaches FA4
    padded = torch.ones_like(ids)
    padded[0, :3] = 0
    with pytest.raises(ConfigError, match="padding mask.*attention: sdpa"):
        model(ids, attention_mask=padded)
    q = torch.zeros(1, 4, 8, 16)
    with pytest.raises(ConfigError, match="without dropout"):
        fa4_attention_forward(torch.nn.Module(), q, q, q, None, dropout=0.1)


def test_the_adapter_refuses_packed_position_ids_and_takes_plain_ones(fake_fa4) -> None:
    model = build_model(SMALL.model_copy(update={"attention": "flash_attention_4"}), seed=0)
    ids = torch.randint(0, SMALL.vocab_size, (2, 8))
    model(ids, position_ids=torch.arange(8).expand(2, -1))
    with pytest.raises(ConfigError, match="packed sequences.*attention: sdpa"):
        model(ids, position_ids=torch.arange(4).repeat(2).expand(2, -1))  # two documents a row


def test_a_static_kv_cache_is_refused_and_a_dynamic_one_runs(fake_fa4) -> None:
    from transformers import DynamicCache, StaticCache

    model = build_model(SMALL.model_copy(update={"attention": "flash_attention_4"}), seed=0)
    ids = torch.randint(0, SMALL.vocab_size, (1, 8))
    model(ids, use_cache=True, cache=DynamicCache(config=model.config))
    static = StaticCache(config=model.config, max_cache_len=16)  # unfilled slots need a mask
    with pytest.raises(ConfigError, match="static KV cache.*attention: sdpa"):
        model(ids, use_cache=True, cache=static)


def test_a_model_loaded_from_an_hf_folder_on_fa4_refuses_padding(fake_fa4, tmp_path) -> None:
    save_hf(build_model(SMALL, seed=0), tmp_path / "hf")
    model = load_hf(tmp_path / "hf", attention="flash_attention_4")
    ids = torch.randint(0, SMALL.vocab_size, (2, 8))
    padded = torch.ones_like(ids)
    padded[1, :2] = 0
    with pytest.raises(ConfigError, match="padding mask"):
        model(ids, attention_mask=padded)


def test_no_mask_is_prepared_for_fa4_so_no_packing_check_syncs(fake_fa4, monkeypatch) -> None:
    """Training without a KV cache, transformers looks for packed sequences in the position ids
    it makes itself for an attention with a mask function (a host sync in each forward on a
    GPU); FA4's has none."""
    import transformers.masking_utils as masking

    checked = []
    look = masking.find_packed_sequence_indices
    monkeypatch.setattr(
        masking, "find_packed_sequence_indices", lambda ids: checked.append(ids) or look(ids)
    )
    ids = torch.randint(0, SMALL.vocab_size, (2, 8))
    fa4 = build_model(SMALL.model_copy(update={"attention": "flash_attention_4"}), seed=0)
    fa4(ids, labels=ids, use_cache=False)  # as the training loop calls it
    assert checked == []
    build_model(SMALL, seed=0)(ids, labels=ids, use_cache=False)  # SDPA's has: the check runs
    assert len(checked) == 1


def test_the_params_schema_allows_every_backend() -> None:
    allowed = get_args(ModelConfig.model_fields["attention"].annotation)
    assert set(allowed) == {"auto", *ATTENTION_BACKENDS} and "flash_attention_4" in allowed


def test_flash_attention_4_needs_a_gpu_and_the_package(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="'flash_attention_4' needs a CUDA GPU"):
        resolve_attention("flash_attention_4")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "flash_attn.cute", None)  # import raises ImportError
    with pytest.raises(ConfigError, match="needs the flash-attn-4 package.*gpu_env.sh fa4"):
        resolve_attention("flash_attention_4")


def test_flash_attn_4_installed_is_not_flash_attention_2(fake_fa4, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))  # an A100
    assert resolve_attention("flash_attention_4") == "flash_attention_4"
    assert resolve_attention("auto") == "sdpa"  # FA4 was measured faster on Hopper alone
    with pytest.raises(ConfigError, match="'flash_attention_2' needs the flash-attn package"):
        resolve_attention("flash_attention_2")
    monkeypatch.setitem(sys.modules, "flash_attn_2_cuda", _module("flash_attn_2_cuda"))
    assert resolve_attention("auto") == "flash_attention_2"  # FlashAttention-2 itself


@pytest.mark.parametrize("fa2", [False, True])
def test_auto_picks_fa4_on_hopper_where_it_was_measured_fastest(fake_fa4, monkeypatch, fa2):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))  # H100, H200
    if fa2:
        monkeypatch.setitem(sys.modules, "flash_attn_2_cuda", _module("flash_attn_2_cuda"))
    assert resolve_attention("auto") == "flash_attention_4"
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # no flash-attn-4: import fails
    monkeypatch.delitem(sys.modules, "flash_attn.cute")
    assert resolve_attention("auto") == ("flash_attention_2" if fa2 else "sdpa")


def test_the_profile_counts_fa4_kernels_as_attention() -> None:
    spec = importlib.util.spec_from_file_location("throughput_fa4", BENCH)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses resolve their module by name
    try:
        spec.loader.exec_module(bench)
    finally:
        del sys.modules[spec.name]
    assert "model.attention=flash_attention_4" in bench.VARIANTS["default+fa4"].sets
    names = [
        f"kernel_cutlass_kernel_flash_attncuteflash_{d}_sm90FlashAttention{k}Sm90_object_"
        "at__tensor0000o11101213_0"
        for d, k in (("fwd", "Forward"), ("bwd", "Backward"))
    ]
    names.append("kernel_cutlass_kernel_flash_attncuteflash_bwd_preprocessFlashAttentionBackward"
                 "Preprocess_object_at__tensor_0")  # fmt: skip
    assert all(FA4_KERNELS.search(name) for name in names[:2])
    assert kernel_kinds([(name, 1.0) for name in names]) == [("attention", 3.0)]


def _gpu_env(call: str) -> subprocess.CompletedProcess:
    """`call` in bash after sourcing scripts/gpu_env.sh for its functions."""
    script = f". {GPU_ENV} functions 2>/dev/null; {call}"
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True)


def test_the_parts_rebuild_the_wheels_and_a_missing_one_is_named(tmp_path: Path) -> None:
    files = {"demo/__init__.py": b"x = 1\n" * 3000, "demo-1.0.dist-info/RECORD": b"demo\n",
             "demo/lib.so": bytes(range(256)) * 64}  # fmt: skip
    for name, data in files.items():
        (tmp_path / "tree" / "demo-1.0-py3-none-any" / name).parent.mkdir(
            parents=True, exist_ok=True
        )
        (tmp_path / "tree" / "demo-1.0-py3-none-any" / name).write_bytes(data)
    fa4 = tmp_path / "fa4"
    assert _gpu_env(f"_gpu_fa4_pack {tmp_path / 'tree'} {fa4} 300").returncode == 0
    parts = sorted(p.name for p in fa4.iterdir())
    assert len(parts) > 1 and parts[0] == f"fa4.tar.xz.1-of-{len(parts)}"
    assert _gpu_env(f"_gpu_fa4_wheels {fa4}").returncode == 0
    with zipfile.ZipFile(fa4 / "wheels" / "demo-1.0-py3-none-any.whl") as wheel:
        assert {name: wheel.read(name) for name in wheel.namelist()} == files
    (fa4 / parts[0]).unlink()
    missing = _gpu_env(f"_gpu_fa4_install {fa4}")  # `. scripts/gpu_env.sh fa4-install`
    assert missing.returncode == 1 and f"parts missing in {fa4}: {parts[0]} " in missing.stderr


def test_the_pth_files_that_pip_target_leaves_unread_are_on_the_path(tmp_path: Path) -> None:
    inner = tmp_path / "pkg" / "dsl_packages"  # as nvidia-cutlass-dsl's .pth finds `cutlass`
    (tmp_path / "pkg.pth").write_text(f"import sys; sys.path.insert(0, {str(inner)!r})\n")
    found = _gpu_env(f"_gpu_pth_paths {tmp_path}")
    assert (found.returncode, found.stdout) == (0, f"{inner}\n")
    assert _gpu_env(f"_gpu_pth_paths {tmp_path / 'nothing'}").stdout == "\n"


# ---- on a CUDA GPU with flash-attn-4 -----------------------------------------------------------


def _in_compiled_backward(event) -> bool:
    while event := event.cpu_parent:
        if event.name == "CompiledFunctionBackward":
            return True
    return False


def _compiled_backward_copies(model, ids) -> list[list[int]]:
    """The shapes of the 4-D tensors the compiled backward copies, in a step after compiling."""
    for _ in range(2):  # compiled in the first
        model(ids, labels=ids, use_cache=False).loss.backward()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        model(ids, labels=ids, use_cache=False).loss.backward()
    events = [e for e in prof.events() if e.name == "aten::copy_" and _in_compiled_backward(e)]
    return sorted(e.input_shapes[0] for e in events if len(e.input_shapes[0]) == 4)


def _compiled_copies(monkeypatch, compiled_by: str) -> list[list[int]]:
    """_compiled_backward_copies of a two-layer FA4 model (head_dim 64) compiled per layer by
    tinylab's parallelize or by `layer.compile()` alone."""
    torch._dynamo.reset()  # compiled code is cached per code object, whatever the settings
    cfg = SMALL.model_copy(update={"hidden_size": 256, "attention": "flash_attention_4"})
    model = build_model(cfg, seed=0)
    monkeypatch.setattr(torch.cuda, "is_available", REAL_CUDA_IS_AVAILABLE)
    if compiled_by == "tinylab":
        cpu = Distributed(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), mesh=None)
        parallelize(model, ParallelConfig(compile="layers"), cpu)
    else:
        for layer in model.model.layers:
            layer.compile()
    ids = torch.randint(0, cfg.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    try:
        return _compiled_backward_copies(model, ids)
    finally:
        torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize("compiled_by", ["tinylab", "layer.compile"])
def test_compiled_layers_take_fa4s_gradients_in_its_layout(fake_fa4, monkeypatch, compiled_by):
    """Per-layer compile breaks the graph at FA4: q, k, v leave it as [B, H, T, D]-shaped views
    of [B, T, H, D] memory, and FA4's dq, dk, dv come back in that memory order. With torch
    2.11's default (the GPU image's) the backward copied them into contiguous [B, H, T, D], every
    layer and micro-batch (on an H200: 1.5% of the 1.1B's step); tinylab's compile expects them
    in the outputs' own strides, as torch 2.13 does by default. Inductor on the CPU, FA4 a
    stand-in with its layouts."""
    torch_2_11 = functorch_config.patch(guess_tangent_strides_as_outputs=False)  # its default
    uncached = functorch_config.patch(enable_autograd_cache=False)
    with torch_2_11, uncached, torch._inductor.config.patch(fx_graph_cache=False):
        copies = _compiled_copies(monkeypatch, compiled_by)
    if compiled_by == "tinylab":
        assert copies == []
    else:  # dq [B, H, T, D], dk and dv [B, H_kv, T, D], in each layer
        q, kv = [2, 4, 32, 64], [2, 2, 32, 64]
        assert copies == sorted([q, kv, kv] * SMALL.num_hidden_layers)


def _fa4_installed() -> bool:
    try:
        return importlib.util.find_spec("flash_attn.cute") is not None
    except ModuleNotFoundError:  # no flash_attn at all
        return False


def needs_fa4(test):
    """Marked gpu; skipped without CUDA, or without flash-attn-4 where CUDA is."""
    test = pytest.mark.skipif(
        torch.cuda.is_available() and not _fa4_installed(),
        reason="needs flash-attn-4: scripts/gpu_env.sh fa4, then . scripts/gpu_env.sh install",
    )(test)
    test = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(test)
    return pytest.mark.gpu(test)


@needs_fa4
@pytest.mark.parametrize("batch, seq, heads, kv_heads, dim", [(2, 256, 32, 4, 64),  # the 1.1B's
                                                              (1, 512, 4, 4, 128)])  # fmt: skip
def test_fa4_matches_sdpa_forward_and_backward(batch, seq, heads, kv_heads, dim) -> None:
    """Each of FA4's out, dq, dk, dv is off fp32 SDPA by at most twice what bf16 SDPA is, plus
    1e-3 (the bound of flash-attention's own tests)."""
    resolve_attention("flash_attention_4")
    gen = torch.Generator(device="cuda").manual_seed(0)
    shapes = [(batch, heads, seq, dim), (batch, kv_heads, seq, dim), (batch, kv_heads, seq, dim)]
    q, k, v = (torch.randn(s, device="cuda", generator=gen) for s in shapes)
    grad_out = torch.randn(batch, seq, heads, dim, device="cuda", generator=gen)

    def run(fn, dtype):
        inputs = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]  # leaves, each run
        out = fn(*inputs)
        out.backward(grad_out.to(dtype))
        return [out.float(), *(t.grad.float() for t in inputs)]

    def sdpa(q, k, v):
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return out.transpose(1, 2)

    def fa4(q, k, v):
        module = types.SimpleNamespace(is_causal=True)
        return fa4_attention_forward(module, q, k, v, None, scaling=dim**-0.5)[0]

    got, want, low = run(fa4, torch.bfloat16), run(sdpa, torch.float32), run(sdpa, torch.bfloat16)
    for name, a, b, c in zip(("out", "dq", "dk", "dv"), got, want, low, strict=True):
        err, bound = (a - b).abs().max().item(), 2 * (c - b).abs().max().item() + 1e-3
        assert err <= bound, f"{name}: FA4 off fp32 SDPA by {err:.2e} > {bound:.2e}"


@needs_fa4
def test_the_profile_shows_fa4_kernels_forward_and_backward() -> None:
    from torch.profiler import ProfilerActivity, profile

    cfg = SMALL.model_copy(
        update={"hidden_size": 256, "intermediate_size": 704, "attention": "flash_attention_4"}
    )  # head_dim 64; fmt: skip
    model = build_model(cfg, device="cuda", seed=0).to(torch.bfloat16)
    ids = torch.randint(0, cfg.vocab_size, (2, 64), device="cuda")
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        model(ids, labels=ids).loss.backward()
        torch.cuda.synchronize()
    kinds = {m.group(1) for e in prof.key_averages() if (m := FA4_KERNELS.search(e.key))}
    assert kinds == {"fwd", "bwd"}, sorted(e.key for e in prof.key_averages())[:40]


@needs_fa4
def test_a_compiled_layer_hands_fa4_its_layout_and_takes_its_gradients_as_they_are() -> None:
    """test_compiled_layers_take_fa4s_gradients_in_its_layout on the GPU, with flash-attn-4's
    kernels, compiled as the trainer compiles: no 4-D copy under CompiledFunctionBackward."""
    cfg = SMALL.model_copy(update={"hidden_size": 256, "attention": "flash_attention_4"})
    model = build_model(cfg, device="cuda", seed=0).to(torch.bfloat16)  # FSDP2's compute dtype
    gpu = Distributed(rank=0, world_size=1, local_rank=0, device=torch.device("cuda"), mesh=None)
    torch._dynamo.reset()  # no layer compiled by an earlier test, under other settings
    parallelize(model, ParallelConfig(compile="layers"), gpu)
    ids = torch.randint(0, cfg.vocab_size, (2, 128), device="cuda")
    try:
        assert _compiled_backward_copies(model, ids) == []
    finally:
        torch._dynamo.reset()
