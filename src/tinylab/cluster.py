"""SLURM batch execution of a pipeline: one sbatch job per step, chained with `afterok`.

`tinylab submit` plans the pipeline exactly as `tinylab run` does (same notebooks, papermill
parameters, fingerprints and skipping of finished steps), writes one bash script per step that
must run into RUN/cluster/, submits them held, records the job ids in RUN/manifest.json and then
releases them. Each job runs its step with `python -m tinylab.cluster run-step`, which calls
`pipeline.execute_step` (papermill into the run folder, as `tinylab run`). A training step (one
whose params name a params/stages/ file) on more than one process gets a `launcher` parameter:
`srun` starts one `torchrun` per node with a c10d rendezvous on the job's first node, and the
notebook hands it to the trainer. Jobs are requeueable; near the time limit (`--signal`) a job
requeues itself, and a requeued or resubmitted step resumes from its last checkpoint.

Trade-off: SLURM's own dependencies and requeue do the scheduling, so nothing of ours has to stay
alive on the login node; the price is that a step's state lives in two places, SLURM's queue and
the manifest, which `tinylab status` reconciles. A job waits (`afterok`) for the jobs of the
steps its step runs `after:`, so independent branches run at once; every manifest writer holds
`pipeline.manifest_lock` and merges into what is on disk.

    tinylab submit params/pipelines/tinyllama-v1.1.yaml --cluster 2x8-h100 --dry-run
    tinylab status outputs/runs/tinyllama-v1.1
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from tinylab.config import (
    PARAMS_DIR,
    PROJECT_ROOT,
    ClusterConfig,
    ConfigError,
    JobResources,
    PipelineConfig,
    kind_of,
    load_config,
    project_path,
)
from tinylab.files import write_json_atomic
from tinylab.pipeline import (
    MANIFEST,
    NOTEBOOKS_DIR,
    PlannedStep,
    StepFailed,
    execute_step,
    manifest_lock,
    open_manifest,
    plan_steps,
    read_manifest,
    steps_to_run,
)

CLUSTER_DIR = "cluster"  # RUN/cluster/: the scripts and logs/
ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED"}


class ClusterError(RuntimeError):
    """SLURM is missing, refused a job, or a run still has jobs in the queue."""


@dataclass
class StepJob:
    """One step's batch job: what it asks for and the script that runs it."""

    name: str
    resources: JobResources
    training: bool
    script: str
    depends_on: list[str] = field(default_factory=list)  # steps whose jobs must end OK first
    job_id: str | None = None
    problems: list[str] = field(default_factory=list)  # block submission
    notes: list[str] = field(default_factory=list)  # shown, do not block


# --------------------------------------------------------------------------------------------
# Profiles and rendering


def load_profile(name_or_path: str) -> ClusterConfig:
    """A profile by name (params/clusters/<name>.yaml) or by .yaml path."""
    path = Path(name_or_path)
    if not name_or_path.endswith((".yaml", ".yml")):
        path = PARAMS_DIR / "clusters" / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (PARAMS_DIR / "clusters").glob("*.yaml"))
        raise ConfigError(
            f"--cluster {name_or_path!r}: no such profile ({path}); profiles: {', '.join(known)}"
        )
    return load_config(path, ClusterConfig)


def run_dir_for(profile: ClusterConfig, run_id: str) -> Path:
    """The run folder under the profile's shared run root."""
    return (project_path(profile.run_root) / run_id).resolve()


def is_training(planned: PlannedStep) -> bool:
    """A step trains when one of its params names a params/stages/ file."""
    return bool(stage_params(planned))


def stage_params(planned: PlannedStep) -> list[str]:
    """Names of the step's params that hold a params/stages/ file."""
    params = planned.step.params
    return [key for key in planned.resolved if _kind(PROJECT_ROOT / params[key]) == "stages"]


def _kind(path: Path) -> str | None:
    try:
        return kind_of(path)
    except ConfigError:
        return None


def resources_for(profile: ClusterConfig, planned: PlannedStep) -> JobResources:
    """The step's own entry, else train or other; several nodes only for training."""
    training = is_training(planned)
    name = planned.step.name
    resources = profile.steps.get(name) or (profile.train if training else profile.other)
    if resources.nodes > 1 and not training:
        raise ConfigError(
            f"cluster {profile.name}: step {name!r} asks for {resources.nodes} nodes but trains no "
            "stage; only training steps run across nodes"
        )
    return resources


def needs_launcher(resources: JobResources, training: bool) -> bool:
    """Training on more than one process goes through srun + torchrun."""
    return training and resources.nodes * resources.procs > 1


def launch_checks(planned: PlannedStep, resources: JobResources) -> tuple[list[str], list[str]]:
    """(problems that block submission, notes) of a training step on this many processes."""
    name, problems, notes = planned.step.name, [], []
    if "launcher" not in notebook_parameters(planned.notebook):
        message = (
            f"step {name!r}: notebook {planned.notebook.name} has no `launcher` parameter, so it "
            "cannot hand the srun + torchrun command to the trainer; add `launcher: list = []` "
            "to its parameters cell and pass it on to train_stage"
        )
        if resources.nodes > 1:
            problems.append(message)
        else:
            notes.append(message + "; on one node it launches with its own nproc parameter")
    for key in stage_params(planned):
        parallel = yaml.safe_load(planned.resolved[key])["parallel"]
        replicas = parallel["replicate_nodes"]
        if resources.nodes > 1 and replicas != resources.nodes:
            notes.append(
                f"step {name!r}: {planned.step.params[key]} has parallel.replicate_nodes = "
                f"{replicas} on {resources.nodes} nodes, so FSDP shards across nodes; for HSDP "
                f"(shard within a node, replicate across) add --set "
                f"{name}.parallel.replicate_nodes={resources.nodes}"
            )
    return problems, notes


def notebook_parameters(notebook: Path) -> set[str]:
    """Names assigned in a notebook's `parameters` cell (parsed, not executed)."""
    import nbformat  # slow to import; only multi-process training steps need it

    nb = nbformat.read(notebook, as_version=4)
    names: set[str] = set()
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            for node in ast.parse(cell.source).body:
                targets = (
                    node.targets
                    if isinstance(node, ast.Assign)
                    else [getattr(node, "target", None)]
                )
                names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


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
    log = run_dir / CLUSTER_DIR / "logs" / f"{name}-%j.out"
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


def plan_jobs(
    pipeline_path: Path | str,
    profile: ClusterConfig,
    *,
    run_id: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    notebooks_dir: Path = NOTEBOOKS_DIR,
) -> tuple[Path, list[StepJob]]:
    """The run folder and the jobs of the steps that must run, rendered, not submitted; a job
    depends on the jobs of the steps it runs after, whose ids are filled in at submission."""
    pipeline_path = Path(pipeline_path)
    pipeline = load_config(pipeline_path, PipelineConfig)
    run_dir = run_dir_for(profile, run_id or pipeline.name)
    plan = plan_steps(pipeline, run_dir, overrides=overrides, notebooks_dir=notebooks_dir)
    jobs: list[StepJob] = []
    for name in steps_to_run(plan, read_manifest(run_dir)):
        planned = plan[name]
        resources, training = resources_for(profile, planned), is_training(planned)
        after = [dep for dep in planned.step.after if dep in {job.name for job in jobs}]
        job = StepJob(name, resources, training, "", depends_on=after)
        if needs_launcher(resources, training):
            job.problems, job.notes = launch_checks(planned, resources)
        job.script = render_script(
            planned,
            run_dir=run_dir,
            profile=profile,
            resources=resources,
            training=training,
            pipeline_path=pipeline_path,
            overrides=overrides,
            notebooks_dir=notebooks_dir,
            dependencies=[placeholder(dep) for dep in after],
        )
        jobs.append(job)
    return run_dir, jobs


# --------------------------------------------------------------------------------------------
# Submission


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
    (run_dir / CLUSTER_DIR / "logs").mkdir(parents=True, exist_ok=True)
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
    path = run_dir / CLUSTER_DIR / f"{job.name}.sbatch"
    path.write_text(job.script)
    out = slurm(["sbatch", "--parsable", "--hold", str(path)])
    job.job_id = out.strip().split(";")[0]


def placeholder(step: str) -> str:
    """Stands for a job id in a dependency until the job is submitted."""
    return f"<job id of {step}>"


def submitted_record(job: StepJob, run_dir: Path) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "state": "PENDING",
        "script": str((run_dir / CLUSTER_DIR / f"{job.name}.sbatch").relative_to(run_dir)),
        "depends_on": job.depends_on,
        "nodes": job.resources.nodes,
        "procs_per_node": job.resources.procs,
        "submitted": now(),
    }


def refuse_if_queued(run_dir: Path) -> None:
    """Two submissions writing one run folder would corrupt it: refuse while jobs are queued."""
    recorded = cluster_section(read_manifest(run_dir)).get("jobs", {})
    ids = {step: r["job_id"] for step, r in recorded.items() if r.get("job_id")}
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


# --------------------------------------------------------------------------------------------
# Manifest: the "cluster" section (jobs by step), written under a lock


def cluster_section(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest.get("cluster", {})


def update_cluster(run_dir: Path, values: dict[str, Any]) -> None:
    """Merge keys into manifest['cluster'] (call under manifest_lock)."""
    manifest = read_manifest(run_dir)
    manifest["cluster"] = {**cluster_section(manifest), **values}
    write_json_atomic(run_dir / MANIFEST, manifest, indent=2)


def record_jobs(run_dir: Path, records: dict[str, dict[str, Any]]) -> None:
    """Merge per-step job records into manifest['cluster']['jobs'] (call under manifest_lock);
    a new job id keeps the old one in `previous_job_ids`."""
    jobs = dict(cluster_section(read_manifest(run_dir)).get("jobs", {}))
    for step, record in records.items():
        old = jobs.get(step, {})
        if old.get("job_id") and record.get("job_id") not in (None, old["job_id"]):
            previous = [*old.get("previous_job_ids", []), old["job_id"]]
            old = {"previous_job_ids": previous}  # a new job: nothing else carries over
        jobs[step] = {**old, **record}
    update_cluster(run_dir, {"jobs": jobs})


# --------------------------------------------------------------------------------------------
# Inside a job: run one step


def run_step_in_job(
    pipeline_path: Path,
    run_dir: Path,
    step: str,
    *,
    fingerprint: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    notebooks_dir: Path = NOTEBOOKS_DIR,
    launcher: list[str] | None = None,
) -> None:
    """Run `step` as `tinylab run` would, recording the job's state; StepFailed if it fails."""
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
    with manifest_lock(run_dir):
        record_jobs(run_dir, {step: job_start_record()})
    manifest = open_manifest(run_dir, pipeline_path, pipeline)
    try:
        execute_step(planned, run_dir, manifest)
    except BaseException:
        with manifest_lock(run_dir):
            record_jobs(run_dir, {step: {"state": "FAILED", "updated": now()}})
        raise
    with manifest_lock(run_dir):
        record_jobs(run_dir, {step: {"state": "COMPLETED", "updated": now()}})


def job_start_record() -> dict[str, Any]:
    env = os.environ
    record: dict[str, Any] = {"state": "RUNNING", "started": now(), "updated": now()}
    record["restarts"] = int(env.get("SLURM_RESTART_COUNT", "0"))
    if "SLURM_JOB_ID" in env:
        record.update(job_id=env["SLURM_JOB_ID"], node_list=env.get("SLURM_JOB_NODELIST"))
    return record


# --------------------------------------------------------------------------------------------
# Status


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


def run_status(run_dir: Path) -> dict[str, Any]:
    """Steps (manifest), their jobs (live from SLURM where it knows them, and then recorded in
    the manifest) and the last training metrics of each stage."""
    if not (run_dir / MANIFEST).is_file():
        raise ConfigError(f"{run_dir}: no {MANIFEST}; is this a run folder?")
    jobs = cluster_section(read_manifest(run_dir)).get("jobs", {})
    live = job_states([r["job_id"] for r in jobs.values() if r.get("job_id")])
    with manifest_lock(run_dir):
        ids = {step: r.get("job_id") for step, r in jobs.items()}
        if live:
            updates = {s: {**live[i], "updated": now()} for s, i in ids.items() if i in live}
            record_jobs(run_dir, updates)
        manifest = read_manifest(run_dir)
    jobs = cluster_section(manifest).get("jobs", {})
    steps = [s["name"] for s in manifest.get("pipeline_resolved", {}).get("steps", [])]
    rows = []
    for step in steps or list(manifest["steps"]):
        record, job = manifest["steps"].get(step, {}), jobs.get(step, {})
        state = live.get(job.get("job_id", ""), job)  # recorded when SLURM forgot the job
        rows.append(
            {
                "step": step,
                "status": record.get("status", "-"),
                "seconds": record.get("seconds"),
                "job_id": job.get("job_id"),
                "job_state": state.get("state"),
                "reason": state.get("reason"),
                "restarts": state.get("restarts"),
            }
        )
    return {"run_dir": str(run_dir), "rows": rows, "metrics": last_metrics(run_dir)}


def last_metrics(run_dir: Path) -> dict[str, dict[str, Any]]:
    """The last `kind: train` record of each stages/*/metrics.jsonl."""
    found = {}
    for path in sorted((run_dir / "stages").glob("*/metrics.jsonl")):
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 262144))
            lines = handle.read().decode("utf-8", "replace").splitlines()
        for line in reversed(lines):
            with contextlib.suppress(json.JSONDecodeError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("kind") == "train":
                    found[path.parent.name] = record
                    break
    return found


def format_status(status: dict[str, Any]) -> str:
    """A table of steps and jobs, then one line of metrics per stage."""
    width = max([len(row["step"]) for row in status["rows"]] + [4]) + 2
    header = f"{'step':<{width}}{'status':<9}{'job':<10}{'state':<13}{'restarts':<10}reason/time"
    lines = [f"run {status['run_dir']}", header]
    for row in status["rows"]:
        extra = row["reason"] if row["reason"] not in (None, "None") else ""
        if row["seconds"] is not None:
            extra = f"{row['seconds']:.0f} s {extra}".strip()
        restarts = row["restarts"] if row["job_id"] else "-"
        lines.append(
            f"{row['step']:<{width}}{row['status']:<9}{row['job_id'] or '-':<10}"
            f"{row['job_state'] or '-':<13}{restarts!s:<10}{extra}"
        )
    for stage, record in status["metrics"].items():
        keys = ("step", "tokens", "loss", "lr", "grad_norm", "tokens_per_s", "mfu")
        shown = " ".join(f"{k}={_number(record[k])}" for k in keys if record.get(k) is not None)
        lines.append(f"{stage}: {shown}")
    return "\n".join(lines)


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------
# `python -m tinylab.cluster run-step`: what each job runs


def main(argv: list[str] | None = None) -> int:
    """Run one pipeline step inside a SLURM job; 0 done, 1 step failed, 2 bad input."""
    parser = argparse.ArgumentParser(prog="python -m tinylab.cluster")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run-step", help="run one pipeline step (what a job does)")
    run.add_argument("--pipeline", type=Path, required=True)
    run.add_argument("--run-dir", type=Path, required=True)
    run.add_argument("--step", required=True)
    run.add_argument("--fingerprint", help="refuse to run if the step changed since submission")
    run.add_argument("--notebooks-dir", type=Path, default=NOTEBOOKS_DIR)
    run.add_argument("--set", dest="overrides", action="append", default=[])
    run.add_argument("--launcher", help="torchrun command prefix (multi-process training)")
    args = parser.parse_args(argv)
    try:
        run_step_in_job(
            args.pipeline,
            args.run_dir,
            args.step,
            fingerprint=args.fingerprint,
            overrides=args.overrides,
            notebooks_dir=args.notebooks_dir,
            launcher=shlex.split(args.launcher) if args.launcher else None,
        )
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    except StepFailed as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
