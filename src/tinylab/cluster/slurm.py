"""SLURM I/O: the client commands (sbatch, scontrol, scancel) and `submit`, which sends the
planned jobs held, records their ids in the manifest and then releases them, so a failure half
way leaves no job behind.

    run_dir, jobs = submit("params/pipelines/tinyllama-v1.1.yaml", load_profile("2x8-h100"))
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tinylab.cluster.plan import StepJob, plan_jobs
from tinylab.cluster.records import now, record_jobs, recorded_jobs, update_cluster
from tinylab.cluster.render import logs_dir, placeholder, script_path
from tinylab.config.cluster import ClusterConfig
from tinylab.config.loader import ConfigError, load_config
from tinylab.config.pipeline import PipelineConfig
from tinylab.errors import UserError
from tinylab.notebook import NOTEBOOKS_DIR
from tinylab.pipeline import manifest_lock, open_manifest

ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED"}


class ClusterError(UserError):
    """SLURM is missing, refused a job, or a run still has jobs in the queue."""


def submit(
    pipeline_path: Path | str,
    profile: ClusterConfig,
    *,
    run_id: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    notebooks_dir: Path = NOTEBOOKS_DIR,
) -> tuple[Path, list[StepJob]]:
    """Submit the steps that must run, held; record their ids in the manifest; release them."""
    require_slurm("sbatch", "scontrol")
    run_dir, jobs = plan_jobs(
        pipeline_path, profile, run_id=run_id, overrides=overrides, notebooks_dir=notebooks_dir
    )
    problems = [problem for job in jobs for problem in job.problems]
    if problems:
        raise ConfigError("cannot submit:\n  " + "\n  ".join(problems))
    if not jobs:
        return run_dir, jobs
    refuse_if_queued(run_dir)
    pipeline = load_config(Path(pipeline_path), PipelineConfig)
    logs_dir(run_dir).mkdir(parents=True, exist_ok=True)
    try:
        for job in jobs:
            sbatch_job(job, jobs, run_dir)
        open_manifest(run_dir, Path(pipeline_path), pipeline)  # takes the lock itself
        with manifest_lock(run_dir):
            record_jobs(run_dir, {job.name: submitted_record(job, run_dir) for job in jobs})
            update_cluster(run_dir, {"profile": profile.model_dump(mode="json")})
        slurm(["scontrol", "release", ",".join(str(job.job_id) for job in jobs)])
    except BaseException:
        cancel([job.job_id for job in jobs if job.job_id])  # no held job left behind
        raise
    return run_dir, jobs


def sbatch_job(job: StepJob, jobs: list[StepJob], run_dir: Path) -> None:
    """Write the job's script with its real dependency and submit it held."""
    ids = {j.name: j.job_id for j in jobs}
    for dep in job.depends_on:
        job.script = job.script.replace(placeholder(dep), str(ids[dep]))
    path = script_path(run_dir, job.name)
    path.write_text(job.script)
    out = slurm(["sbatch", "--parsable", "--hold", str(path)])
    job.job_id = out.strip().split(";")[0]


def submitted_record(job: StepJob, run_dir: Path) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "state": "PENDING",
        "script": str(script_path(run_dir, job.name).relative_to(run_dir)),
        "depends_on": job.depends_on,
        "nodes": job.resources.nodes,
        "procs_per_node": job.resources.procs,
        "submitted": now(),
    }


def refuse_if_queued(run_dir: Path) -> None:
    """Two submissions writing one run folder would corrupt it: refuse while jobs are queued."""
    ids = {step: r["job_id"] for step, r in recorded_jobs(run_dir).items() if r.get("job_id")}
    live = job_states(list(ids.values()))
    queued = [f"{s} (job {i}, {live[i]['state']})" for s, i in ids.items() if is_active(live, i)]
    if queued:
        raise ClusterError(
            f"run {run_dir.name} still has jobs in the queue: {', '.join(queued)}; wait for them "
            f"or scancel them, then submit again"
        )


def is_active(states: dict[str, dict[str, Any]], job_id: str) -> bool:
    return states.get(job_id, {}).get("state") in ACTIVE


def require_slurm(*commands: str) -> None:
    """Fail clearly when the SLURM client commands are not installed."""
    missing = [c for c in commands if shutil.which(c) is None]
    if missing:
        raise ClusterError(
            f"{', '.join(missing)} not found on PATH: run tinylab submit on a machine with the "
            "SLURM client commands (a login node), or add --dry-run to only print the scripts"
        )


def slurm(command: list[str]) -> str:
    """Run a SLURM command; its stdout, or ClusterError with its stderr."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    except FileNotFoundError:
        require_slurm(command[0])
        raise
    if done.returncode != 0:
        raise ClusterError(f"{shlex.join(command)} failed: {done.stderr.strip() or done.stdout}")
    return done.stdout


def cancel(job_ids: list[str]) -> None:
    if job_ids and shutil.which("scancel"):
        subprocess.run(["scancel", *job_ids], capture_output=True, check=False)


def job_states(job_ids: list[str]) -> dict[str, dict[str, Any]]:
    """State, reason, exit code and restarts of jobs SLURM still knows (`scontrol show job`)."""
    if not job_ids or shutil.which("scontrol") is None:
        return {}
    states = {}
    for job_id in job_ids:
        done = subprocess.run(
            ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30
        )
        fields = dict(
            item.split("=", 1) for item in done.stdout.split() if "=" in item
        )  # JobState=RUNNING Reason=None ExitCode=0:0 ...
        if done.returncode == 0 and "JobState" in fields:
            states[job_id] = {
                "state": fields["JobState"],
                "reason": fields.get("Reason", ""),
                "exit_code": fields.get("ExitCode", ""),
                "restarts": int(fields.get("Restarts", "0")),
            }
    return states
