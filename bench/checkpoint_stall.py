"""How long a checkpoint save stops training: a sync save beside async saves, in one run.

Builds the model with the trainer's own set-up (`tinylab.train.loop.build`: TinyLlama's init,
then the paper base stage's `parallel` block: FSDP2 over a one-GPU mesh, per-layer compile,
Liger's loss when installed), trains a few optimizer steps on random tokens so AdamW has its
moments, then saves the full state a resume reads (weights + AdamW state + RNG) through
`tinylab.train.checkpoint.CheckpointWriter`, as the stage loop does:

- `sync`: `checkpoint.mode: sync`; training waits for the whole write.
- `async, prepare`: `checkpoint.mode: async`, as the stage loop starts it: the writer allocates
  (and on a GPU pins) the CPU buffers of its saves in its own thread while training goes on
  (`CheckpointWriter.prepare`); `--no-prepare` leaves this out, so that the first save
  allocates them itself (as before 2026-12-02).
- `async, 1st`: its first save: the copy into those buffers (or their allocation first).
- `async, 2nd`: the steady state: the copy into the same buffers.

`stall` is the wall time the training loop is blocked in `save()` (or `prepare()`; the device
synchronized before and after). `written` is the time from the call until the shards are on
disk (the background thread reaches the commit; for `prepare`, until the buffers are
allocated), with the training steps that ran meanwhile and their median time beside the median
of steps without a save in flight. The checkpoints go to a
temporary folder (or `--out`) and are deleted at the end (keep them with `--keep`).

    python bench/checkpoint_stall.py                       # the 1.1B on one GPU
    python bench/checkpoint_stall.py --no-prepare          # the first save allocates
    python bench/checkpoint_stall.py --set parallel.precision=fp8       # float8 weights
    python bench/checkpoint_stall.py --model params/models/demo.yaml --device cpu   # a check
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from tinylab.config.loader import PARAMS_DIR, apply_overrides, load_config
from tinylab.config.stage import StageConfig
from tinylab.model import load_preset
from tinylab.train.checkpoint import CheckpointWriter, TrainState
from tinylab.train.loop import build, optimizer_step
from tinylab.train.parallel import (
    Distributed,
    compute_context,
    grad_norm_and_clip,
    init_distributed,
    shutdown,
)

BASE_STAGE = PARAMS_DIR / "stages" / "tinyllama-v1.1" / "base.yaml"
CPU = ("parallel.compile=off", "parallel.liger=[]", "parallel.precision=fp32")  # a quick check


def bench_stage(
    model: str, *, device: str, micro: int, seq_len: int, sets: list[str] = ()
) -> StageConfig:
    """The paper's base stage with `model`, one micro-batch of `micro` x `seq_len` (at most the
    model's context) per step, and the overrides `sets` (e.g. parallel.precision=fp8)."""
    stage = load_config(BASE_STAGE, StageConfig)
    data = stage.model_dump(mode="json")
    data["model"] = load_preset(model).model_dump(mode="json")
    data["data"]["seq_len"] = min(seq_len, data["model"]["max_position_embeddings"])
    tokens = micro * data["data"]["seq_len"]
    sets = [f"micro_batch_size={micro}", f"global_batch_tokens={tokens}",
            f"parallel.device={device}", *(CPU if device == "cpu" else ()), *sets]  # fmt: skip
    return StageConfig.model_validate(apply_overrides(data, sets, StageConfig))


def train_step(model, optimizer, stage: StageConfig, ctx: Distributed, step: int) -> float:
    """One optimizer step on random tokens; its wall time (the device synchronized)."""
    tick = time.perf_counter()
    generator = torch.Generator(device=ctx.device).manual_seed(step)
    shape = (stage.micro_batch_size, stage.data.seq_len)
    tokens = torch.randint(stage.model.vocab_size, shape, device=ctx.device, generator=generator)
    with compute_context(stage.parallel, ctx):
        loss = model(input_ids=tokens, labels=tokens, use_cache=False).loss
    loss.backward()
    grad_norm_and_clip(model, stage.optim.grad_clip)
    optimizer_step(optimizer, stage.optim.lr)
    loss.item()  # as the loop's one sync per step
    return time.perf_counter() - tick


def timed_save(writer: CheckpointWriter, model, optimizer, stage, ctx, step: int) -> dict:
    """One save: the stall, when its shards were written, and the steps trained meanwhile."""
    written: list[float] = []
    _sync(ctx.device)
    start = time.perf_counter()
    writer.save(model=model, optimizer=optimizer, state=TrainState(step=step),
                model_cfg=stage.model, finished=False,
                before_commit=lambda: written.append(time.perf_counter()))  # fmt: skip
    _sync(ctx.device)
    stall = time.perf_counter() - start
    steps = []
    while writer.in_flight:
        steps.append(train_step(model, optimizer, stage, ctx, step * 10_000 + len(steps)))
    writer.wait()
    return {"stall": stall, "written": written[0] - start, "steps": steps}


def timed_prepare(writer: CheckpointWriter, model, optimizer, stage, ctx) -> dict:
    """The stage loop's `prepare`: its stall, when the buffers were there, the steps meanwhile."""
    _sync(ctx.device)
    start = time.perf_counter()
    writer.prepare(model=model, optimizer=optimizer)
    _sync(ctx.device)
    stall = time.perf_counter() - start
    steps = []
    while writer.preparing:
        steps.append(train_step(model, optimizer, stage, ctx, 90_000 + len(steps)))
    return {"stall": stall, "written": time.perf_counter() - start, "steps": steps}


def run(args: argparse.Namespace) -> list[tuple[str, dict]]:
    stage = bench_stage(args.model, device=args.device, micro=args.micro, seq_len=args.seq_len,
                        sets=args.set)  # fmt: skip
    ctx = init_distributed(stage.parallel)
    out = Path(args.out or tempfile.mkdtemp(prefix="checkpoint-stall-"))
    try:
        model, optimizer = build(stage, ctx)
        for step in range(args.warmup):  # compile, AdamW state
            train_step(model, optimizer, stage, ctx, step)
        plain = [train_step(model, optimizer, stage, ctx, 100 + i) for i in range(args.steps)]
        rows = [("training steps, no save", {"steps": plain})]
        with CheckpointWriter(out / "sync", ctx=ctx, keep_last=1, background=False) as writer:
            rows.append(("sync", timed_save(writer, model, optimizer, stage, ctx, 1)))
        rows[-1][1]["bytes"] = _size(out / "sync")
        shutil.rmtree(out / "sync")
        with CheckpointWriter(out / "async", ctx=ctx, keep_last=1, background=True) as writer:
            if not args.no_prepare:
                rows.append(("async, prepare",
                             timed_prepare(writer, model, optimizer, stage, ctx)))  # fmt: skip
            for step, name in ((2, "async, 1st"), (3, "async, 2nd")):
                rows.append((name, timed_save(writer, model, optimizer, stage, ctx, step)))
        return rows
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
        shutdown(ctx)


def table(rows: list[tuple[str, dict]], *, device: str, model: str) -> str:
    size = next(r["bytes"] for _, r in rows if "bytes" in r)
    plain = statistics.median(rows[0][1]["steps"])
    lines = [
        f"checkpoint stall: {model} on {device}, {size / 1e9:.2f} GB per checkpoint; "
        f"a training step takes {plain:.3f} s without a save",
        f"{'save':<14} {'stall s':>8} {'written s':>10} {'steps meanwhile':>16} {'step s':>8}",
    ]
    for name, r in rows[1:]:
        steps = r["steps"]
        median = f"{statistics.median(steps):.3f}" if steps else "-"
        lines.append(f"{name:<14} {r['stall']:>8.2f} {r['written']:>10.2f} {len(steps):>16} "
                     f"{median:>8}")  # fmt: skip
    return "\n".join(lines)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tinyllama-1.1b", help="preset name or YAML path")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--micro", type=int, default=4, help="sequences per step")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--warmup", type=int, default=3, help="steps before any timing")
    parser.add_argument("--steps", type=int, default=5, help="timed steps without a save")
    parser.add_argument("--out", help="folder for the checkpoints (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoints")
    parser.add_argument(
        "--no-prepare", action="store_true", help="the first async save allocates its buffers"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a stage override, e.g. parallel.precision=fp8 (repeatable)",
    )
    args = parser.parse_args()
    rows = run(args)
    print(table(rows, device=args.device, model=args.model))


if __name__ == "__main__":
    main()
