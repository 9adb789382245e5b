"""`tinylab status`: a run's steps (manifest), their jobs (live from SLURM where it still knows
them, else as last recorded) and the last training metrics line of each stage.

    print(format_status(run_status(Path("outputs/runs/tinyllama-v1.1"))))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tinylab.cluster.records import cluster_section, now, record_jobs, recorded_jobs
from tinylab.cluster.slurm import job_states
from tinylab.config.loader import ConfigError
from tinylab.layout import MANIFEST_FILE, RunLayout, last_metric
from tinylab.pipeline import manifest_lock, read_manifest


def run_status(run_dir: Path) -> dict[str, Any]:
    """Steps (manifest), their jobs (live from SLURM where it knows them, and then recorded in
    the manifest) and the last training metrics of each stage."""
    if not RunLayout(run_dir).manifest.is_file():
        raise ConfigError(f"{run_dir}: no {MANIFEST_FILE}; is this a run folder?")
    jobs = recorded_jobs(run_dir)
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
    """The last `kind: train` record of each stage that wrote metrics."""
    found = {}
    for stage in RunLayout(run_dir).trained_stages():
        record = last_metric(stage.metrics, "train")
        if record is not None:
            found[stage.name] = record
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
