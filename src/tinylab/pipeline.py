"""Pipelines: run the steps of a params/pipelines/*.yaml file as notebooks under Papermill.

Each step is one notebook executed in a fresh kernel, in dependency order, into the run folder
outputs/runs/<run-id>/notebooks/. Before anything runs, every params file a step names is loaded
and validated, so a typo fails in a second rather than after hours of training. manifest.json
records the resolved params, git state, package versions, hardware, and each step's status,
seconds, git commit and code record.

A step's fingerprint covers its inputs (notebook bytes, parameters, resolved params files) and
its code (provenance.SourceTree: a digest of every library file the notebook imports, directly or
through other tinylab modules, and the versions of torch, transformers and lm-eval where that
code imports them), like Snakemake's code rerun trigger. A re-run skips steps that
finished with the same fingerprint, runs a step whose inputs or code changed and every step after
one that runs; `--from STEP` forces a step and everything after it. With `--keep-stale` a step
whose only change is its code keeps its results and is marked stale in the manifest, with a
one-line reason naming the files and versions that changed. One `tinylab run` per run folder at a
time (files.hold_lock on RUN/.run.lock; a second one exits with a message naming the holder).
A sweep (tinylab.sweep) runs a pipeline once per point of a grid through `run_pipeline`'s step
action, taking a step that another point ran instead of running it (its record's `shared_from`).

    tinylab run params/pipelines/demo.yaml
    tinylab run params/pipelines/demo.yaml --from base --set base.optim.lr=1e-3
    tinylab run params/pipelines/demo.yaml --keep-stale
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import re
import shutil
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
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
from tinylab.config.stage import StageConfig, check_counterfactuals
from tinylab.files import (
    hold_lock,
    json_digest,
    remove_orphans,
    sha256_file,
    write_json_atomic,
)
from tinylab.layout import MANIFEST_FILE, RunLayout
from tinylab.notebook import NOTEBOOKS_DIR, execute_notebook
from tinylab.provenance import (
    SOURCE_DIR,
    SourceTree,
    code_changes,
    git_state,
    notebook_imports,
    package_versions,
    provenance,
)

RUNS_DIR = PROJECT_ROOT / "outputs" / "runs"
NOT_DONE = {None: "not run before", "running": "interrupted before", "failed": "failed before"}


class StepFailed(RuntimeError):
    """A pipeline step's notebook raised; the message holds the failing cell's error."""


@dataclass
class PlannedStep:
    """A step with everything resolved that decides whether it must run."""

    step: PipelineStep
    notebook: Path
    parameters: dict[str, Any]
    resolved: dict[str, str] = field(default_factory=dict)  # param name -> resolved YAML
    code: dict[str, Any] = field(default_factory=dict)  # SourceTree.record of its imports
    inputs: str = ""  # digest of notebook bytes, parameters and resolved params
    fingerprint: str = ""  # digest of inputs and code


@dataclass(frozen=True)
class Decision:
    """What a run does with a planned step: "run", "skip" or "stale" (skipped although its code
    changed: --keep-stale), and why, in a few words."""

    action: str
    reason: str


@dataclass
class PipelineRun:
    """One `tinylab run`: the manifest after it, the decision on each step, its wall time."""

    manifest: dict[str, Any]
    decisions: dict[str, Decision]
    wall_s: float

    def summary(self) -> str:
        """One line: what ran, what was skipped and why, and how long this invocation took."""
        ran = [n for n, d in self.decisions.items() if d.action == "run"]
        same = [n for n, d in self.decisions.items() if d.action == "skip"]
        stale = [n for n, d in self.decisions.items() if d.action == "stale"]
        steps = "1 step" if len(ran) == 1 else f"{len(ran)} steps"
        done = f"{steps} ran ({', '.join(ran)})" if ran else "nothing ran"
        why = [f"{len(same)} same fingerprint"] if same else []
        why += [f"{len(stale)} stale kept: {', '.join(stale)}"] if stale else []
        skipped = f"; {len(same) + len(stale)} skipped ({', '.join(why)})" if why else ""
        return f"run {self.manifest['run_id']} in {self.wall_s:.0f} s: {done}{skipped}"


# carries out one step's decision in a run folder, recording it in the manifest
StepAction = Callable[[PlannedStep, Decision, Path, dict[str, Any]], None]
# carries out every step's decision (e.g. several at once: tinylab.cluster.local)
StepsAction = Callable[[dict[str, PlannedStep], dict[str, Decision], Path, dict[str, Any]], None]


def run_pipeline(
    pipeline_path: Path | str,
    *,
    run_id: str | None = None,
    from_step: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    keep_stale: bool = False,
    runs_dir: Path = RUNS_DIR,
    notebooks_dir: Path = NOTEBOOKS_DIR,
    source_dir: Path = SOURCE_DIR,
    apply: StepAction | None = None,
    run_steps: StepsAction | None = None,
) -> PipelineRun:
    """Run (or resume) a pipeline under the run folder's lock; `apply` carries out each step's
    decision in order (default apply_decision; a sweep's shares steps between runs), or
    `run_steps` carries out all of them (`tinylab run --jobs N`). Raises StepFailed on
    the first failing step, after recording it in the manifest; files.LockHeld (naming the
    holder) while another run holds the folder's RUN/.run.lock, which a killed run's successor
    takes over."""
    started = time.perf_counter()
    pipeline_path = Path(pipeline_path)
    pipeline = load_config(pipeline_path, PipelineConfig)
    run_dir = (runs_dir / (run_id or pipeline.name)).resolve()
    plan = plan_steps(
        pipeline, run_dir, overrides=overrides, notebooks_dir=notebooks_dir, source_dir=source_dir
    )
    if from_step is not None and from_step not in plan:
        raise ConfigError(f"--from {from_step!r}: no such step; steps: {list(plan)}")

    with hold_lock(RunLayout(run_dir).run_lock, f"run folder {run_dir}"):
        manifest = open_manifest(run_dir, pipeline_path, pipeline)
        forced = _steps_from(pipeline, from_step) if from_step else set()
        decisions = decide_steps(plan, manifest, forced=forced, keep_stale=keep_stale)
        if run_steps is not None:
            run_steps(plan, decisions, run_dir, manifest)
        else:
            for name, planned in plan.items():
                (apply or apply_decision)(planned, decisions[name], run_dir, manifest)
    return PipelineRun(manifest, decisions, wall_s=time.perf_counter() - started)


def apply_decision(
    planned: PlannedStep, decision: Decision, run_dir: Path, manifest: dict[str, Any]
) -> None:
    """Run the step when the decision says so; else say why not and record its staleness."""
    if decision.action == "run":
        execute_step(planned, run_dir, manifest, reason=decision.reason)
    else:
        _log(f"[{planned.step.name}] skipped: {decision.reason}")
        _mark_stale(run_dir, manifest, planned.step.name, decision)


def decide_steps(
    plan: dict[str, PlannedStep],
    manifest: dict[str, Any],
    *,
    forced: set[str] | frozenset = frozenset(),
    keep_stale: bool = False,
) -> dict[str, Decision]:
    """Each step's decision: run when forced, after a step that runs, not done, or done with
    other inputs or other code (kept instead, marked stale, with `keep_stale` when only the code
    differs); skip when done with the same fingerprint."""
    decisions: dict[str, Decision] = {}
    for name, planned in plan.items():
        record = manifest["steps"].get(name, {})
        upstream = [dep for dep in planned.step.after if decisions[dep].action == "run"]
        # a record from before code records: its fingerprint was what `inputs` is now
        inputs = record.get("inputs", record.get("fingerprint"))
        if name in forced:
            decision = Decision("run", "forced by --from")
        elif upstream:
            decision = Decision("run", f"after {', '.join(upstream)}")
        elif record.get("status") != "done":
            status = record.get("status")
            decision = Decision("run", NOT_DONE.get(status, f"{status} before"))
        elif record.get("fingerprint") == planned.fingerprint:
            decision = Decision("skip", "same fingerprint")
        elif inputs != planned.inputs:
            decision = Decision("run", "notebook or params changed")
        else:
            changes = code_changes(record.get("code"), planned.code)
            decision = Decision("stale" if keep_stale else "run", changes)
        decisions[name] = decision
    return decisions


def steps_to_run(
    plan: dict[str, PlannedStep],
    manifest: dict[str, Any],
    *,
    forced: set[str] | frozenset = frozenset(),
) -> list[str]:
    """The steps that decide_steps runs, in order."""
    decisions = decide_steps(plan, manifest, forced=forced)
    return [name for name, decision in decisions.items() if decision.action == "run"]


def plan_steps(
    pipeline: PipelineConfig,
    run_dir: Path,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    notebooks_dir: Path = NOTEBOOKS_DIR,
    source_dir: Path = SOURCE_DIR,
) -> dict[str, PlannedStep]:
    """Resolve every step: its notebook, papermill parameters, params files, code record and
    fingerprint; check the stages' counterfactuals against each other. `source_dir` holds the
    tinylab package whose code is recorded."""
    per_step = split_overrides(overrides, [s.name for s in pipeline.steps])
    tree = SourceTree(source_dir)
    plan, stages = {}, {}
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
                if isinstance(config, StageConfig):
                    stages[str(value)] = config
        modules = notebook_imports(notebook)
        if step.html:  # rendered to HTML by this process: part of what makes the step's output
            modules.add("tinylab.analysis.publish")
        planned.code = tree.record(modules)
        planned.inputs = _inputs_digest(planned)
        planned.fingerprint = json_digest({"inputs": planned.inputs, "code": planned.code})[:16]
        plan[step.name] = planned
    check_counterfactuals(stages, pipeline=pipeline.name)
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


def _inputs_digest(planned: PlannedStep) -> str:
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
    """Read (or start) RUN/manifest.json, refresh its provenance and resolved pipeline, save it;
    temporary manifests of writers killed mid-write go (no writer is mid-write under the lock)."""
    fields = {
        "run_id": run_dir.name,
        "pipeline": str(pipeline_path),
        "pipeline_resolved": pipeline.model_dump(mode="json"),
        "updated": _now(),
        **provenance(),
    }
    with manifest_lock(run_dir):
        remove_orphans(run_dir, MANIFEST_FILE)
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


def execute_step(
    planned: PlannedStep, run_dir: Path, manifest: dict[str, Any], *, reason: str = ""
) -> None:
    """Run one planned step's notebook now and record it in the manifest (with the git commit,
    tinylab version and code record that made it); StepFailed on error."""
    from papermill.exceptions import PapermillExecutionError

    name = planned.step.name
    output = RunLayout(run_dir).notebooks / f"{name}.ipynb"
    # outputs taken from another run (a sweep's links): this run writes its own, never into that
    shared = manifest["steps"].get(name, {}).get("shared_from", {})
    remove_outputs(run_dir, shared.get("paths", []))
    record = {
        "status": "running",
        "notebook": str(output.relative_to(run_dir)),
        "fingerprint": planned.fingerprint,
        "inputs": planned.inputs,
        "params": planned.parameters,
        "resolved": planned.resolved,
        "tinylab": package_versions(("tinylab",))["tinylab"],
        "git": git_state(),
        "code": planned.code,
        "started": _now(),
    }
    save_step(run_dir, manifest, name, record)
    _log(f"[{name}] running {planned.notebook.name}" + (f" ({reason})" if reason else ""))
    start = time.perf_counter()
    try:
        _configure_papermill_logging()
        execute_notebook(planned.notebook, output, planned.parameters, log_output=True)
        if planned.step.html:  # part of the step: a failure here is the step's, recorded
            from tinylab.analysis.publish import notebook_to_html

            notebook_to_html(output, run_dir / planned.step.html)
    except PapermillExecutionError as err:
        record.update(status="failed", seconds=round(time.perf_counter() - start, 2))
        record["error"] = f"{err.ename}: {err.evalue}"
        save_step(run_dir, manifest, name, record)
        raise StepFailed(
            f"step {name!r} failed in cell {err.exec_count} of {planned.notebook.name}:\n"
            f"{err.ename}: {err.evalue}\nexecuted notebook: {output}"
        ) from None
    except BaseException as err:  # a dead kernel, Ctrl-C, an I/O error: record, then stop
        record.update(status="failed", seconds=round(time.perf_counter() - start, 2))
        record["error"] = f"{type(err).__name__}: {err}"
        save_step(run_dir, manifest, name, record)
        if not isinstance(err, Exception):
            raise
        raise StepFailed(f"step {name!r} stopped: {record['error']}") from err
    record.update(status="done", seconds=round(time.perf_counter() - start, 2), finished=_now())
    save_step(run_dir, manifest, name, record)
    _log(f"[{name}] done in {record['seconds']:.1f} s")


def remove_outputs(run_dir: Path, paths: list[str]) -> None:
    """Remove files and folders of the run (paths relative to it), those that are there."""
    for relative in paths:
        path = run_dir / relative
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _mark_stale(run_dir: Path, manifest: dict[str, Any], name: str, decision: Decision) -> None:
    """Record a kept step's staleness (or its end, when its code is the same again)."""
    record = dict(manifest["steps"][name])
    stale = decision.reason if decision.action == "stale" else None
    if record.get("stale") == stale:
        return
    if stale is None:
        record.pop("stale", None)
    else:
        record["stale"] = stale
    save_step(run_dir, manifest, name, record)


def save_step(run_dir: Path, manifest: dict[str, Any], name: str, record: dict[str, Any]) -> None:
    """Record a step in `manifest` and, merged under the manifest lock, in RUN/manifest.json."""
    manifest["steps"][name] = dict(record)
    manifest["updated"] = _now()
    with manifest_lock(run_dir):  # merge into what is on disk: other steps may run elsewhere
        path = RunLayout(run_dir).manifest
        on_disk = read_manifest(run_dir) if path.is_file() else manifest
        on_disk["steps"][name] = dict(record)
        on_disk["updated"] = manifest["updated"]
        write_json_atomic(path, on_disk, indent=2)


# Papermill's own bookkeeping and the plain-text stand-ins of figures and Markdown: the step's
# prints, progress, warnings and tables are what a run shows
_PAPERMILL_CHATTER = re.compile(
    r"(Executing Cell|Ending Cell|Input Notebook|Output Notebook|Working directory"
    r"|Executing notebook with kernel|<Figure size |<IPython\.core\.display\.)"
)


class _StepOutput(logging.Filter):
    """Keeps a step's outputs, each line indented under its step, without blank lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage().strip("\n")
        if not text.strip() or _PAPERMILL_CHATTER.match(text):
            return False
        record.msg, record.args = textwrap.indent(text, "  ", lambda line: bool(line.strip())), ()
        return True


def _configure_papermill_logging() -> None:
    logger = logging.getLogger("papermill")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.addFilter(_StepOutput())
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _log(message: str) -> None:
    print(message, flush=True)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
