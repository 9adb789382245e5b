"""The stage runner: one `fit()` for all stages; base, continual and cooldown differ only in params.

A stage trains `max_tokens` tokens of its mixture in optimizer steps of `global_batch_tokens`,
starting where its start plan says (tinylab.train.start: scratch, its own latest checkpoint, or
its parent stage's last one, carrying weights / optimizer state / schedule position as the
params say). Each step: read this rank's micro-batches, forward + backward each, clip, set the LR
from tokens seen, AdamW step; its loss and gradient norm are read (a non-finite one stops the
stage) and its metrics line written once the next step is queued, or at once before a
per-domain validation, a checkpoint and the end. At the end: a final checkpoint and an HF export.
With `adapter: lora` the same loop trains a LoRA adapter on the parent's frozen weights: `build`
applies the transform (tinylab.train.lora), the checkpoints hold the trainable parameters only,
and the export merges it.

Trade-off: everything that defines the next step (weights, AdamW state, step and token counters,
RNG; data position = stage tokens / seq_len) is in the checkpoint and nothing else, so a run
killed at any point and resumed is bitwise identical on CPU. A save stops training only to copy
the state into CPU memory (`checkpoint.mode: async`, tinylab.train.checkpoint.CheckpointWriter);
the next save, a divergence and the end of the stage wait for the write in flight.

The stage folder is safe to reuse after any failure: one process trains it at a time (a lock,
held by rank 0); a resume passes over a damaged newest checkpoint (with a warning) to the newest
whole one; nothing of the old run (result.json, resolved.yaml, metrics) is touched before the
checkpoint has loaded; a fresh start moves the old outputs aside into `.previous/` and deletes
them only when the new run has saved its first checkpoint (a fresh run killed earlier gets them
back on the next start); a divergence names the command that resumes with a lower LR, and such
a change made on purpose (`accept`) is recorded in the checkpoints, metrics and result.

    tinylab train params/stages/demo/base.yaml --run-dir outputs/runs/demo [--nproc 2]
    torchrun --nproc-per-node 2 -m tinylab.train --config resolved.yaml --run-dir RUN
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import shlex
import shutil
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from tqdm import tqdm  # text, not a widget: the bar also reaches papermill logs

from tinylab import release
from tinylab.config.loader import dump_config
from tinylab.config.stage import OptimConfig, ParallelConfig, StageConfig
from tinylab.data.packed import bits_per_byte
from tinylab.errors import UserError
from tinylab.files import hold_lock, remove_orphans
from tinylab.layout import RunLayout, StageLayout, StageResult, read_metrics
from tinylab.model import build_model, flops_per_token, save_hf, with_resolved_attention
from tinylab.release import local_folder, resolve_stage
from tinylab.train import lora
from tinylab.train.batching import BatchPlan, WindowSource, open_windows, to_batch
from tinylab.train.checkpoint import (
    CheckpointError,
    CheckpointWriter,
    TrainState,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_optimizer,
    remove_partial,
    training_recipe,
)
from tinylab.train.metrics import MetricsLog, mfu, peak_flops, peak_memory_bytes
from tinylab.train.parallel import (
    Distributed,
    after_optimizer_step,
    compute_context,
    grad_norm_and_clip,
    init_distributed,
    parallelize,
    prepare_micro_batch,
    shutdown,
)
from tinylab.train.profiling import StepProfiler, StepRange
from tinylab.train.schedule import stage_lr
from tinylab.train.start import (
    ReleaseWeights,
    StartPlan,
    WeightsSource,
    adapter_record,
    find_start,
    recorded_adapter,
)

# Fault injection for the resume tests: "kill-after-step:5,kill-in-save:8,nan-at-step:3";
# hang-in-save:N holds the (background) save of step N before its commit until the process dies.
FAULT_ENV = "TINYLAB_FAULT"


class NonFiniteLossError(UserError):
    """The loss or gradient norm became NaN or inf; the last good checkpoint is kept, and the
    message names the command that resumes from it with a lower learning rate."""


def run_stage(
    stage: StageConfig,
    run_dir: Path,
    *,
    resume: bool = True,
    discard: bool = False,
    accept: Sequence[str] = (),
    progress: bool = True,
    source: WindowSource | None = None,
    profile: StepRange | None = None,
) -> StageResult:
    """Train one stage in `run_dir` (this process, or one rank of a torchrun job). `resume`
    False starts over, moving the old outputs aside until the first checkpoint (`discard`:
    deleting them at once); `accept`: params fields a resume may change on purpose; `profile`:
    stage steps to profile into `<stage>/profile/` (tinylab.train.profiling)."""
    stage = resolve_stage(stage)
    stage = stage.model_copy(update={"model": with_resolved_attention(stage.model)})
    ctx = init_distributed(stage.parallel)
    try:
        layout = RunLayout(run_dir).stage(stage.name)
        with stage_lock(layout, ctx):
            return fit(stage, Path(run_dir), ctx=ctx, resume=resume, discard=discard,
                       accept=accept, progress=progress, source=source,
                       profile=profile)  # fmt: skip
    finally:
        shutdown(ctx)


def fit(
    stage: StageConfig,
    run_dir: Path,
    *,
    ctx: Distributed,
    resume: bool,
    discard: bool = False,
    accept: Sequence[str] = (),
    progress: bool,
    source: WindowSource | None,
    profile: StepRange | None = None,
) -> StageResult:
    """The training loop of one stage (see the module docstring); the caller holds the lock."""
    started = time.perf_counter()
    plan = BatchPlan.from_stage(stage, world_size=ctx.world_size, rank=ctx.rank)
    layout = RunLayout(run_dir).stage(stage.name)
    source = source or open_windows(run_dir, stage)
    say = _printer(ctx)
    start, model, optimizer, state = begin(
        stage, layout, ctx, resume=resume, discard=discard, accept=accept, say=say
    )
    recipe = training_recipe(stage, start.parent)
    adapter = None if stage.adapter is None else adapter_record(stage.adapter, start.adapter_base)
    counts = parameter_counts(model)
    changes = recipe_changes(start, state)
    wall_before = start.resume_from.meta.get("wall_s", 0.0) if start.resume_from else 0.0
    metrics = MetricsLog(
        layout.metrics,
        enabled=ctx.is_main,
        tensorboard=layout.tensorboard if stage.tensorboard else None,
    )
    metrics.rewind(state.step if start.resume_from is not None else None)
    if start.changes:
        metrics.write({"kind": "change", "step": state.step, "stage_step": state.stage_step,
                       "tokens": state.tokens, "changes": start.changes})  # fmt: skip
    num_steps = math.ceil(stage.max_tokens / stage.global_batch_tokens)
    flops, peak = flops_per_token(stage.model, plan.seq_len), peak_flops(stage.parallel, ctx.device)
    say(
        f"[{stage.name}] {start.describe()}; {num_steps} steps of "
        f"{plan.step_tokens:,} tokens ({ctx.world_size} x {plan.accum_steps} x "
        f"{plan.micro_batch_size} x {plan.seq_len}) on {ctx.device.type}"
        + (", FSDP2" if ctx.mesh is not None else "")
    )
    if start.resume_from is None:
        maybe_validate(model, source, plan, stage, state, metrics, ctx, force=True, say=say)
    finished_before = start.resume_from is not None and state.stage_step >= num_steps
    saved = start.resume_from.path if finished_before else None
    bar = tqdm(total=num_steps, initial=state.stage_step, desc=stage.name, unit="step",
               disable=not (progress and ctx.is_main), dynamic_ncols=True)  # fmt: skip
    writer = CheckpointWriter(
        layout.checkpoints, ctx=ctx, keep_last=stage.checkpoint.keep_last,
        background=stage.checkpoint.mode == "async", on_commit=lambda: drop_previous(layout, ctx),
    )  # fmt: skip
    readout = StepReadout(
        stage=stage, layout=layout, plan=plan, source=source, metrics=metrics, bar=bar,
        flops=flops, peak=peak, ctx=ctx, before_stop=writer.wait,
    )  # fmt: skip
    profiler = StepProfiler(profile, layout.profile, ctx)
    with writer, profiler:  # leaving the writer waits for the save in flight
        while state.stage_step < num_steps:
            profiler.before(state.stage_step + 1)
            clock = StepClock.start(ctx.device)
            first_window = state.stage_tokens // plan.seq_len
            loss = forward_backward(
                model, source, plan, first_window, parallel=stage.parallel, ctx=ctx
            )
            readout.read()  # the step before, with this one's kernels queued behind it
            grad_norm = grad_norm_and_clip(model, stage.optim.grad_clip)
            stage_start = state.tokens - state.stage_tokens
            lr = stage_lr(state.tokens + plan.step_tokens, stage, stage_start=stage_start)
            optimizer_step(optimizer, lr)
            after_optimizer_step(model, stage.parallel)
            if _saves_ahead(stage, state.stage_step, num_steps):  # the buffers, off the clock
                writer.prepare(model=model, optimizer=optimizer,
                               trainable_only=stage.adapter is not None)  # fmt: skip
            before, state = state, advance(state, plan)
            finished = state.stage_step == num_steps
            readout.hold(loss, grad_norm, before=before, after=state, lr=lr, clock=clock,
                         first_window=first_window,
                         log=finished or state.stage_step % stage.log_every_steps == 0)  # fmt: skip
            profiler.after(state.stage_step, last_of_stage=finished)
            _fault("kill-after-step", state.step)
            saving = (finished and stage.checkpoint.at_end) or _due(
                state.stage_step, stage.checkpoint.every_steps
            )
            if finished or saving or _due(state.stage_step, stage.validation.every_steps):
                readout.read()  # checked before anything is validated or saved
            maybe_validate(model, source, plan, stage, state, metrics, ctx, force=finished, say=say)
            if saving:
                wall_s = wall_before + time.perf_counter() - started
                saved = writer.save(
                    model=model, optimizer=optimizer, state=state, model_cfg=stage.model,
                    recipe=recipe, trainable_only=stage.adapter is not None,
                    extra_meta={"adapter": adapter, "wall_s": wall_s, "recipe_changes": changes},
                    finished=finished, before_commit=lambda s=state.step: _in_save(s),
                )  # fmt: skip
            bar.update(1)
        bar.close()
        metrics.close()
        hf_dir = maybe_export(model, stage, layout, source, ctx, trained=readout.loss is not None)
    result = StageResult(
        stage.name, layout.root, state.step, state.tokens, state.stage_tokens,
        final_loss(readout.loss, layout.metrics, ctx), wall_before + time.perf_counter() - started,
        saved, hf_dir, **counts, recipe_changes=changes or None,
    )  # fmt: skip
    if ctx.is_main:
        result.write()
    drop_previous(layout, ctx)
    say(f"[{stage.name}] done: step {state.step}, loss {result.final_loss}, {result.wall_s:.1f} s")
    return result


@contextlib.contextmanager
def stage_lock(layout: StageLayout, ctx: Distributed) -> Iterator[None]:
    """Rank 0 holds the stage folder's lock for the block; when another process holds it (or
    the folder cannot be written), every rank raises, rank 0 with the holder's name."""
    with contextlib.ExitStack() as stack:
        failure = None
        if ctx.is_main:
            try:
                stack.enter_context(hold_lock(layout.lock, f"stage folder {layout.root}"))
            except UserError as err:
                failure = err
        if not ctx.agree(failure is None):
            raise failure or UserError(f"stage folder {layout.root} is in use (see rank 0)")
        yield


def begin(
    stage: StageConfig,
    layout: StageLayout,
    ctx: Distributed,
    *,
    resume: bool,
    discard: bool,
    accept: Sequence[str],
    say,
) -> tuple[StartPlan, nn.Module, torch.optim.Optimizer, TrainState]:
    """Tidy the stage folder, plan the start, build the model and load what the plan names;
    a checkpoint that does not load is passed over for the next older whole one. Only then is
    the folder the new run's: the old result.json goes and resolved.yaml is written."""
    if ctx.is_main:
        tidy_stage_dir(layout, fresh=not resume, discard=discard)
    ctx.barrier()
    skip: list[tuple[Path, str]] = []
    while True:
        start = find_start(stage, layout.run, resume=resume, accept=accept, skip=skip)
        model, optimizer = build(stage, ctx, weights=start.weights_from)
        try:
            state = restore(start, model, optimizer, stage.optim, ctx=ctx)
            break
        except CheckpointError as err:
            if start.resume_from is None:
                raise
            skip.append((start.resume_from.path, str(err)))
    for path, why in start.skipped:
        say(f"[{stage.name}] warning: skipped checkpoint {path.name}, not whole: {why}")
    if ctx.is_main:
        layout.result.unlink(missing_ok=True)
        layout.resolved.write_text(dump_config(stage))
    ctx.barrier()
    return start, model, optimizer, state


def tidy_stage_dir(layout: StageLayout, *, fresh: bool, discard: bool) -> None:
    """Rank 0, under the lock: remove what killed processes left (a torn save, temp files),
    settle an interrupted fresh start, and for a fresh start set the old outputs aside (or
    delete them, `discard`)."""
    layout.root.mkdir(parents=True, exist_ok=True)
    for folder in (layout.root, layout.checkpoints):
        if folder.is_dir():
            remove_orphans(folder)
    if layout.checkpoints.is_dir():
        remove_partial(layout.checkpoints)
    settle_previous(layout)
    if fresh:
        set_aside(layout, discard=discard)
    layout.checkpoints.mkdir(exist_ok=True)


def set_aside(layout: StageLayout, *, discard: bool) -> None:
    """Move the stage's outputs into `.previous/` (checkpoints first), or delete them."""
    present = [p for p in layout.outputs if p.exists()]
    if discard:
        for path in present:
            _remove(path)
        return
    if present:
        layout.previous.mkdir()
    for path in present:
        os.replace(path, layout.previous / path.name)


def settle_previous(layout: StageLayout) -> None:
    """After a fresh start that was interrupted: when the new run saved no checkpoint, its
    outputs give way to the old ones (checkpoints restored last, so a kill here is settled the
    same way next time); when it did, the old ones are deleted."""
    if not layout.previous.is_dir():
        return
    if list_checkpoints(layout.checkpoints):
        shutil.rmtree(layout.previous)
        return
    old = sorted(layout.previous.iterdir(), key=lambda p: p.name == layout.checkpoints.name)
    for path in old:
        _remove(layout.root / path.name)
        os.replace(path, layout.root / path.name)
    layout.previous.rmdir()


def drop_previous(layout: StageLayout, ctx: Distributed) -> None:
    """The new run has a checkpoint in place (rank 0 calls it from the checkpoint writer) or has
    finished: the outputs a fresh start set aside go."""
    if ctx.is_main and layout.previous.exists():
        shutil.rmtree(layout.previous)


def recipe_changes(start: StartPlan, state: TrainState) -> list[dict]:
    """The changes made on purpose to the stage's params, oldest first: those its checkpoint
    records, and the one accepted now (at the resumed step)."""
    earlier = list(start.resume_from.meta.get("recipe_changes") or []) if start.resume_from else []
    if start.changes:
        earlier.append({"step": state.step, "changes": start.changes})
    return earlier


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def build(
    stage: StageConfig, ctx: Distributed, *, weights: WeightsSource | None = None
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The model (TinyLlama init from the stage seed; `weights` loaded into it; wrapped with
    the stage's LoRA adapter, if any; then parallelized) and AdamW over its trainable
    parameters. The one place where the model is transformed."""
    random.seed(stage.seed)
    np.random.seed(stage.seed % 2**32)
    torch.manual_seed(stage.seed)
    model = build_model(stage.model, device=ctx.device, seed=stage.seed)
    if weights is not None:
        load_weights(model, weights, ctx)
    if stage.adapter is not None:
        model = lora.apply(model, stage.adapter)
    parallelize(model, stage.parallel, ctx)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=0.0,
        betas=stage.optim.betas,
        eps=stage.optim.eps,
        weight_decay=stage.optim.weight_decay,
        fused=ctx.device.type == "cuda",
    )
    return model, optimizer


def load_weights(model: nn.Module, weights: WeightsSource, ctx: Distributed) -> None:
    """Load `weights` into a plain (unwrapped, unsharded) Llama: a release's weights, or the
    first checkpoint's full weights (the release under the chain, if any), then each adapter of
    the chain applied, loaded and merged in."""
    if isinstance(weights, ReleaseWeights):
        release.load_weights(model, local_folder(weights.release, weights.revision))
        return
    if weights.root is not None:
        load_weights(model, weights.root, ctx)
        adapters = weights.chain
    else:
        first, *adapters = weights.chain
        load_checkpoint(first.path, model=model, optimizer=None, ctx=ctx, restore_rng=False)
    for checkpoint in adapters:
        wrapped = lora.apply(model, recorded_adapter(checkpoint))
        load_checkpoint(
            checkpoint.path, model=wrapped, optimizer=None, ctx=ctx, restore_rng=False,
            trainable_only=True,
        )  # fmt: skip
        lora.merge(wrapped)


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Trainable and total parameters (global sizes, also when sharded)."""
    params = list(model.parameters())
    return {
        "trainable_params": sum(p.numel() for p in params if p.requires_grad),
        "total_params": sum(p.numel() for p in params),
    }


def restore(
    start: StartPlan,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    optim: OptimConfig,
    *,
    ctx: Distributed,
) -> TrainState:
    """Load the stage's own checkpoint whole, or the AdamW state the plan carries; the plan's
    schedule position. (build() loaded the weights from elsewhere.)"""
    if start.resume_from is not None:
        state = load_checkpoint(
            start.resume_from.path, model=model, optimizer=optimizer, ctx=ctx,
            trainable_only=start.resume_from.adapter is not None,
        )  # fmt: skip
    else:
        if start.optimizer_from is not None:
            load_optimizer(start.optimizer_from.path, model=model, optimizer=optimizer, ctx=ctx)
        state = TrainState(step=start.step, tokens=start.tokens)
    set_hyperparameters(optimizer, optim)
    return state


def set_hyperparameters(optimizer: torch.optim.Optimizer, optim: OptimConfig) -> None:
    """The stage's AdamW settings win over those stored with a carried optimizer state."""
    for group in optimizer.param_groups:
        group.update(betas=optim.betas, eps=optim.eps, weight_decay=optim.weight_decay)


def forward_backward(
    model: nn.Module,
    source: WindowSource,
    plan: BatchPlan,
    first_window: int,
    *,
    parallel: ParallelConfig,
    ctx: Distributed,
) -> torch.Tensor:
    """Accumulate gradients of this rank's micro-batches; returns the step's mean loss."""
    total = torch.zeros((), device=ctx.device)
    for micro in range(plan.accum_steps):
        prepare_micro_batch(model, parallel, last=micro == plan.accum_steps - 1)
        inputs, targets = to_batch(
            source.train(plan.micro_windows(first_window, micro)), ctx.device
        )
        with compute_context(parallel, ctx):
            # No KV cache: it is only for generation, and each layer writing into it made
            # per-layer torch.compile recompile per layer until dynamo's limit (8) left the
            # remaining layers eager.
            loss = model(
                input_ids=inputs, labels=targets, shift_labels=targets, use_cache=False
            ).loss
        (loss / plan.accum_steps).backward()
        total += loss.detach()
    return ctx.mean(total / plan.accum_steps)


@dataclass(frozen=True)
class StepClock:
    """A step's time. On a GPU two timing events on the stream, at the step's start and after
    its last kernel: the step's time is the GPU's, however late the host reads it (a read one
    step behind, or at once before a save, would otherwise shift the host's clock by up to a
    step); the end event is also when the step's numbers are on the host. On the CPU the
    host's clock, where each step is done when the host gets past it."""

    began: torch.cuda.Event | float
    ended: torch.cuda.Event | float | None = None

    @classmethod
    def start(cls, device: torch.device) -> StepClock:
        return cls(_clock_mark(device.type == "cuda"))

    def stop(self) -> StepClock:
        return StepClock(self.began, _clock_mark(isinstance(self.began, torch.cuda.Event)))

    def seconds(self) -> float:
        """The step's time, once `ended` has passed (its event synchronized, on a GPU)."""
        if isinstance(self.ended, torch.cuda.Event):
            return self.began.elapsed_time(self.ended) / 1e3
        return self.ended - self.began


def _clock_mark(gpu: bool) -> torch.cuda.Event | float:
    if not gpu:
        return time.perf_counter()
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event


@dataclass(frozen=True)
class HeldStep:
    """A step whose loss and gradient norm are on their way to the host."""

    values: torch.Tensor  # [loss, grad norm], on the CPU once `clock.ended` has passed
    clock: StepClock
    before: TrainState
    after: TrainState
    lr: float
    first_window: int
    log: bool  # whether it writes a metrics line


class StepReadout:
    """A step's loss and gradient norm reach the host without stopping the GPU: `hold` starts
    their copy when the step is queued; `read` waits for them once the next step's forward and
    backward are queued behind it (or at once, before a validation, a save and the end), stops
    the stage on a non-finite one, and writes the step's metrics line. The host's one wait per
    step so falls where the GPU has work in hand. A stop comes one step's kernels later than a
    read before the optimizer step, and nothing of the stopped step is saved. The step's time
    is the GPU's (`StepClock`), so a read one step late or at once does not shift it."""

    def __init__(self, *, stage: StageConfig, layout: StageLayout, plan: BatchPlan,
                 source: WindowSource, metrics: MetricsLog, bar: tqdm, flops: int,
                 peak: float | None, ctx: Distributed, before_stop) -> None:  # fmt: skip
        self.stage, self.layout, self.plan, self.source = stage, layout, plan, source
        self.metrics, self.bar, self.flops, self.peak, self.ctx = metrics, bar, flops, peak, ctx
        self.before_stop = before_stop
        self.loss: float | None = None  # the last step read
        self._held: HeldStep | None = None

    def hold(
        self,
        loss: torch.Tensor,
        grad_norm: torch.Tensor,
        *,
        before: TrainState,
        after: TrainState,
        lr: float,
        first_window: int,
        clock: StepClock,
        log: bool,
    ) -> None:
        """Start copying a queued step's numbers to the host; the next `read` reads them."""
        values = torch.stack([loss.float(), grad_norm.float()])
        if values.is_cuda:
            pinned = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            values = pinned.copy_(values, non_blocking=True)
        self._held = HeldStep(values, clock.stop(), before, after, lr, first_window, log)

    def read(self) -> None:
        """Read the step held, if any: NonFiniteLossError on NaN or inf, else its metrics line."""
        if self._held is None:
            return
        held, self._held = self._held, None
        if isinstance(held.clock.ended, torch.cuda.Event):
            held.clock.ended.synchronize()
        loss, grad_norm = held.values.tolist()
        seconds = held.clock.seconds()
        if _fault("nan-at-step", held.after.step):
            loss = loss * float("nan")
        ensure_finite(loss, grad_norm, stage=self.stage, state=held.before, layout=self.layout,
                      ctx=self.ctx, before_stop=self.before_stop)  # fmt: skip
        self.loss = loss
        if held.log:
            record = train_record(held.after, loss, held.lr, grad_norm, seconds, self.plan,
                                  self.flops, self.peak, self.ctx)  # fmt: skip
            windows = held.first_window, held.first_window + self.plan.windows_per_step
            record["mixture"] = self.source.realized(*windows)
            self.metrics.write(record)
            self.bar.set_postfix(live_postfix(record, self.ctx.world_size), refresh=False)
        _fault("kill-after-log", held.after.step)


def ensure_finite(
    loss: float,
    grad_norm: float,
    *,
    stage: StageConfig,
    state: TrainState,
    layout: StageLayout,
    ctx: Distributed,
    before_stop=None,
) -> None:
    """Stop the stage when the loss or gradient norm is NaN or inf (`state`: before that step);
    the error names the command that resumes from the last good checkpoint with half the
    learning rate. `before_stop` runs first (the checkpoint writer's wait: a save in flight is
    that checkpoint)."""
    if math.isfinite(loss) and math.isfinite(grad_norm):
        return
    if before_stop is not None:
        before_stop()
    last = latest_checkpoint(layout.checkpoints)
    lr = stage.optim.lr / 2
    command = [
        "tinylab", "train", str(layout.resolved), "--run-dir", str(layout.run.root),
        "--set", f"optim.lr={lr:g}",
        *(["--set", f"optim.min_lr={lr:g}"] if stage.optim.min_lr > lr else []),
        *(["--nproc", str(ctx.world_size)] if ctx.world_size > 1 else []),
        *(["--accept-change", "optim"] if last else ["--fresh"]),
    ]  # fmt: skip
    raise NonFiniteLossError(
        f"stage {stage.name!r}: loss = {loss}, grad norm = {grad_norm} at step "
        f"{state.step + 1} (tokens {state.tokens:,}); stopped, nothing of this step saved. The "
        f"last good checkpoint is {last or 'none (nothing saved yet)'}. To go on from it with "
        f"a lower learning rate (or check the data first): {shlex.join(command)}"
    )


def optimizer_step(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def advance(state: TrainState, plan: BatchPlan) -> TrainState:
    return TrainState(
        step=state.step + 1,
        tokens=state.tokens + plan.step_tokens,
        stage_step=state.stage_step + 1,
        stage_tokens=state.stage_tokens + plan.step_tokens,
    )


def train_record(
    state: TrainState,
    loss: float,
    lr: float,
    grad_norm: float,
    seconds: float,
    plan: BatchPlan,
    flops: int,
    peak: float | None,
    ctx: Distributed,
) -> dict:
    """The metrics line of one optimizer step (metrics.py documents the fields)."""
    tokens_per_s = plan.step_tokens / seconds
    return {
        "kind": "train", "step": state.step, "stage_step": state.stage_step,
        "tokens": state.tokens, "stage_tokens": state.stage_tokens, "loss": float(loss),
        "lr": lr, "grad_norm": float(grad_norm), "tokens_per_s": tokens_per_s,
        "step_s": seconds, "mfu": mfu(tokens_per_s, flops, peak, ctx.world_size),
        "peak_mem_bytes": peak_memory_bytes(ctx.device),
    }  # fmt: skip


def live_postfix(record: dict, world_size: int) -> dict[str, str]:
    """What the progress bar shows after a step: loss, LR, tokens/s per device and MFU."""
    postfix = {
        "loss": f"{record['loss']:.3f}",
        "lr": f"{record['lr']:.2e}",
        "tok/s/dev": f"{record['tokens_per_s'] / world_size:,.0f}",
    }
    if record["mfu"] is not None:
        postfix["mfu"] = f"{record['mfu']:.1%}"
    return postfix


def maybe_validate(
    model: nn.Module,
    source: WindowSource,
    plan: BatchPlan,
    stage: StageConfig,
    state: TrainState,
    metrics: MetricsLog,
    ctx: Distributed,
    *,
    force: bool,
    say,
) -> None:
    """Per-domain held-out loss and bits per byte on the validation cadence (or when forced)."""
    if not force and not _due(state.stage_step, stage.validation.every_steps):
        return
    domains = validate(
        model, source, plan, max_windows=stage.validation.max_windows, parallel=stage.parallel,
        ctx=ctx,
    )  # fmt: skip
    if domains:
        metrics.write(
            {
                "kind": "val",
                "step": state.step,
                "tokens": state.tokens,
                "stage_step": state.stage_step,
                "domains": domains,
            }
        )
        say(
            f"[{stage.name}] step {state.step} val "
            + ", ".join(f"{d} {v['loss']:.3f} ({v['bpb']:.3f} bpb)" for d, v in domains.items())
        )


@torch.no_grad()
def validate(
    model: nn.Module,
    source: WindowSource,
    plan: BatchPlan,
    *,
    max_windows: int,
    parallel: ParallelConfig,
    ctx: Distributed,
) -> dict[str, dict[str, float]]:
    """Mean loss (nats/token) and bits per byte per domain over its held-out windows. Ranks
    split the windows and run the same number of forwards (FSDP needs every rank in each)."""
    model.eval()
    results = {}
    for domain, refs in source.validation(max_windows).items():
        share = math.ceil(len(refs) / ctx.world_size)
        mine = refs[ctx.rank :: ctx.world_size]
        padded = mine + [refs[0]] * (share - len(mine))
        weights = torch.tensor([1.0] * len(mine) + [0.0] * (share - len(mine)), dtype=torch.float64)
        losses = []
        for start in range(0, share, plan.micro_batch_size):
            chunk = padded[start : start + plan.micro_batch_size]
            windows = np.stack([source.val_window(name, index) for name, index in chunk])
            inputs, targets = to_batch(windows, ctx.device)
            with compute_context(parallel, ctx):
                logits = model(input_ids=inputs, use_cache=False).logits
            per_token = F.cross_entropy(
                logits.float().flatten(0, 1), targets.flatten(), reduction="none"
            )
            losses.append(per_token.view(len(chunk), -1).mean(1).double().cpu())
        summed = (
            (torch.cat(losses) * weights).sum() if losses else torch.zeros((), dtype=torch.float64)
        )
        total = ctx.sum(torch.stack([summed, weights.sum()]).to(ctx.device)).cpu()
        loss = float(total[0] / total[1])
        results[domain] = {
            "loss": loss,
            "bpb": bits_per_byte(loss, source.bytes_per_token(domain)),
            "windows": int(total[1]),
        }
    model.train()
    return results


def maybe_export(
    model: nn.Module,
    stage: StageConfig,
    layout: StageLayout,
    source: WindowSource,
    ctx: Distributed,
    *,
    trained: bool,
) -> Path | None:
    """The HF export of the stage, unless off, or already there and nothing was trained now."""
    if not stage.export_hf:
        return None
    if not trained and (layout.hf / "config.json").is_file():
        return layout.hf
    return export_hf(model, stage, layout, source, ctx)


def export_hf(
    model: nn.Module,
    stage: StageConfig,
    layout: StageLayout,
    source: WindowSource,
    ctx: Distributed,
) -> Path | None:
    """Write `<stage>/hf/`: safetensors + config + the run's tokenizer (rank 0; collective); an
    adapter stage writes `<stage>/adapter/` and merges the adapter into the export."""
    full = get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if not ctx.is_main:
        return None
    export = build_model(stage.model.model_copy(update={"attention": "sdpa"}), device="cpu")
    if stage.adapter is not None:
        export = lora.export(export, full, stage.adapter, layout.adapter)
    else:
        export.load_state_dict(full)
    tokenizer = None
    if source.tokenizer_dir is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(source.tokenizer_dir)
    return save_hf(export, layout.hf, tokenizer=tokenizer)


def final_loss(loss: float | None, metrics: Path, ctx: Distributed) -> float | None:
    """The last training loss of the stage (from metrics.jsonl when nothing ran now)."""
    if loss is not None:
        return float(loss)
    if not ctx.is_main:
        return None
    records = read_metrics(metrics, "train")
    return records[-1]["loss"] if records else None


def _saves_ahead(stage: StageConfig, stage_step: int, num_steps: int) -> bool:
    """Whether this stage saves a checkpoint after `stage_step` (the step in progress)."""
    every = stage.checkpoint.every_steps
    return stage.checkpoint.at_end or (
        every is not None and every * (stage_step // every + 1) <= num_steps
    )


def _due(stage_step: int, every_steps: int | None) -> bool:
    """Whether a cadence (None: off) falls on this step."""
    return every_steps is not None and stage_step % every_steps == 0


def _printer(ctx: Distributed):
    def say(message: str) -> None:
        if ctx.is_main:
            tqdm.write(message)

    return say


def _fault(point: str, step: int) -> bool:
    """Test hook: SIGKILL this process (kill-*), block this thread for good (hang-*), or report
    a planned NaN at `point`:`step`."""
    if f"{point}:{step}" not in os.environ.get(FAULT_ENV, "").split(","):
        return False
    if point.startswith("kill"):
        os.kill(os.getpid(), signal.SIGKILL)
    if point.startswith("hang"):
        threading.Event().wait()
    return True


def _in_save(step: int) -> None:
    """The test hooks of a save, between its shards and its commit (in the writer's thread)."""
    _fault("kill-in-save", step)
    _fault("hang-in-save", step)
