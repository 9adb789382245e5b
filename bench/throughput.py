"""Training speed of tinylab's trainer against a plain transformers baseline, measured in one run.

Every variant trains the same model from the same init on the same batches for `--steps`
optimizer steps of one micro-batch per GPU (weak scaling), each in its own process:

- `hf-compile` (the baseline) and `hf-eager`: plain transformers LlamaForCausalLM with the
  preset's config, SDPA attention, bf16 autocast over fp32 weights, fused AdamW, the stage's LR
  schedule and gradient clipping, `torch.compile` of the whole model (or none), no tinylab code
  in the step; tinylab only builds the model (for the same init) and the batches.
- every other variant: tinylab's trainer itself (`python -m tinylab.train --synthetic
  zipf-copy`, under torchrun for several GPUs) on the paper's base stage
  (params/stages/tinyllama-v1.1/base.yaml), every parallel option reset to plain and then set by
  the variant: SDPA backend, per-layer compile, Liger-Kernel, micro-batch, activation
  checkpointing, FSDP2 resharding, FSDP2 on one GPU (bf16 parameters instead of autocast),
  fused q/k/v and gate/up projections, GPU count, inductor's GEMM autotuning and CUDA graphs
  (environment variables). `default` is the stage as committed, attention included (`auto`:
  FlashAttention-4 on a Hopper GPU where flash-attn-4 is installed, `scripts/gpu_env.sh fa4`,
  else SDPA); `default+fa4` and `default+sdpa` force one of the two.

Tokens are the learnable synthetic stream (`RandomWindows`, pattern zipf-copy) so loss curves
mean something: the table gives each 1-GPU variant's largest per-step loss difference from the
baseline over all steps (same init, same batches, same LR schedule; the first 10 steps warm the
LR up), beside the baseline-eager difference as the bf16 reference. Speed is the mean over the
steps after `--skip` (compile happens in the first): tokens/s per GPU, MFU against 989 TFLOP/s
with 7.314 GFLOP/token for tinyllama-1.1b (tinylab.model.flops_per_token), and the peak memory
allocated on GPU 0 (torch.cuda.max_memory_allocated). `--profile` profiles the given variants
under torch.profiler: tinylab's inside the trainer's own loop (steps 4-5 of 5, `python -m
tinylab.train --profile-steps 4-5`: the configuration users run, its idle time included), the
HF baseline in its own step function; it prints kernel and wall time per step, the shares by
kind, the attention kernels that ran, the top kernels, and the ATen ops that launched kernels
with their input shapes (tinylab.train.profiling). While each variant runs, `nvidia-smi`
samples its GPUs every 500 ms; the table gives their median SM clock and power draw under load
(samples above half the power limit: the training steps, warm-up included) and the share of
those samples held back by the power cap: on an H200 at its 700 W limit the clock, so the
speed, is the card's as much as the code's.

    python bench/throughput.py --list
    python bench/throughput.py --variants hf-compile hf-eager plain compile+liger-loss --concurrent
    python bench/throughput.py --variants hf-compile "fast:parallel.compile=true,micro=16,nproc=2"
    python bench/throughput.py --profile plain sdpa-cudnn --variants ...

`--concurrent` runs variants side by side, each on its own GPU(s) of the machine, so a sweep
takes the time of its slowest part; say so when reporting its figures. On a CPU-only machine
`--model demo --device cpu` runs the same code path small (a check, not a benchmark).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from tinylab.config.loader import PARAMS_DIR, apply_overrides, dump_config, load_config
from tinylab.config.stage import StageConfig
from tinylab.layout import RunLayout, StageLayout
from tinylab.model import build_model, flops_per_token, load_preset
from tinylab.train.batching import RandomWindows, to_batch
from tinylab.train.metrics import H100_BF16_PEAK
from tinylab.train.profiling import StepRange, summarize
from tinylab.train.profiling import report as profile_summary
from tinylab.train.schedule import lr_at

BASE_STAGE = PARAMS_DIR / "stages" / "tinyllama-v1.1" / "base.yaml"
PATTERN = "zipf-copy"
WARMUP_STEPS = 10
PROFILED = StepRange(4, 5)  # the trainer's steps that --profile profiles
SETTLED_STEP = 2 * WARMUP_STEPS  # loss differences after this step are the table's second figure
PLAIN = (
    "model.attention=sdpa", "parallel.compile=off", "parallel.liger=[]",
    "parallel.sdpa_backend=auto", "parallel.activation_checkpointing=off",
    "parallel.reshard_after_forward=true", "parallel.single_process=plain",
    "parallel.fused_projections=[]",
)  # fmt: skip


@dataclass(frozen=True)
class Variant:
    """One configuration to time: the HF baseline (`kind` hf) or tinylab's trainer."""

    name: str
    kind: str = "tinylab"
    sets: tuple[str, ...] = ()
    micro: int = 8
    nproc: int = 1
    compile: bool = True  # hf only: torch.compile of the whole model


def _tl(name: str, *sets: str, micro: int = 8, nproc: int = 1) -> Variant:
    return Variant(name, "tinylab", tuple(sets), micro, nproc)


def _paper_default(
    nproc: int = 1, name: str = "default", *more: str, micro: int | None = None
) -> Variant:
    """The base stage as committed: its attention and `parallel` settings and micro-batch (or
    `micro`), then `more`."""
    stage = load_config(BASE_STAGE, StageConfig)
    chosen = stage.parallel.model_dump(mode="json", exclude_unset=True)
    sets = [f"model.attention={stage.model.attention}"]
    sets += [f"parallel.{key}={json.dumps(value)}" for key, value in chosen.items()]
    name = name if nproc == 1 else f"{name}@{nproc}"
    return _tl(name, *sets, *more, micro=micro or stage.micro_batch_size, nproc=nproc)


COMPILE, COMPILE_MODEL = "parallel.compile=layers", "parallel.compile=model"
LIGER_ALL, LIGER_LOSS = "parallel.liger=[rms_norm,rope,swiglu,loss]", "parallel.liger=[loss]"
FLASH, CUDNN = "parallel.sdpa_backend=flash", "parallel.sdpa_backend=cudnn"
SELECTIVE = "parallel.activation_checkpointing=selective"
NO_RESHARD = "parallel.reshard_after_forward=false"
FSDP_BF16 = "parallel.single_process=fsdp"
AUTOTUNE = "TORCHINDUCTOR_MAX_AUTOTUNE=1"
CUDAGRAPHS = "TORCHINDUCTOR_CUDAGRAPHS=1"
FP8 = "parallel.precision=fp8"
NO_BF16_INPUTS = "parallel.fp8.bf16_inputs=[]"
FP8_VARIANTS = {  # the default with float8 matmuls (torchao): recipe and layers kept in bf16
    # parallel.fp8's defaults: lm_head in bf16, down_proj's input-gradient matmul alone in
    # float8 (before 2026-12-02, later: lm_head and down_proj kept; before that: lm_head)
    "fp8": (),
    "fp8-down": ("parallel.fp8.keep_bf16=[lm_head]", NO_BF16_INPUTS),  # down_proj all float8
    "fp8-rowwise": ("parallel.fp8.recipe=rowwise",),  # down_proj all float8 (rowwise)
    "fp8-rowwise-gw-hp": ("parallel.fp8.recipe=rowwise_with_gw_hp",),
    "fp8-allgather": ("parallel.fp8.all_gather=true",),
    "fp8-lm-head": ("parallel.fp8.keep_bf16=[]", NO_BF16_INPUTS),  # every Linear in float8
    "fp8-keep-kv": ("parallel.fp8.keep_bf16=[lm_head,k_proj,v_proj]", NO_BF16_INPUTS),
    "fp8-keep-down": ("parallel.fp8.keep_bf16=[lm_head,down_proj]",),
    "fp8-mlp": ("parallel.fp8.keep_bf16=[lm_head,q_proj,k_proj,v_proj,o_proj]", NO_BF16_INPUTS),
    # the default's recipe spelled out, as first measured
    "fp8-down-gi": ("parallel.fp8.keep_bf16=[lm_head]", "parallel.fp8.bf16_inputs=[down_proj]"),
}
FUSE_VARIANTS = {  # the default with one matmul for q, k, v and/or one for gate, up
    "fuse": "[qkv,gate_up]",
    "fuse-qkv": "[qkv]",
    "fuse-gate-up": "[gate_up]",
}
VARIANTS = {v.name: v for v in [
    Variant("hf-compile", "hf", compile=True),
    *[_paper_default(n) for n in (1, 2, 4)],
    *[_paper_default(1, f"default+{name}", FP8, *sets) for name, sets in FP8_VARIANTS.items()],
    *[_paper_default(1, f"default+{name}", f"parallel.fused_projections={groups}")
      for name, groups in FUSE_VARIANTS.items()],
    _paper_default(1, "default+fa4", "model.attention=flash_attention_4"),  # flash-attn-4
    _paper_default(1, "default+sdpa", "model.attention=sdpa"),  # cuDNN's attention on Hopper
    _paper_default(1, "default+reshard-bwd", "parallel.reshard_after_backward=true"),
    *[_paper_default(1, f"default+micro{n}", micro=n) for n in (24, 28, 32)],  # 28 divides 896
    _paper_default(1, "default+autotune", AUTOTUNE),  # inductor benchmarks GEMMs and pointwise
    # GEMMs only: cuBLAS against inductor's Triton templates per shape, a shorter compile
    _paper_default(1, "default+autotune-gemm", "TORCHINDUCTOR_MAX_AUTOTUNE_GEMM=1"),
    # inductor tunes its own Triton kernels' block sizes (RMSNorm, RoPE, SwiGLU: 8.6% of the step)
    _paper_default(1, "default+coordinate-descent", "TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1"),
    _paper_default(1, "default+no-expandable", "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:False"),
    # CUDA graphs of inductor's compiled graphs (two per layer around FA4's call; one on cuDNN's)
    _paper_default(1, "default+cudagraphs", CUDAGRAPHS),
    _paper_default(1, "default+sdpa+cudagraphs", "model.attention=sdpa", CUDAGRAPHS),
    Variant("hf-eager", "hf", compile=False),
    Variant("hf-compile+micro16", "hf", micro=16),
    _tl("plain"),
    _tl("sdpa-flash", FLASH),
    _tl("sdpa-cudnn", CUDNN),
    _tl("compile", COMPILE),
    _tl("compile-model", COMPILE_MODEL),
    _tl("liger", LIGER_ALL),
    _tl("liger-loss", LIGER_LOSS),
    _tl("compile+liger", COMPILE, LIGER_ALL),
    _tl("compile+liger-loss", COMPILE, LIGER_LOSS),
    _tl("compile+liger-loss+cudnn", COMPILE, LIGER_LOSS, CUDNN),
    _tl("compile+liger-loss+micro16", COMPILE, LIGER_LOSS, micro=16),
    _tl("compile+liger-loss+selective", COMPILE, LIGER_LOSS, SELECTIVE),
    _tl("compile+liger+selective", COMPILE, LIGER_ALL, SELECTIVE),
    _tl("compile-model+liger", COMPILE_MODEL, LIGER_ALL),
    _tl("compile-model+liger-loss", COMPILE_MODEL, LIGER_LOSS),
    _tl("liger+selective", LIGER_ALL, SELECTIVE),
    _tl("fsdp+compile+liger", FSDP_BF16, NO_RESHARD, COMPILE, LIGER_ALL),
    _tl("fsdp+compile+liger+reshard", FSDP_BF16, COMPILE, LIGER_ALL),
    _tl("fsdp+compile+liger-loss", FSDP_BF16, NO_RESHARD, COMPILE, LIGER_LOSS),
    _tl("fsdp+compile+liger+micro16", FSDP_BF16, NO_RESHARD, COMPILE, LIGER_ALL, micro=16),
    _tl("fsdp+compile+liger+autotune", FSDP_BF16, NO_RESHARD, COMPILE, LIGER_ALL, AUTOTUNE),
    _tl("compile+liger+autotune", COMPILE, LIGER_ALL, AUTOTUNE),
    _tl("compile+liger+micro16", COMPILE, LIGER_ALL, micro=16),
    _tl("fsdp+compile+liger+micro16+flash", FSDP_BF16, NO_RESHARD, COMPILE, LIGER_ALL, FLASH,
        micro=16),
    *[_tl(f"fsdp+compile+liger-{name}+micro16", FSDP_BF16, NO_RESHARD, COMPILE,
          f"parallel.liger=[{ops}]", micro=16)
      for name, ops in [("norope", "rms_norm,swiglu,loss"), ("swiglu-loss", "swiglu,loss"),
                        ("loss", "loss")]],
    *[_tl(f"fsdp+compile+liger+micro16@{n}", FSDP_BF16, NO_RESHARD, COMPILE, LIGER_ALL, micro=16,
          nproc=n) for n in (2, 4)],
    *[_tl(f"compile+liger@{n}", COMPILE, LIGER_ALL, nproc=n) for n in (2, 4)],
    *[_tl(f"compile+liger+noreshard@{n}", COMPILE, LIGER_ALL, NO_RESHARD, nproc=n)
      for n in (2, 4)],
]}  # fmt: skip


def parse_variant(spec: str) -> Variant:
    """A known name; `NAME#N`, a known variant run once more under that name (two runs of the
    same code on the same batches: their loss difference is the run-to-run spread); or
    `NAME:key=value,...`: stage overrides, upper-case environment variables of the variant's
    process (TORCHINDUCTOR_MAX_AUTOTUNE=1), micro=N and nproc=N."""
    if spec in VARIANTS:
        return VARIANTS[spec]
    known, hash_, repeat = spec.partition("#")
    if hash_ and known in VARIANTS and repeat.isdigit():
        return dataclasses.replace(VARIANTS[known], name=spec)
    name, sep, body = spec.partition(":")
    if not sep:
        raise SystemExit(
            f"unknown variant {spec!r}: known: {', '.join(VARIANTS)}; or KNOWN#N, or NAME:k=v,..."
        )
    sets, micro, nproc = [], 8, 1
    for item in filter(None, re.split(r",(?![^\[]*\])", body)):  # commas in [a,b] stay
        key, eq, value = item.partition("=")
        if not eq:
            raise SystemExit(f"variant {spec!r}: {item!r} is not key=value")
        if key == "micro":
            micro = int(value)
        elif key == "nproc":
            nproc = int(value)
        else:
            sets.append(item)
    return _tl(name, *sets, micro=micro, nproc=nproc)


def bench_stage(
    model: str, variant: Variant, *, steps: int, device: str, accum: int = 1
) -> StageConfig:
    """The paper's base stage resized for `steps` steps of `accum` micro-batches per GPU."""
    stage = load_config(BASE_STAGE, StageConfig)
    data = stage.model_dump(mode="json")
    data["model"] = load_preset(model).model_dump(mode="json")
    seq_len = min(stage.data.seq_len, data["model"]["max_position_embeddings"])
    data["data"]["seq_len"] = seq_len
    tokens = variant.micro * seq_len * variant.nproc * accum
    data = apply_overrides(data, [
        "name=bench", f"micro_batch_size={variant.micro}", f"global_batch_tokens={tokens}",
        f"max_tokens={tokens * steps}", f"schedule.warmup_tokens={tokens * WARMUP_STEPS}",
        "checkpoint.every_steps=1000000000", "checkpoint.at_end=false", "export_hf=false",
        "validation.every_steps=1000000000", "log_every_steps=1", f"parallel.device={device}",
        *PLAIN, *(item for item in variant.sets if not _is_env(item)),
    ], StageConfig)  # fmt: skip
    return StageConfig.model_validate(data)


def _is_env(item: str) -> bool:
    """An upper-case key (TORCHINDUCTOR_MAX_AUTOTUNE=1) is an environment variable of the
    variant's process, not a stage override."""
    return item.partition("=")[0].isupper()


# ---------------------------------------------------------------- the plain HF baseline


def hf_baseline(stage: StageConfig, *, compile: bool, steps: int, skip: int) -> dict:
    """Train with a plain transformers loop; per-step losses, timed throughput, peak memory."""
    device = torch.device("cuda" if stage.parallel.device != "cpu" else "cpu")
    model = build_model(stage.model, device=device, seed=stage.seed)
    optim = stage.optim
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=0.0, betas=optim.betas, eps=optim.eps,
        weight_decay=optim.weight_decay, fused=device.type == "cuda",
    )  # fmt: skip
    forward = torch.compile(model) if compile else model
    source = RandomWindows(
        vocab_size=stage.model.vocab_size, seq_len=stage.data.seq_len, seed=stage.seed,
        pattern=PATTERN,
    )  # fmt: skip
    micro, step_tokens = stage.micro_batch_size, stage.global_batch_tokens
    accum = step_tokens // (micro * stage.data.seq_len)
    losses, started = [], None
    for step in range(steps):
        if step == skip:
            _sync(device)
            started = time.perf_counter()
        total = 0.0
        for m in range(step * accum, (step + 1) * accum):
            inputs, targets = to_batch(source.train(range(m * micro, (m + 1) * micro)), device)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = forward(input_ids=inputs, labels=targets, shift_labels=targets).loss
            (loss / accum).backward()
            total += loss.detach() / accum
        torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
        for group in optimizer.param_groups:
            group["lr"] = lr_at((step + 1) * step_tokens, optim, stage.schedule)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(total)
    _sync(device)
    seconds = time.perf_counter() - started
    return {
        "losses": [float(v) for v in losses],
        "tokens_per_s": step_tokens * (steps - skip) / seconds,
        "peak_mem_bytes": _peak_memory(device),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory(device: torch.device) -> int | None:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


# ---------------------------------------------------------------- tinylab's trainer


def tinylab_run(stage: StageConfig, variant: Variant, workdir: Path, *, skip: int) -> dict:
    """Train `stage` with `python -m tinylab.train` (torchrun for several GPUs)."""
    lines = _train(stage, variant, workdir).metrics.read_text().splitlines()
    records = [r for r in map(json.loads, lines) if r["kind"] == "train"]
    step_s = [r["step_s"] for r in records]
    return {
        "losses": [r["loss"] for r in records],
        "step_s": step_s,
        "tokens_per_s": stage.global_batch_tokens * len(step_s[skip:]) / sum(step_s[skip:]),
        "peak_mem_bytes": max(r["peak_mem_bytes"] for r in records),
    }


def tinylab_profile(stage: StageConfig, variant: Variant, workdir: Path) -> dict:
    """The trainer's own kernels: steps 4-5 of a 5-step run, profiled inside the training loop
    (`--profile-steps`), after three steps of warm-up (compile in the first)."""
    stage = stage.model_copy(update={"max_tokens": stage.global_batch_tokens * PROFILED.last})
    layout = _train(stage, variant, workdir, "--profile-steps", str(PROFILED))
    return json.loads((layout.profile / "summary.json").read_text())


def _train(stage: StageConfig, variant: Variant, workdir: Path, *extra: str) -> StageLayout:
    """Run the trainer on `stage` in a run folder of its own; the stage's folder."""
    run_dir = workdir / variant.name
    run_dir.mkdir(parents=True)
    config = run_dir / "stage.yaml"
    config.write_text(dump_config(stage))
    launcher = [sys.executable]
    if variant.nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone",
                     f"--nproc-per-node={variant.nproc}"]  # fmt: skip
    _run_logged(
        [*launcher, "-m", "tinylab.train", "--config", str(config), "--run-dir", str(run_dir),
         "--synthetic", PATTERN, *extra],
        run_dir / "log.txt",
    )  # fmt: skip
    return RunLayout(run_dir).stage(stage.name)


# ---------------------------------------------------------------- the kernels that run


def profile_kernels(stage: StageConfig, variant: Variant, *, steps: int = 2) -> dict:
    """The HF baseline's kernels over `steps` training steps after 3 warm-up steps (tinylab's
    variants are profiled inside the trainer: `tinylab_profile`)."""
    from torch.profiler import ProfilerActivity, profile

    step = _profiled_step(stage, variant)
    for i in range(3):
        step(i)
    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available() and stage.parallel.device != "cpu":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities, record_shapes=True) as prof:
        started = time.perf_counter()
        for i in range(3, 3 + steps):
            step(i)
        wall = time.perf_counter() - started
    return summarize(prof, steps=steps, wall_s=wall)


def _profiled_step(stage: StageConfig, variant: Variant):
    """One training step of `variant` through tinylab's functions; for the HF baseline the
    same model (plain parallel options) compiled whole, as the baseline compiles it."""
    from tinylab.train.batching import BatchPlan
    from tinylab.train.loop import build, forward_backward, optimizer_step
    from tinylab.train.parallel import grad_norm_and_clip, init_distributed

    source = RandomWindows(
        vocab_size=stage.model.vocab_size, seq_len=stage.data.seq_len, seed=stage.seed,
        pattern=PATTERN,
    )  # fmt: skip
    ctx = init_distributed(stage.parallel)
    model, optimizer = build(stage, ctx)
    if variant.kind == "hf" and variant.compile:
        model = torch.compile(model)
    plan = BatchPlan.from_stage(stage, world_size=1, rank=0)

    def step(i: int) -> None:
        forward_backward(
            model, source, plan, i * plan.micro_batch_size, parallel=stage.parallel, ctx=ctx
        )
        grad_norm_and_clip(model, stage.optim.grad_clip)
        optimizer_step(optimizer, 1e-5)
        _sync(ctx.device)

    return step


# ---------------------------------------------------------------- the GPUs' clock and power

SMI_FIELDS = "clocks.sm,power.draw,power.limit,temperature.gpu,clocks_throttle_reasons.active"
POWER_CAP = 0x4  # nvidia-smi's clocks event reason: SW power cap (the board's power limit)


@contextlib.contextmanager
def gpu_samples(gpus: list[int], path: Path):
    """`nvidia-smi` writing `gpus`' SMI_FIELDS to `path` every 500 ms while the block runs
    (nothing where there are no GPUs or no nvidia-smi); its errors go to the same file, where
    `under_load` skips them (a field this driver lacks leaves the column blank, the file says
    why)."""
    smi = shutil.which("nvidia-smi")
    if not gpus or smi is None:
        yield
        return
    command = [smi, f"--query-gpu={SMI_FIELDS}", "--format=csv,noheader,nounits", "-lms", "500",
               "-i", ",".join(map(str, gpus))]  # fmt: skip
    with path.open("w") as out:
        sampler = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield
        finally:
            sampler.terminate()
            try:
                sampler.wait(timeout=10)
            except subprocess.TimeoutExpired:  # a wedged driver must not hang the bench
                sampler.kill()
                sampler.wait()


def under_load(samples: str) -> dict | None:
    """Median SM clock (MHz) and power (W), the highest temperature, and the share of samples
    at the power cap, over the samples that drew more than half the power limit; None if none
    did (a line with a field nvidia-smi could not read, `[N/A]`, is left out)."""
    loaded = []
    for line in samples.splitlines():
        fields = [field.strip() for field in line.split(",")]
        try:
            clock, power, limit, temperature = map(float, fields[:4])
            reasons = int(fields[4], 16)
        except (ValueError, IndexError):
            continue
        if power > limit / 2:
            loaded.append((clock, power, temperature, bool(reasons & POWER_CAP)))
    if not loaded:
        return None
    clocks, powers, temperatures, capped = zip(*loaded, strict=True)
    return {
        "sm_mhz": statistics.median(clocks), "power_w": statistics.median(powers),
        "max_temp_c": max(temperatures), "power_capped": sum(capped) / len(capped),
        "samples": len(loaded),
    }  # fmt: skip


def _clock_cell(result: dict) -> str:
    gpu = result.get("gpu")
    if not gpu:
        return ""
    return (f"{gpu['sm_mhz']:,.0f} MHz, {gpu['power_w']:.0f} W, "
            f"capped {gpu['power_capped']:.0%}")  # fmt: skip


# ---------------------------------------------------------------- running and reporting


def _run_logged(command: list[str], log: Path, *, timeout: float = 900) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # the allocator setting: tinylab's import
    with log.open("w") as out:
        try:
            code = subprocess.run(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=timeout
            ).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    if code != 0:
        tail = [line for line in log.read_text().splitlines() if line.strip()][-3:]
        raise RuntimeError(f"exit {code}: " + " | ".join(t[-200:] for t in tail))


def run_variant(variant: Variant, gpus: list[int], args: argparse.Namespace) -> dict:
    """Run one variant in a child process on `gpus`; its result (or its error)."""
    workdir = args.workdir / variant.name
    workdir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, __file__, "--worker", variant.name, "--model", args.model,
               "--steps", str(args.steps), "--skip", str(args.skip), "--device", args.device,
               "--accum", str(args.accum),
               "--workdir", str(workdir), "--spec", json.dumps(variant.__dict__)]  # fmt: skip
    if args.worker_profile:
        command.append("--worker-profile")
    env = [item for item in variant.sets if _is_env(item)]
    if gpus:
        env.append("CUDA_VISIBLE_DEVICES=" + ",".join(map(str, gpus)))
    started, samples = time.perf_counter(), workdir / "gpu.csv"
    try:
        with gpu_samples(gpus, samples):
            _run_logged(["env", *env, *command] if env else command, workdir / "worker.txt")
        result = json.loads((workdir / "result.json").read_text())
    except (RuntimeError, FileNotFoundError) as err:
        result = {"error": str(err)}
    result.update(variant=variant.__dict__, gpus=gpus, wall_s=time.perf_counter() - started,
                  profiled=args.worker_profile)  # fmt: skip
    if samples.exists():
        result["gpu"] = under_load(samples.read_text())
    print(f"  {variant.name} on GPUs {gpus or 'cpu'}: {_short(result)}", flush=True)
    if args.json:
        with _JSON_LOCK, args.json.open("a") as out:
            out.write(json.dumps(result) + "\n")
    return result


_JSON_LOCK = threading.Lock()


def _short(result: dict) -> str:
    if "error" in result:
        return "FAILED " + result["error"]
    if "tokens_per_s" in result:
        return f"{result['tokens_per_s'] / result['variant']['nproc']:,.0f} tokens/s per GPU"
    return "profiled"


def worker(args: argparse.Namespace) -> None:
    """Child-process entry: one variant, result written to <workdir>/result.json."""
    spec = json.loads(args.spec)
    variant = Variant(**{**spec, "sets": tuple(spec["sets"])})
    stage = bench_stage(args.model, variant, steps=args.steps, device=args.device, accum=args.accum)
    if args.worker_profile and variant.kind == "hf":
        result = profile_kernels(stage, variant)
    elif args.worker_profile:
        result = tinylab_profile(stage, variant, args.workdir)
    elif variant.kind == "hf":
        result = hf_baseline(stage, compile=variant.compile, steps=args.steps, skip=args.skip)
    else:
        result = tinylab_run(stage, variant, args.workdir, skip=args.skip)
    result["card"] = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    result["torch"] = torch.__version__
    (args.workdir / "result.json").write_text(json.dumps(result))


def schedule(jobs: list[tuple[Variant, bool]], args: argparse.Namespace) -> list[dict]:
    """Run jobs in order, or side by side on free GPUs with `--concurrent`."""
    visible = list(range(torch.cuda.device_count())) if args.device != "cpu" else []
    runnable = []
    for variant, profiled in jobs:
        if variant.nproc > max(len(visible), 1):
            print(f"  skipping {variant.name}: needs {variant.nproc} GPUs, {len(visible)} visible")
        else:
            runnable.append((variant, profiled))
    free, lock, turn = list(visible), threading.Condition(), [0]

    def one(order: int) -> dict:
        variant, profiled = runnable[order]
        need = variant.nproc if visible else 0
        with lock:  # jobs start in the order given, each as soon as its GPUs are free
            lock.wait_for(lambda: turn[0] == order and len(free) >= need)
            mine = [free.pop(0) for _ in range(need)]
            turn[0] += 1
            lock.notify_all()
        try:
            folder = args.workdir / ("profile" if profiled else "time")
            worker_args = argparse.Namespace(
                **{**vars(args), "workdir": folder, "worker_profile": profiled}
            )
            return run_variant(variant, mine, worker_args)
        finally:
            with lock:
                free.extend(mine)
                lock.notify_all()

    if not args.concurrent:
        return [one(order) for order in range(len(runnable))]
    with ThreadPoolExecutor(max(len(runnable), 1)) as pool:
        return list(pool.map(one, range(len(runnable))))


def speed_table(
    results: list[dict], *, baseline: str, model: str, steps: int, skip: int, accum: int
) -> str:
    """Markdown: tokens/s per GPU, MFU, peak memory, vs baseline and 1 GPU, loss difference,
    the GPUs' clock and power under load."""
    preset = load_preset(model)
    seq_len = min(2048, preset.max_position_embeddings)
    flops = flops_per_token(preset, seq_len)
    ok = [r for r in results if "error" not in r]
    base = next((r for r in ok if r["variant"]["name"] == baseline), None)
    reference = next((r for r in ok if r["variant"]["name"] == "hf-eager"), None)
    one_gpu = {_key(r): r for r in ok if r["variant"]["nproc"] == 1}
    lines = [
        "| variant | GPUs | micro | tokens/s per GPU | MFU | peak GiB | vs baseline | "
        "vs 1 GPU | max loss diff vs baseline | SM clock, power under load |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        v = r["variant"]
        if "error" in r:
            lines.append(f"| {v['name']} | {v['nproc']} | {v['micro']} | failed: "
                         f"{r['error'][:120]} | | | | | | |")  # fmt: skip
            continue
        per_gpu = r["tokens_per_s"] / v["nproc"]
        mem = "n/a" if r["peak_mem_bytes"] is None else f"{r['peak_mem_bytes'] / 2**30:.1f}"
        vs_base = f"{per_gpu / (base['tokens_per_s']):.2f}x" if base else "n/a"
        single = one_gpu.get(_key(r))
        scaling = (f"{per_gpu / single['tokens_per_s']:.1%}"
                   if single and v["nproc"] > 1 else "")  # fmt: skip
        lines.append(
            f"| {v['name']} | {v['nproc']} | {v['micro']} | {per_gpu:,.0f} | "
            f"{per_gpu * flops / H100_BF16_PEAK:.1%} | {mem} | {vs_base} | {scaling} | "
            f"{_loss_diff(r, base)} | {_clock_cell(r)} |"
        )
    card, version = (ok[0]["card"], ok[0]["torch"]) if ok and "card" in ok[0] else ("?", "?")
    head = (
        f"{datetime.date.today()} | {card} | torch {version} | {model}, seq {seq_len}, "
        f"{steps} steps of {accum} micro-batch(es) per GPU, speed = mean over steps {skip + 1}-"
        f"{steps} | baseline {baseline}"
    )
    note = ""
    if reference and base:
        note = (f"\nbf16 reference: hf-eager vs {baseline} max loss diff "
                f"{_loss_diff(reference, base)}")  # fmt: skip
    return head + "\n\n" + "\n".join(lines) + note


def _key(result: dict) -> tuple:
    """What a run is, less its GPU count and FSDP resharding (no-ops on one GPU)."""
    v = result["variant"]
    sets = tuple(s for s in v["sets"] if not s.startswith("parallel.reshard_after_forward"))
    return (v["kind"], sets, v["micro"], v["compile"])


def _loss_diff(result: dict, base: dict | None) -> str:
    """Largest per-step |loss - baseline loss| when both saw the same batches, else blank."""
    v = result["variant"]
    if base is None or result is base or v["nproc"] != 1:
        return ""
    if v["micro"] != base["variant"]["micro"]:
        return ""
    diffs = [a - b for a, b in zip(result["losses"], base["losses"], strict=False)]
    text = f"{max(abs(d) for d in diffs):.4f}"
    if len(diffs) > SETTLED_STEP + 10:  # the warm-up's loss spike parts runs chaotically
        settled = max(abs(d) for d in diffs[SETTLED_STEP:])
        last = sum(diffs[-10:]) / 10
        text += f"; after step {SETTLED_STEP} {settled:.4f}; last 10 steps {last:+.4f}"
    return f"{text} (final {result['losses'][-1]:.3f} vs {base['losses'][-1]:.3f})"


def profile_report(results: list[dict]) -> str:
    out = []
    for r in results:
        name = r["variant"]["name"]
        if "error" in r:
            out.append(f"{name}: profile failed: {r['error']}")
        else:
            out.append(profile_summary(r, name))
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--variants",
        nargs="*",
        default=["hf-compile", "hf-eager", "plain"],
        help="names (see --list), KNOWN#N (a known variant once more: the run-to-run spread) "
        "or NAME:key=value,...,ENV_VAR=value,micro=N,nproc=N",
    )
    parser.add_argument("--profile", nargs="*", default=[], help="variants to profile")
    parser.add_argument("--baseline", default="hf-compile")
    parser.add_argument("--model", default="tinyllama-1.1b", help="preset under params/models/")
    parser.add_argument("--steps", type=int, default=50, help="optimizer steps per variant")
    parser.add_argument("--skip", type=int, default=10, help="warm-up steps left out of speed")
    parser.add_argument("--accum", type=int, default=1, help="micro-batches per GPU per step")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--concurrent", action="store_true", help="variants side by side")
    parser.add_argument("--workdir", type=Path, default=None, help="keep run folders here")
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="append each result to this JSON-lines file as it comes",
    )
    parser.add_argument(
        "--table-from", type=Path, default=None, help="print the tables of a --json file and exit"
    )
    parser.add_argument("--list", action="store_true", help="print the known variants")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-profile", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.list:
        for v in VARIANTS.values():
            print(f"{v.name:32} {v.kind:8} micro {v.micro} nproc {v.nproc} {' '.join(v.sets)}")
        return 0
    if args.worker:
        worker(args)
        return 0
    if args.table_from:
        results = [json.loads(line) for line in args.table_from.read_text().splitlines()]
        report(results, args)
        return 0
    args.workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tinylab-throughput-"))
    jobs = [(parse_variant(s), False) for s in args.variants]
    jobs += [(parse_variant(s), True) for s in args.profile]
    print(f"{len(jobs)} runs in {args.workdir}", flush=True)
    results = schedule(jobs, args)
    report(results, args)
    return 0 if all("error" not in r for r in results) else 1


def report(results: list[dict], args: argparse.Namespace) -> None:
    """Print the kernel profiles and the speed table."""
    timed = [r for r in results if not r["profiled"]]
    profiled = [r for r in results if r["profiled"]]
    if profiled:
        print("\n" + profile_report(profiled))
    if timed:
        table = speed_table(timed, baseline=args.baseline, model=args.model, steps=args.steps,
                            skip=args.skip, accum=args.accum)  # fmt: skip
        print("\n" + table)


if __name__ == "__main__":
    sys.exit(main())
