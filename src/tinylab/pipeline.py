"""Pipelines: run the steps of a params/pipelines/*.yaml file as notebooks under Papermill.

Each step is one notebook executed in a fresh kernel, in dependency order, into the run folder
outputs/runs/<run-id>/notebooks/. Before anything runs, every params file a step names is loaded
and validated, so a typo fails in a second rather than after hours of training. manifest.json
records the resolved params, git state, package versions, hardware, and each step's status and
seconds. A re-run skips steps that finished with the same fingerprint (notebook + params), re-runs
a step whose dependency ran again, and `--from STEP` forces a step and everything after it.

    tinylab run params/pipelines/demo.yaml
    tinylab run params/pipelines/demo.yaml --from base --set base.optim.lr=1e-3
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tinylab.config.kinds import load_params
from tinylab.config.loader import (
    PARAMS_DIR,
    PROJECT_ROOT,
    ConfigError,
    dump_config,
    load_config,
    parse_overrides,
)
from tinylab.config.pipeline import PipelineConfig, PipelineStep
from tinylab.files import json_digest, sha256_file, write_json_atomic
from tinylab.layout import RunLayout
from tinylab.notebook import NOTEBOOKS_DIR, execute_notebook
from tinylab.provenance import provenance

RUNS_DIR = PROJECT_ROOT / "outputs" / "runs"


class StepFailed(RuntimeError):
    """A pipeline step's notebook raised; the message holds the failing cell's error."""


@dataclass
class PlannedStep:
    """A step with everything resolved that decides whether it must run."""

    step: PipelineStep
    notebook: Path
    parameters: dict[str, Any]
    resolved: dict[str, str] = field(default_factory=dict)  # param name -> resolved YAML
    fingerprint: str = ""


def run_pipeline(
    pipeline_path: Path | str,
    *,
    run_id: str | None = None,
    from_step: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    runs_dir: Path = RUNS_DIR,
    notebooks_dir: Path = NOTEBOOKS_DIR,
) -> dict[str, Any]:
    """Run (or resume) a pipeline; return the final manifest. Raises StepFailed on the first
    failing step, after recording it in the manifest."""
    pipeline_path = Path(pipeline_path)
    pipeline = load_config(pipeline_path, PipelineConfig)
    run_dir = (runs_dir / (run_id or pipeline.name)).resolve()
    plan = plan_steps(pipeline, run_dir, overrides=overrides, notebooks_dir=notebooks_dir)
    if from_step is not None and from_step not in plan:
        raise ConfigError(f"--from {from_step!r}: no such step; steps: {list(plan)}")

    manifest = open_manifest(run_dir, pipeline_path, pipeline)
    forced = _steps_from(pipeline, from_step) if from_step else set()
    to_run = steps_to_run(plan, manifest, forced=forced)
    for name, planned in plan.items():
        if name not in to_run:
            _log(f"[{name}] done earlier with the same params: skipped")
            continue
        execute_step(planned, run_dir, manifest)
    return manifest


def steps_to_run(
    plan: dict[str, PlannedStep],
    manifest: dict[str, Any],
    *,
    forced: set[str] | frozenset = frozenset(),
) -> list[str]:
    """Steps that must run: forced, not done with the same fingerprint, or after one that runs."""
    to_run: list[str] = []
    for name, planned in plan.items():
        record = manifest["steps"].get(name, {})
        if (
            name in forced
            or any(dep in to_run for dep in planned.step.after)
            or record.get("status") != "done"
            or record.get("fingerprint") != planned.fingerprint
        ):
            to_run.append(name)
    return to_run


def plan_steps(
    pipeline: PipelineConfig,
    run_dir: Path,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    notebooks_dir: Path = NOTEBOOKS_DIR,
) -> dict[str, PlannedStep]:
    """Resolve every step: its notebook, papermill parameters, params files and fingerprint."""
    per_step = split_overrides(overrides, [s.name for s in pipeline.steps])
    plan = {}
    for step in pipeline.steps:
        notebook = notebooks_dir / (
            step.notebook if step.notebook.endswith(".ipynb") else f"{step.notebook}.ipynb"
        )
        if not notebook.is_file():
            raise ConfigError(
                f"pipeline {pipeline.name}: step {step.name!r}: notebook not found ({notebook})"
            )
        step_overrides = per_step.get(step.name, [])
        parameters = {**step.params, "run_dir": str(run_dir), "overrides": step_overrides}
        planned = PlannedStep(step=step, notebook=notebook, parameters=parameters)
        for key, value in step.params.items():
            if _is_params_file(value):
                config = load_params(PROJECT_ROOT / value, overrides=step_overrides)
                planned.resolved[key] = dump_config(config)
        planned.fingerprint = _fingerprint(planned)
        plan[step.name] = planned
    return plan


def split_overrides(
    overrides: list[str] | tuple[str, ...], steps: list[str]
) -> dict[str, list[str]]:
    """Route `STEP.key=value` to that step and `*.key=value` to every step."""
    routed: dict[str, list[str]] = {}
    parse_overrides(overrides)  # syntax errors first, with the usual message
    for item in overrides:
        target, _, rest = item.partition(".")
        if target != "*" and target not in steps:
            raise ConfigError(
                f"--set {item!r}: prefix the key with a step name ({', '.join(steps)}) or '*' "
                "for every step, e.g. base.optim.lr=3e-4"
            )
        for name in steps if target == "*" else [target]:
            routed.setdefault(name, []).append(rest)
    return routed


def _is_params_file(value: Any) -> bool:
    return (
        isinstance(value, str)
        and value.endswith((".yaml", ".yml"))
        and (PROJECT_ROOT / value).resolve().is_relative_to(PARAMS_DIR)
    )


def _fingerprint(planned: PlannedStep) -> str:
    payload = {
        "notebook": sha256_file(planned.notebook),
        "parameters": planned.parameters,
        "resolved": planned.resolved,
    }
    return json_digest(payload)[:16]


def _steps_from(pipeline: PipelineConfig, start: str) -> set[str]:
    names = [s.name for s in pipeline.steps]
    return set(names[names.index(start) :])


def open_manifest(run_dir: Path, pipeline_path: Path, pipeline: PipelineConfig) -> dict[str, Any]:
    """Read (or start) RUN/manifest.json, refresh its provenance and resolved pipeline, save it."""
    fields = {
        "run_id": run_dir.name,
        "pipeline": str(pipeline_path),
        "pipeline_resolved": pipeline.model_dump(mode="json"),
        "updated": _now(),
        **provenance(),
    }
    with manifest_lock(run_dir):
        manifest = read_manifest(run_dir)
        manifest.update(fields)
        write_json_atomic(RunLayout(run_dir).manifest, manifest, indent=2)
    return manifest


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """RUN/manifest.json as it is on disk, or an empty one."""
    path = RunLayout(run_dir).manifest
    return json.loads(path.read_text()) if path.is_file() else {"steps": {}}


@contextlib.contextmanager
def manifest_lock(run_dir: Path) -> Iterator[None]:
    """Exclusive lock of the run's manifest: writers in other processes (cluster jobs of parallel
    steps, `tinylab status`) read it fresh and write it while holding this lock."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunLayout(run_dir).manifest_lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield


def execute_step(planned: PlannedStep, run_dir: Path, manifest: dict[str, Any]) -> None:
    """Run one planned step's notebook now and record it in the manifest; StepFailed on error."""
    from papermill.exceptions import PapermillExecutionError

    name = planned.step.name
    output = RunLayout(run_dir).notebooks / f"{name}.ipynb"
    record = {
        "status": "running",
        "notebook": str(output.relative_to(run_dir)),
        "fingerprint": planned.fingerprint,
        "params": planned.parameters,
        "resolved": planned.resolved,
        "started": _now(),
    }
    _save_step(run_dir, manifest, name, record)
    _log(f"[{name}] running {planned.notebook.name}")
    start = time.perf_counter()
    try:
        _configure_papermill_logging()
        execute_notebook(planned.notebook, output, planned.parameters, log_output=True)
    except PapermillExecutionError as err:
        record.update(status="failed", seconds=round(time.perf_counter() - start, 2))
        record["error"] = f"{err.ename}: {err.evalue}"
        _save_step(run_dir, manifest, name, record)
        raise StepFailed(
            f"step {name!r} failed in cell {err.exec_count} of {planned.notebook.name}:\n"
            f"{err.ename}: {err.evalue}\nexecuted notebook: {output}"
        ) from None
    except BaseException as err:  # a dead kernel, Ctrl-C, an I/O error: record, then stop
        record.update(status="failed", seconds=round(time.perf_counter() - start, 2))
        record["error"] = f"{type(err).__name__}: {err}"
        _save_step(run_dir, manifest, name, record)
        if not isinstance(err, Exception):
            raise
        raise StepFailed(f"step {name!r} stopped: {record['error']}") from err
    if planned.step.html:
        from tinylab.analysis.publish import notebook_to_html

        notebook_to_html(output, run_dir / planned.step.html)
    record.update(status="done", seconds=round(time.perf_counter() - start, 2), finished=_now())
    _save_step(run_dir, manifest, name, record)
    _log(f"[{name}] done in {record['seconds']:.1f} s")


def _save_step(run_dir: Path, manifest: dict[str, Any], name: str, record: dict[str, Any]) -> None:
    manifest["steps"][name] = dict(record)
    manifest["updated"] = _now()
    with manifest_lock(run_dir):  # merge into what is on disk: other steps may run elsewhere
        path = RunLayout(run_dir).manifest
        on_disk = read_manifest(run_dir) if path.is_file() else manifest
        on_disk["steps"][name] = dict(record)
        on_disk["updated"] = manifest["updated"]
        write_json_atomic(path, on_disk, indent=2)


def _configure_papermill_logging() -> None:
    logger = logging.getLogger("papermill")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("  %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _log(message: str) -> None:
    print(message, flush=True)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
