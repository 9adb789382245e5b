"""The sbatch script of one pipeline step's job: #SBATCH options, the srun + torchrun launcher
of multi-process training, the requeue trap and the `python -m tinylab.cluster run-step` line.
Pure: text from the step, its resources and the profile; nothing is read or submitted.

    render_script(planned, run_dir=RUN, profile=profile, resources=profile.train, training=True,
                  pipeline_path=Path("params/pipelines/tinyllama-v1.1.yaml"))
"""

from __future__ import annotations

import shlex
from pathlib import Path

from tinylab.config.cluster import ClusterConfig, JobResources
from tinylab.config.loader import PROJECT_ROOT
from tinylab.layout import RunLayout
from tinylab.notebook import NOTEBOOKS_DIR
from tinylab.pipeline import PlannedStep

REQUEUE_TRAP = """\
requeue_before_limit() {{
  if [ "${{SLURM_RESTART_COUNT:-0}}" -lt {max_requeues} ]; then
    echo "[tinylab] time limit near: requeueing job $SLURM_JOB_ID (resumes from its checkpoint)"
    scontrol requeue "$SLURM_JOB_ID"
  else
    echo "[tinylab] time limit near and {max_requeues} requeues used: not requeueing"
  fi
}}
trap requeue_before_limit USR1
"""

WAIT_FOR_STEP = """\
step_pid=$!
while true; do  # wait returns early when the USR1 trap runs; keep waiting for the step
  wait "$step_pid"
  code=$?
  kill -0 "$step_pid" 2>/dev/null || break
done
exit "$code"
"""


def script_path(run_dir: Path, step: str) -> Path:
    """RUN/cluster/<step>.sbatch."""
    return RunLayout(run_dir).cluster / f"{step}.sbatch"


def logs_dir(run_dir: Path) -> Path:
    """RUN/cluster/logs/: one <step>-<job id>.out per job."""
    return RunLayout(run_dir).cluster / "logs"


def needs_launcher(resources: JobResources, training: bool) -> bool:
    """Training on more than one process goes through srun + torchrun."""
    return training and resources.nodes * resources.procs > 1


def placeholder(step: str) -> str:
    """Stands for a job id in a dependency until the job is submitted."""
    return f"<job id of {step}>"


def sbatch_header(
    job_name: str, resources: JobResources, profile: ClusterConfig, *, log: Path
) -> list[str]:
    """The #SBATCH lines of one step's job (dependency excluded)."""
    options = [f"--job-name={job_name}"]
    for key in ("partition", "account", "qos"):
        if getattr(profile, key):
            options.append(f"--{key}={getattr(profile, key)}")
    options += [f"--nodes={resources.nodes}", "--ntasks-per-node=1"]
    options += [f"--cpus-per-task={resources.cpus_per_node}"]
    if resources.gpus_per_node:
        options.append(f"--gpus-per-node={resources.gpus_per_node}")
    if resources.mem is not None:
        options.append(f"--mem={resources.mem}")
    options += [f"--time={resources.time}", f"--output={log}", "--open-mode=append"]
    if profile.requeue:
        options += ["--requeue", f"--signal=B:USR1@{profile.grace_s}"]
    options += profile.sbatch_options
    return [f"#SBATCH {option}" for option in options]


def port_span(profile: ClusterConfig) -> int:
    """How many ports above rdzv_port jobs spread over (by job id), so jobs sharing a node do
    not collide and the port stays below 65536."""
    return min(10000, 65536 - profile.rdzv_port)


def launcher_lines(resources: JobResources, profile: ClusterConfig) -> list[str]:
    """Shell lines setting MASTER_ADDR/PORT and LAUNCHER: srun one torchrun per node."""
    launcher = (
        "srun --nodes=$SLURM_JOB_NUM_NODES --ntasks-per-node=1 "
        f"--cpus-per-task={resources.cpus_per_node} --kill-on-bad-exit=1 "
        "python -m torch.distributed.run --nnodes=$SLURM_JOB_NUM_NODES "
        f"--nproc-per-node={resources.procs} --rdzv-backend=c10d "
        "--rdzv-endpoint=$MASTER_ADDR:$MASTER_PORT --rdzv-id=$SLURM_JOB_ID --max-restarts=0"
    )
    return [
        "# rendezvous on the first node of the allocation; one torchrun per node",
        'export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)',
        f"export MASTER_PORT=$(({profile.rdzv_port} + SLURM_JOB_ID % {port_span(profile)}))",
        f'LAUNCHER="{launcher}"',
    ]


def render_script(
    planned: PlannedStep,
    *,
    run_dir: Path,
    profile: ClusterConfig,
    resources: JobResources,
    training: bool,
    pipeline_path: Path,
    overrides: list[str] | tuple[str, ...] = (),
    notebooks_dir: Path = NOTEBOOKS_DIR,
    dependencies: list[str] | tuple[str, ...] = (),
) -> str:
    """The bash script of one step's job."""
    name = planned.step.name
    log = logs_dir(run_dir) / f"{name}-%j.out"
    lines = ["#!/bin/bash"]
    lines += sbatch_header(f"{run_dir.name}.{name}", resources, profile, log=log)
    if dependencies:
        after = ":".join(dependencies)
        lines += [f"#SBATCH --dependency=afterok:{after}", "#SBATCH --kill-on-invalid-dep=yes"]
    lines += [
        f"# tinylab step {name!r} ({planned.notebook.name}), run folder {run_dir}",
        "set -eo pipefail",
        f"cd {shlex.quote(str(PROJECT_ROOT))}",
        *profile.setup,
        f"echo [tinylab] step {shlex.quote(name)} job $SLURM_JOB_ID "
        '"restart ${SLURM_RESTART_COUNT:-0} on $SLURM_JOB_NODELIST"',
    ]
    command = [
        "python -m tinylab.cluster run-step",
        f"--pipeline {shlex.quote(str(pipeline_path.resolve()))}",
        f"--run-dir {shlex.quote(str(run_dir))}",
        f"--step {shlex.quote(name)}",
        f"--fingerprint {planned.fingerprint}",
    ]
    if notebooks_dir.resolve() != NOTEBOOKS_DIR.resolve():
        command.append(f"--notebooks-dir {shlex.quote(str(notebooks_dir.resolve()))}")
    command += [f"--set {shlex.quote(item)}" for item in overrides]
    if needs_launcher(resources, training):
        lines += launcher_lines(resources, profile)
        command.append('--launcher "$LAUNCHER"')
    if profile.requeue:
        lines.append(REQUEUE_TRAP.format(max_requeues=profile.max_requeues).rstrip())
    lines += ["set +e", " \\\n    ".join(command) + " &", WAIT_FOR_STEP.rstrip()]
    return "\n".join(lines) + "\n"
