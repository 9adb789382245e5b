"""Inside a SLURM job: run one pipeline step exactly as `tinylab run` would, after checking
that it is the step that was submitted, and record the job's state (RUNNING, then COMPLETED or
FAILED) in the manifest. `python -m tinylab.cluster run-step` (cluster/__main__.py) calls it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tinylab.cluster.records import now, record_jobs
from tinylab.config.loader import ConfigError, load_config
from tinylab.config.pipeline import PipelineConfig
from tinylab.notebook import NOTEBOOKS_DIR
from tinylab.pipeline import execute_step, manifest_lock, open_manifest, plan_steps


def run_step_in_job(
    pipeline_path: Path,
    run_dir: Path,
    step: str,
    *,
    fingerprint: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    notebooks_dir: Path = NOTEBOOKS_DIR,
    launcher: list[str] | None = None,
    record_job: bool = True,
) -> None:
    """Run `step` as `tinylab run` would, recording the job's state (unless not `record_job`: a
    slot of `tinylab run --jobs`); StepFailed if it fails."""
    pipeline = load_config(pipeline_path, PipelineConfig)
    plan = plan_steps(pipeline, run_dir, overrides=overrides, notebooks_dir=notebooks_dir)
    if step not in plan:
        raise ConfigError(f"--step {step!r}: no such step; steps: {list(plan)}")
    planned = plan[step]
    if fingerprint and planned.fingerprint != fingerprint:
        raise ConfigError(
            f"step {step!r}: its notebook or params changed since submission (fingerprint "
            f"{planned.fingerprint}, submitted {fingerprint}); submit the pipeline again"
        )
    if launcher:
        planned.parameters["launcher"] = launcher  # job-specific: not part of the fingerprint
    _record(run_dir, step, job_start_record(), record_job)
    manifest = open_manifest(run_dir, pipeline_path, pipeline)
    try:
        execute_step(planned, run_dir, manifest)
    except BaseException:
        _record(run_dir, step, {"state": "FAILED", "updated": now()}, record_job)
        raise
    _record(run_dir, step, {"state": "COMPLETED", "updated": now()}, record_job)


def _record(run_dir: Path, step: str, record: dict[str, Any], record_job: bool) -> None:
    if record_job:
        with manifest_lock(run_dir):
            record_jobs(run_dir, {step: record})


def job_start_record() -> dict[str, Any]:
    env = os.environ
    record: dict[str, Any] = {"state": "RUNNING", "started": now(), "updated": now()}
    record["restarts"] = int(env.get("SLURM_RESTART_COUNT", "0"))
    if "SLURM_JOB_ID" in env:
        record.update(job_id=env["SLURM_JOB_ID"], node_list=env.get("SLURM_JOB_NODELIST"))
    return record
