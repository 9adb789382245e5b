"""Sweeps: one run per point of a grid of params values, each step whose inputs and code are the
same at several points run once and shared.

`--sweep STEP.key=v1,v2` sets `key` of the params file that STEP uses (as `--set STEP.key=v`
does) to each value; the option repeats and the grid is the product. Every point is a whole run
folder, SWEEP/<point>/ under outputs/runs/ (SWEEP: --run-id, default `<pipeline>-sweep`; the point
named from its values, `lr-3e-3`), that the report, `tinylab compare`, a resume and `--from`
treat like any other.

A step's share key is its fingerprint without the run folder (notebook bytes, parameters,
resolved params, code) and the share keys of the steps it runs after, so a swept value flows
into every step downstream of the swept one and none of those is shared by mistake. The first
point with a key runs the step; a later point with the same key hard-links its outputs (a data
step's data/, a training step's stages/<stage>/, an evaluation's eval/<stage>.*, and the executed
notebook) into its own folder and records `shared_from` (that point, its fingerprint, the
paths) in its manifest; the first one records `shared_with`. Only those kinds of steps are
shared; any other (the report) runs at every point. Running a shared step again at a point
(`--from`, a changed input) first removes the links (pipeline.remove_outputs), so no point ever
writes into another's folder. The sweep ends with the comparison report of its points,
SWEEP/compare.html.

    tinylab run params/pipelines/demo.yaml --sweep continual-mathcode.optim.lr=3e-3,1e-2
    tinylab run params/pipelines/demo.yaml --sweep continual-mathcode.optim.lr=3e-3,1e-2 --dry-run
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tinylab.analysis.compare import write_comparison
from tinylab.config.kinds import kind_of, load_params
from tinylab.config.loader import PROJECT_ROOT, ConfigError, load_config, parse_yaml
from tinylab.config.pipeline import PipelineConfig
from tinylab.files import hold_lock, json_digest, sha256_file, write_json_atomic
from tinylab.layout import RunLayout
from tinylab.notebook import NOTEBOOKS_DIR
from tinylab.pipeline import (
    RUNS_DIR,
    Decision,
    PipelineRun,
    PlannedStep,
    StepAction,
    apply_decision,
    manifest_lock,
    plan_steps,
    read_manifest,
    remove_outputs,
    run_pipeline,
    save_step,
    split_overrides,
)
from tinylab.provenance import SOURCE_DIR

SPEC_FORM = "STEP.key=v1,v2[,...], e.g. continual-mathcode.optim.lr=3e-3,1e-2"


class SweepError(ConfigError):
    """A --sweep spec that cannot be swept; the message names the spec and what is allowed."""


@dataclass(frozen=True)
class Axis:
    """One --sweep option: a step's params key and its values, as given."""

    step: str
    key: str
    values: tuple[str, ...]

    @property
    def target(self) -> str:
        return f"{self.step}.{self.key}"


@dataclass
class Point:
    """One run of the sweep: its values, folder, planned steps and each step's share key."""

    name: str
    values: dict[str, str]  # STEP.key -> value
    run_dir: Path
    plan: dict[str, PlannedStep]
    keys: dict[str, str]  # step -> share key

    @property
    def overrides(self) -> list[str]:
        return [f"{target}={value}" for target, value in self.values.items()]


@dataclass
class SweepPlan:
    """Every point of a sweep, planned, and who shares what; nothing written yet."""

    pipeline_path: Path
    folder: Path
    overrides: tuple[str, ...]  # --set, at every point
    points: list[Point]
    shareable: set[str]  # steps of a kind whose outputs are shared (output_paths)
    notebooks_dir: Path
    source_dir: Path
    linked: dict[str, list[str]] = field(default_factory=dict)  # point -> steps it linked

    def owner(self, point: Point, step: str) -> Point:
        """The point that runs `step` for `point`: the first with its share key, or itself."""
        if step not in self.shareable:
            return point
        return next(p for p in self.points if p.keys[step] == point.keys[step])

    def shared_steps(self) -> list[str]:
        """Steps that some point takes from another."""
        steps = self.points[0].plan
        return [s for s in steps if any(self.owner(p, s) is not p for p in self.points)]

    def describe(self) -> str:
        """The dry run: the points, and per step where it runs and which points share it."""
        names = [p.name for p in self.points]
        lines = [f"sweep of {self.pipeline_path}: {len(self.points)} points in {self.folder}/"]
        lines += [f"  {p.name}: {' '.join(p.overrides)}" for p in self.points]
        rows = [["step", *names]]
        for step in self.points[0].plan:
            owners = [self.owner(p, step) for p in self.points]
            rows.append([step, *("runs" if o is p else f"from {o.name}"
                                 for o, p in zip(owners, self.points, strict=True))])  # fmt: skip
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                  for r in rows]  # fmt: skip
        shared = self.shared_steps()
        lines.append(f"shared (run once): {', '.join(shared) if shared else 'none'}")
        return "\n".join(lines)

    def apply_for(self, point: Point) -> StepAction:
        """The pipeline's step action at `point`: a step to run whose owner is another point
        takes that point's outputs instead."""

        def apply(
            planned: PlannedStep, decision: Decision, run_dir: Path, manifest: dict[str, Any]
        ) -> None:
            owner = self.owner(point, planned.step.name)
            if decision.action == "run" and owner is not point:
                share_step(planned, owner, run_dir, manifest)
                self.linked.setdefault(point.name, []).append(planned.step.name)
            else:
                apply_decision(planned, decision, run_dir, manifest)

        return apply


@dataclass
class SweepRun:
    """A finished sweep: each point's run, the comparison report, the wall time."""

    plan: SweepPlan
    runs: list[PipelineRun]
    comparison: Path | None
    wall_s: float

    def summary(self) -> str:
        """A line per point (what ran there, what it took from another point), the shared
        steps, and the comparison report."""
        lines = [f"sweep {self.plan.folder.name} in {self.wall_s:.0f} s: {len(self.runs)} points"]
        for point, run in zip(self.plan.points, self.runs, strict=True):
            linked = self.plan.linked.get(point.name, [])
            ran = [n for n, d in run.decisions.items() if d.action == "run" and n not in linked]
            skipped = len(run.decisions) - len(ran) - len(linked)
            took: dict[str, list[str]] = {}
            for step in linked:
                took.setdefault(self.plan.owner(point, step).name, []).append(step)
            lines.append(
                f"  {point.name}: ran {', '.join(ran) or 'nothing'}"
                + "".join(f"; took from {owner}: {', '.join(s)}" for owner, s in took.items())
                + (f"; {skipped} skipped" if skipped else "")
            )
        shared = self.plan.shared_steps()
        lines.append(f"shared (run once): {', '.join(shared) if shared else 'none'}")
        if self.comparison is not None:
            lines.append(f"comparison: {self.comparison}")
        return "\n".join(lines)


def plan_sweep(
    pipeline_path: Path | str,
    specs: list[str] | tuple[str, ...],
    *,
    run_id: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    runs_dir: Path = RUNS_DIR,
    notebooks_dir: Path = NOTEBOOKS_DIR,
    source_dir: Path = SOURCE_DIR,
) -> SweepPlan:
    """Check every spec and value, then plan every point; SweepError (nothing written) on a
    spec that cannot be swept."""
    pipeline_path = Path(pipeline_path)
    pipeline = load_config(pipeline_path, PipelineConfig)
    folder = (runs_dir / (run_id or f"{pipeline.name}-sweep")).resolve()
    plan = plan_steps(
        pipeline, folder, overrides=overrides, notebooks_dir=notebooks_dir, source_dir=source_dir
    )
    routed = split_overrides(overrides, list(plan))
    axes: list[Axis] = []
    for spec in specs:
        axis = parse_axis(spec, plan, routed)
        if any(a.target == axis.target for a in axes):
            raise SweepError(f"--sweep {spec!r}: {axis.target} is swept twice; give it once")
        axes.append(axis)
    points = []
    for name, values in point_names(axes):
        run_dir = folder / name
        point_plan = plan_steps(
            pipeline,
            run_dir,
            overrides=[*overrides, *(f"{t}={v}" for t, v in values.items())],
            notebooks_dir=notebooks_dir,
            source_dir=source_dir,
        )
        points.append(Point(name, values, run_dir, point_plan, share_keys(point_plan)))
    shareable = {n for n, p in plan.items() if output_paths(p, folder) is not None}
    return SweepPlan(pipeline_path, folder, tuple(overrides), points, shareable, notebooks_dir,
                     source_dir)  # fmt: skip


def parse_axis(spec: str, plan: dict[str, PlannedStep], routed: dict[str, list[str]]) -> Axis:
    """One `STEP.key=v1,v2` spec, each value loaded into the step's params files to check it."""
    target, sep, raw = spec.partition("=")
    step, _, key = target.partition(".")
    if not sep or not key or any(not part for part in key.split(".")):
        raise SweepError(f"--sweep {spec!r}: expected {SPEC_FORM}")
    swept = ", ".join(n for n, p in plan.items() if p.resolved)
    if step not in plan:
        raise SweepError(f"--sweep {spec!r}: no step {step!r}; steps with a params file: {swept}")
    planned = plan[step]
    if not planned.resolved:
        raise SweepError(
            f"--sweep {spec!r}: step {step!r} uses no params file; steps with one: {swept}"
        )
    if any(item.partition("=")[0] == key for item in routed.get(step, [])):
        raise SweepError(f"--sweep {spec!r}: {target} is also given with --set; give it once")
    values = [value.strip() for value in split_values(raw)]
    if not all(values):
        raise SweepError(
            f"--sweep {spec!r}: an empty value; give one or more values separated by commas, "
            f"{SPEC_FORM}"
        )
    seen: dict[str, str] = {}
    for value in values:
        parsed = json.dumps(parse_yaml(value, source=f"--sweep {spec!r}"), sort_keys=True)
        if parsed in seen:
            raise SweepError(
                f"--sweep {spec!r}: {seen[parsed]!r} and {value!r} are the same value; give each "
                "value once"
            )
        seen[parsed] = value
        for param in planned.resolved:
            path = PROJECT_ROOT / planned.step.params[param]
            try:
                load_params(path, overrides=[*routed.get(step, []), f"{key}={value}"])
            except ConfigError as err:
                raise SweepError(f"--sweep {spec!r}: value {value!r}: {err}") from None
    return Axis(step, key, tuple(values))


def split_values(raw: str) -> list[str]:
    """`a,b,[c, d]` -> ["a", "b", "[c, d]"]: commas inside brackets, braces or quotes belong to
    the value."""
    values, current, depth, quote = [], "", 0, ""
    for char in raw:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            values.append(current)
            current = ""
            continue
        current += char
    return [*values, current]


def point_names(axes: list[Axis]) -> list[tuple[str, dict[str, str]]]:
    """Every point of the grid (the product of the axes' values), named from its values:
    `lr-3e-3`, `lr-3e-3_weight_decay-0`; the whole STEP.key where the last parts of two axes'
    keys are the same."""
    last = [axis.key.rpartition(".")[2] for axis in axes]
    labels = last if len(set(last)) == len(last) else [axis.target for axis in axes]
    points, names = [], {}
    for combination in itertools.product(*(axis.values for axis in axes)):
        name = "_".join(f"{label}-{_slug(value)}" for label, value in zip(labels, combination,
                                                                         strict=True))  # fmt: skip
        if name in names:
            raise SweepError(
                f"--sweep: the values {names[name]} and {list(combination)} both name the "
                f"folder {name!r}; give values that differ in letters, digits, '.', '+' or '-'"
            )
        names[name] = list(combination)
        points.append((name, dict(zip((a.target for a in axes), combination, strict=True))))
    return points


def _slug(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", value).strip("_") or "empty"


def share_keys(plan: dict[str, PlannedStep]) -> dict[str, str]:
    """Each step's share key: its fingerprint without the run folder, and the share keys of the
    steps it runs after (so a swept value reaches every step downstream of the swept one)."""
    keys: dict[str, str] = {}
    for name, planned in plan.items():
        parameters = {k: v for k, v in planned.parameters.items() if k != "run_dir"}
        payload = {
            "notebook": sha256_file(planned.notebook),
            "parameters": parameters,
            "resolved": planned.resolved,
            "code": planned.code,
            "after": [keys[dep] for dep in planned.step.after],
        }
        keys[name] = json_digest(payload)[:16]
    return keys


def output_paths(planned: PlannedStep, run_dir: Path) -> list[Path] | None:
    """What a step writes in `run_dir`, by its kind: a data step (a params/data/ file) data/, a
    training step (params/stages/) stages/<stage>/, an evaluation (params/eval/ and `stage`)
    eval/<stage>.*; with its executed notebook and HTML. None for any other step: never shared."""
    run, step = RunLayout(run_dir), planned.step
    kinds = {kind_of(PROJECT_ROOT / step.params[param]) for param in planned.resolved}
    stage = step.params.get("stage")
    if kinds == {"data"}:
        made = [run.data]
    elif kinds == {"stages"}:
        made = [run.stage(yaml.safe_load(text)["name"]).root for text in planned.resolved.values()]
    elif kinds == {"eval"} and isinstance(stage, str):
        made = sorted(run.eval.glob(f"{glob.escape(stage)}.*"))
    else:
        return None
    made.append(run.notebooks / f"{step.name}.ipynb")
    return [*made, run_dir / step.html] if step.html else made


def share_step(planned: PlannedStep, owner: Point, run_dir: Path, manifest: dict[str, Any]) -> None:
    """Take a step's outputs from the point that ran it: hard links in this run folder, and the
    owner's record with this run's fingerprint and `shared_from`. The record says `sharing`
    while the links are made, so an interrupted share is removed before the step runs here."""
    name = planned.step.name
    source = read_manifest(owner.run_dir)["steps"].get(name, {})
    if source.get("status") != "done":
        raise RuntimeError(f"step {name!r} of {owner.run_dir} is not done; cannot share it")
    made = [p for p in output_paths(owner.plan[name], owner.run_dir) or [] if p.exists()]
    paths = [str(p.relative_to(owner.run_dir)) for p in made]
    shared = {"run": owner.name, "run_dir": str(owner.run_dir),
              "fingerprint": source["fingerprint"], "paths": paths}  # fmt: skip
    previous = manifest["steps"].get(name, {}).get("shared_from", {}).get("paths", [])
    remove_outputs(run_dir, [*previous, *paths])
    save_step(run_dir, manifest, name, {"status": "sharing", "shared_from": shared})
    for relative in paths:
        link_tree(owner.run_dir / relative, run_dir / relative)
    kept = {k: v for k, v in source.items() if k not in ("shared_from", "shared_with", "stale")}
    record = {**kept, "fingerprint": planned.fingerprint, "inputs": planned.inputs,
              "params": planned.parameters, "resolved": planned.resolved, "code": planned.code,
              "shared_from": shared}  # fmt: skip
    save_step(run_dir, manifest, name, record)
    print(f"[{name}] shared from {owner.name} (same inputs and code): {', '.join(paths)}",
          flush=True)  # fmt: skip


def link_tree(source: Path, target: Path) -> None:
    """Hard-link the file `source`, or every file under the folder `source`, at `target`;
    folders are made anew, a run's own bookkeeping (`own_bookkeeping`) left out."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if not source.is_dir():
        os.link(source, target)
        return
    for folder, dirs, files in os.walk(source, followlinks=True):
        dirs[:] = [d for d in dirs if not own_bookkeeping(d)]
        here = target / Path(folder).relative_to(source)
        here.mkdir(exist_ok=True)
        for file in files:
            if not own_bookkeeping(file):
                os.link(Path(folder) / file, here / file)


def own_bookkeeping(name: str) -> bool:
    """Whether a file or folder is a run's own, never linked: a lock (`.lock`, `*.lock`: held by
    inode), a fresh start's `.previous/`, or what an interrupted write leaves (`*.tmp`,
    `.NAME.tmp-PID`, `.NAME.old-PID`). Other dot-files are outputs (a checkpoint's `.metadata`)."""
    return (
        name == ".previous"
        or name.endswith((".lock", ".tmp"))
        or re.search(r"\.(tmp|old)-\d+$", name) is not None
    )


def run_sweep(
    plan: SweepPlan, *, from_step: str | None = None, keep_stale: bool = False
) -> SweepRun:
    """Run (or resume) every point in turn, sharing steps; record in each point's manifest its
    `sweep` (folder, point, values, points) and on each shared step `shared_with`; then write
    the comparison report of the points (analysis.compare) into the sweep folder."""
    started = time.perf_counter()
    runs = []
    try:
        for point in plan.points:
            print(f"== {point.name}: {' '.join(point.overrides)}", flush=True)
            runs.append(run_pipeline(
                plan.pipeline_path, run_id=str(point.run_dir), from_step=from_step,
                overrides=[*plan.overrides, *point.overrides], keep_stale=keep_stale,
                notebooks_dir=plan.notebooks_dir, source_dir=plan.source_dir,
                apply=plan.apply_for(point),
            ))  # fmt: skip
    finally:
        record_sharing(plan)
    points = [point.run_dir for point in plan.points]
    comparison = write_comparison(points, plan.folder) if len(points) > 1 else None
    return SweepRun(plan, runs, comparison, wall_s=time.perf_counter() - started)


def record_sharing(plan: SweepPlan) -> None:
    """Write into each point's manifest (under its run lock) its place in the sweep and, on each
    step other points took from it, `shared_with` (read from their `shared_from`)."""
    done = [p for p in plan.points if RunLayout(p.run_dir).manifest.is_file()]
    manifests = {p.name: read_manifest(p.run_dir) for p in done}
    users: dict[tuple[str, str], list[str]] = {}
    for name, manifest in manifests.items():
        for step, record in manifest["steps"].items():
            if "shared_from" in record:
                users.setdefault((record["shared_from"]["run"], step), []).append(name)
    for point in done:
        layout = RunLayout(point.run_dir)
        lock = hold_lock(layout.run_lock, f"run folder {point.run_dir}")
        with lock, manifest_lock(point.run_dir):
            manifest = read_manifest(point.run_dir)
            manifest["sweep"] = {
                "folder": str(plan.folder),
                "point": point.name,
                "values": point.values,
                "points": [p.name for p in plan.points],
            }
            for step, record in manifest["steps"].items():
                record.pop("shared_with", None)
                if (point.name, step) in users:
                    record["shared_with"] = users[point.name, step]
            write_json_atomic(layout.manifest, manifest, indent=2)
