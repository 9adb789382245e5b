"""Run preparation tasks on datatrove's executors: N local processes, or a SLURM job array.

tinylab.data.pack splits preparation into tasks (`work(rank, world_size)`, each packing the
units of work dealt to it) and one `finish()` that writes the index; this module only runs them.
datatrove (Hugging Face's engine for FineWeb-scale processing, pip-installable, no service to
start) provides what a scale-out needs and nothing more: a task marks itself complete in its
logging folder, so a rerun runs only unfinished tasks; the local executor runs tasks in a
process pool (workers=1: in this process, the demo's path), the SLURM executor submits them as
a job array and the finishing step as a dependent job. Ray or Dask would add a cluster service
to run and a scheduler whose placement we do not need (tasks share nothing).

    run_local(work, tasks=8, workers=2, logging_dir=data_dir / "work" / "logs")
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

Work = Callable[[int, int], None]


class _Step:
    """A datatrove pipeline step (a callable of data, rank, world size) running `work`."""

    def __init__(self, work: Work, label: str):
        self.work, self.label = work, label

    def __call__(self, data: object, rank: int = 0, world_size: int = 1) -> None:
        self.work(rank, world_size)

    def __repr__(self) -> str:  # datatrove logs the pipeline
        return self.label


def _finish(finish: Callable[[], None], rank: int, world_size: int) -> None:
    finish()


def run_local(
    work: Work, *, tasks: int, workers: int, logging_dir: Path, quiet: bool = False
) -> None:
    """Run tasks 0..tasks-1 of `work`, `workers` at a time (1: in this process); tasks that
    completed in an earlier run with the same logging folder are skipped. Each task logs into
    `logging_dir/logs/`, and to stderr unless `quiet`."""
    from datatrove.executor import LocalPipelineExecutor

    os.environ.setdefault("DATATROVE_COLORIZE_LOGS", "0")
    executor = LocalPipelineExecutor(
        pipeline=[_Step(work, "tinylab prepare: pack units")],
        tasks=tasks,
        workers=min(workers, tasks),
        logging_dir=str(logging_dir),
        start_method="fork",  # as the tokenizer pool: works from notebooks and `python -`
    )
    # datatrove adds a stderr sink per task (at that moment's sys.stderr)
    with contextlib.redirect_stderr(io.StringIO()) if quiet else contextlib.nullcontext():
        executor.run()


def submit_slurm(
    work: Work,
    finish: Callable[[], None],
    *,
    tasks: int,
    logging_dir: Path,
    partition: str,
    time: str,
    cpus_per_task: int = 1,
    mem_per_cpu_gb: int = 4,
    env_command: str | None = None,
) -> None:
    """Submit `work` as a SLURM job array of `tasks` tasks and `finish` as one job after it."""
    from datatrove.executor import SlurmPipelineExecutor

    common = {
        "partition": partition,
        "time": time,
        "cpus_per_task": cpus_per_task,
        "mem_per_cpu_gb": mem_per_cpu_gb,
        "env_command": env_command,
    }
    array = SlurmPipelineExecutor(
        pipeline=[_Step(work, "tinylab prepare: pack units")],
        tasks=tasks,
        job_name="tinylab-prepare",
        logging_dir=str(logging_dir / "tasks"),
        **common,
    )
    SlurmPipelineExecutor(
        pipeline=[_Step(partial(_finish, finish), "tinylab prepare: write the index")],
        tasks=1,
        job_name="tinylab-prepare-index",
        logging_dir=str(logging_dir / "index"),
        depends=array,
        **common,
    ).run()
