"""The manifest's "cluster" section: the profile and one job record per step (id, state,
restarts, previous ids), merged into RUN/manifest.json under `pipeline.manifest_lock` by every
writer (the submitter, each job, `tinylab status`).

    with manifest_lock(run_dir):
        record_jobs(run_dir, {"base": {"state": "COMPLETED", "updated": now()}})
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tinylab.files import write_json_atomic
from tinylab.layout import RunLayout
from tinylab.pipeline import read_manifest


def cluster_section(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest.get("cluster", {})


def recorded_jobs(run_dir: Path) -> dict[str, dict[str, Any]]:
    """The job records of a run by step, as on disk."""
    return cluster_section(read_manifest(run_dir)).get("jobs", {})


def update_cluster(run_dir: Path, values: dict[str, Any]) -> None:
    """Merge keys into manifest['cluster'] (call under manifest_lock)."""
    manifest = read_manifest(run_dir)
    manifest["cluster"] = {**cluster_section(manifest), **values}
    write_json_atomic(RunLayout(run_dir).manifest, manifest, indent=2)


def record_jobs(run_dir: Path, records: dict[str, dict[str, Any]]) -> None:
    """Merge per-step job records into manifest['cluster']['jobs'] (call under manifest_lock);
    a new job id keeps the old one in `previous_job_ids`."""
    jobs = dict(recorded_jobs(run_dir))
    for step, record in records.items():
        old = jobs.get(step, {})
        if old.get("job_id") and record.get("job_id") not in (None, old["job_id"]):
            previous = [*old.get("previous_job_ids", []), old["job_id"]]
            old = {"previous_job_ids": previous}  # a new job: nothing else carries over
        jobs[step] = {**old, **record}
    update_cluster(run_dir, {"jobs": jobs})


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
