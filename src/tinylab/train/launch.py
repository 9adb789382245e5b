"""Launch a stage from a notebook or the CLI: in this process for one process, else torchrun.

With `nproc == 1` the stage runs in the caller's process (a notebook kernel shows a live
tqdm bar). With `nproc > 1` it writes the resolved params into the stage folder, starts
`python -m torch.distributed.run --standalone --nproc-per-node N -m tinylab.train ...` as a
subprocess, streams its log, drives a progress bar from the metrics file it writes, and reads the
result from disk. Across nodes, `tinylab submit` passes a `launcher` (srun + torchrun with a
rendezvous, docs/CLUSTER.md) that replaces the standalone torchrun; its --nnodes and
--nproc-per-node give the world size the batch is checked against.

    from tinylab.train import train_stage
    train_stage("params/stages/demo/base.yaml", "outputs/runs/demo", nproc=2)
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm  # text, not a widget: the bar also reaches papermill logs

from tinylab.config.loader import (
    PROJECT_ROOT,
    ConfigError,
    dump_config,
    load_config,
    override_config,
    project_path,
)
from tinylab.config.stage import StageConfig
from tinylab.errors import UserError
from tinylab.files import hold_lock
from tinylab.layout import RunLayout, StageResult, last_metric
from tinylab.model import with_resolved_attention
from tinylab.release import resolve_stage
from tinylab.train.batching import BatchPlan
from tinylab.train.loop import live_postfix, run_stage
from tinylab.train.parallel import check_parallel
from tinylab.train.profiling import StepRange


def train_stage(
    stage_params: str | Path | StageConfig,
    run_dir: str | Path,
    *,
    nproc: int = 1,
    launcher: Sequence[str] = (),
    overrides: list[str] | tuple[str, ...] = (),
    resume: bool = True,
    discard: bool = False,
    accept: Sequence[str] = (),
    progress: bool = True,
    profile: StepRange | None = None,
) -> StageResult:
    """Train a stage (params file or loaded config) in `run_dir` on `nproc` local processes, or
    through `launcher` (a torchrun command prefix spanning nodes). Relative paths are resolved
    against the project root, so notebooks/ and the root agree. `resume`, `discard`, `accept`,
    `profile`: as for run_stage."""
    stage = resolve_stage(load_stage(stage_params, overrides))
    run_dir = project_path(run_dir)
    if nproc < 1:
        raise ConfigError(f"--nproc {nproc}: must be >= 1 (processes on this node)")
    if nproc == 1 and not launcher:
        return run_stage(stage, run_dir, resume=resume, discard=discard, accept=accept,
                         progress=progress, profile=profile)  # fmt: skip
    world_size = launcher_world_size(launcher) if launcher else nproc
    BatchPlan.from_stage(stage, world_size=world_size)  # an indivisible batch fails before launch
    check_parallel(stage.parallel, world_size)
    stage = stage.model_copy(update={"model": with_resolved_attention(stage.model)})
    layout = RunLayout(run_dir).stage(stage.name)
    with hold_lock(layout.lock, f"stage folder {layout.root}"):
        pass  # in use: say so now, not from inside torchrun (rank 0 takes the lock itself)
    config = layout.launch_config(os.getpid())  # resolved.yaml is the ranks' to write
    config.write_text(dump_config(stage))
    try:
        _launch(stage, config, run_dir, launcher=launcher, nproc=nproc, world_size=world_size,
                resume=resume, discard=discard, accept=accept, progress=progress,
                profile=profile)  # fmt: skip
    finally:
        config.unlink(missing_ok=True)
    return StageResult.read(layout.root)


def _launch(
    stage: StageConfig,
    config: Path,
    run_dir: Path,
    *,
    launcher: Sequence[str],
    nproc: int,
    world_size: int,
    resume: bool,
    discard: bool,
    accept: Sequence[str],
    progress: bool,
    profile: StepRange | None,
) -> None:
    """torchrun (or `launcher`) over `python -m tinylab.train` with `config`."""
    layout = RunLayout(run_dir).stage(stage.name)
    torchrun = list(launcher) or [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
    ]
    command = [
        *torchrun,
        "-m",
        "tinylab.train",
        "--config",
        str(config),
        "--run-dir",
        str(run_dir),
        *([] if resume else ["--no-resume"]),
        *(["--discard"] if discard else []),
        *[f"--accept-change={field}" for field in accept],
        *([f"--profile-steps={profile}"] if profile else []),
    ]
    stream_subprocess(
        command, layout.metrics, stage=stage, world_size=world_size, progress=progress
    )


def launcher_world_size(launcher: Sequence[str]) -> int:
    """nnodes x nproc-per-node of a torchrun command (`--opt=value` or `--opt value`)."""
    values: dict[str, str] = {}
    for i, arg in enumerate(launcher):
        for name in ("--nnodes", "--nproc-per-node", "--nproc_per_node"):
            if arg == name and i + 1 < len(launcher):
                values[name.replace("_", "-")] = launcher[i + 1]
            elif arg.startswith(name + "="):
                values[name.replace("_", "-")] = arg.split("=", 1)[1]
    try:
        return int(values["--nnodes"]) * int(values["--nproc-per-node"])
    except (KeyError, ValueError):
        raise ConfigError(
            f"launcher {' '.join(launcher)!r}: needs numeric --nnodes and --nproc-per-node "
            "(an elastic range such as 1:4 cannot fix the global batch split)"
        ) from None


def load_stage(stage_params: str | Path | StageConfig, overrides=()) -> StageConfig:
    """A StageConfig from a params path (relative to the project root) or a loaded one, with
    dotted overrides applied."""
    if not isinstance(stage_params, StageConfig):
        return load_config(project_path(stage_params), StageConfig, overrides=list(overrides))
    return override_config(stage_params, list(overrides), source=f"stage {stage_params.name!r}")


def stream_subprocess(
    command: list[str], metrics: Path, *, stage: StageConfig, world_size: int, progress: bool
) -> None:
    """Run `command`, echo its output lines, advance a bar (step, loss, tokens/s per device,
    MFU) from `metrics`; raise on failure (a UserError when a rank stopped on one)."""
    total = -(-stage.max_tokens // stage.global_batch_tokens)
    lines: queue.Queue[str | None] = queue.Queue()
    tail: deque[str] = deque(maxlen=30)
    said: list[str] = []
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        cwd=PROJECT_ROOT,
    )
    reader = threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True)
    reader.start()
    bar = tqdm(total=total, desc=stage.name, unit="step", disable=not progress)
    done = False
    while not done:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            line = ""
        if line is None:
            done = True
        elif line:
            tail.append(line.rstrip())
            tqdm.write(line.rstrip())
            if line.startswith("error: "):  # a rank's UserError (python -m tinylab.train)
                said.append(line.rstrip()[len("error: ") :])
        record = last_metric(metrics, "train")
        if record is not None:
            bar.n = int(record["stage_step"])
            bar.set_postfix(live_postfix(record, world_size), refresh=False)
        bar.refresh()
    bar.close()
    code = proc.wait()
    if code != 0 and said:
        raise UserError(said[0])
    if code != 0:
        raise RuntimeError(
            f"torchrun exited with code {code} training stage {stage.name!r}; last output:\n"
            + "\n".join(tail)
        )


def _pump(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)
