"""The local machine as N slots: `tinylab run PIPELINE --jobs N` runs the steps whose `after:`
steps are done at the same time, at most N at once, each in a process of its own through the
one-step entry a SLURM job runs (`python -m tinylab.cluster run-step --local`: it calls
pipeline.execute_step, which merges the step's record into the manifest under
pipeline.manifest_lock).

The decisions are those of `tinylab run` (pipeline.decide_steps, under the run folder's lock,
which this process holds for the whole run; the slots never take it): skipped and stale steps are
recorded here and launch nothing. After a step fails nothing more is launched; the steps running
go on to their end, then the run fails with the failed step's StepFailed message. Ctrl-C or
SIGTERM stops the slots (SIGINT to each: its step is recorded as failed and its kernel shut down;
killed after STOP_GRACE_S). Each slot's output reaches this process's stdout and stderr line by
line with "[step] " in front; a progress bar's carriage returns end lines, so it shows live.

    tinylab run params/pipelines/gpu.yaml --jobs 2
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tinylab.notebook import NOTEBOOKS_DIR
from tinylab.pipeline import (
    RUNS_DIR,
    Decision,
    PipelineRun,
    PlannedStep,
    StepFailed,
    apply_decision,
    read_manifest,
    run_pipeline,
    save_step,
)

STOP_GRACE_S = 30.0  # after SIGINT, a slot's time to record its step and shut its kernel down
POLL_S = 0.05
MIN_OVERLAP_S = 0.5  # less is one step's process ending while the next one starts
RELAY_DRAIN_S = 5.0  # after a slot's end, the most its remaining output is waited for


@dataclass
class ParallelRun:
    """A `tinylab run --jobs N`: the pipeline run and when each launched step ran (monotonic
    seconds, from launch to the end of its process)."""

    run: PipelineRun
    spans: dict[str, tuple[float, float]]

    def overlaps(self) -> list[tuple[str, str, float]]:
        """The pairs of steps (in pipeline order) that ran at the same time for at least
        MIN_OVERLAP_S, with the seconds they shared."""
        names, found = [name for name in self.run.decisions if name in self.spans], []
        for i, first in enumerate(names):
            for second in names[i + 1 :]:
                (a0, a1), (b0, b1) = self.spans[first], self.spans[second]
                shared = min(a1, b1) - max(a0, b0)
                if shared >= MIN_OVERLAP_S:
                    found.append((first, second, shared))
        return found

    def summary(self) -> str:
        """The run's summary line, then which steps ran at the same time."""
        pairs = [f"{a} with {b} ({shared:.0f} s)" for a, b, shared in self.overlaps()]
        return self.run.summary() + (f"; at once: {', '.join(pairs)}" if pairs else "")


def run_parallel(
    pipeline_path: Path | str,
    *,
    jobs: int,
    run_id: str | None = None,
    from_step: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    keep_stale: bool = False,
    runs_dir: Path = RUNS_DIR,
    notebooks_dir: Path = NOTEBOOKS_DIR,
) -> ParallelRun:
    """pipeline.run_pipeline with the steps carried out by `jobs` local slots."""
    slots = Slots(jobs, Path(pipeline_path), list(overrides), notebooks_dir)
    run = run_pipeline(
        pipeline_path,
        run_id=run_id,
        from_step=from_step,
        overrides=overrides,
        keep_stale=keep_stale,
        runs_dir=runs_dir,
        notebooks_dir=notebooks_dir,
        run_steps=slots.run,
    )
    return ParallelRun(run, slots.spans)


@dataclass
class _Slot:
    """One launched step: its process, its output relays and where its failure message goes."""

    name: str
    process: subprocess.Popen
    error_file: Path
    relays: list[threading.Thread]
    started: float
    last_line: list[str]  # the last line it wrote to stderr, for a failure without a message


class Slots:
    """`jobs` processes at most, each running one step (pipeline.StepsAction: `run`)."""

    def __init__(
        self, jobs: int, pipeline_path: Path, overrides: list[str], notebooks_dir: Path
    ) -> None:
        self.jobs, self.pipeline_path = jobs, pipeline_path
        self.overrides, self.notebooks_dir = overrides, notebooks_dir
        self.spans: dict[str, tuple[float, float]] = {}
        self._output = threading.Lock()

    def run(
        self,
        plan: dict[str, PlannedStep],
        decisions: dict[str, Decision],
        run_dir: Path,
        manifest: dict[str, Any],
    ) -> None:
        """Carry out the decisions: skipped steps here, the others in slots once their `after:`
        steps are done; StepFailed (the first failure's message) once the slots are idle."""
        for name, planned in plan.items():
            if decisions[name].action != "run":
                apply_decision(planned, decisions[name], run_dir, manifest)
        waiting = [name for name in plan if decisions[name].action == "run"]
        done = set(plan) - set(waiting)
        running: dict[str, _Slot] = {}
        failure: str | None = None
        with tempfile.TemporaryDirectory(prefix="tinylab-jobs-") as tmp, _sigterm_stops():
            try:
                while running or (waiting and failure is None):
                    ready = [n for n in waiting if set(plan[n].step.after) <= done]
                    for name in ready[: self.jobs - len(running)] if failure is None else []:
                        waiting.remove(name)
                        running[name] = self._launch(plan[name], decisions[name], run_dir, tmp)
                    slot = running.pop(_first_to_end(running))
                    error = self._finish(slot)
                    if error is None:
                        done.add(slot.name)
                    failure = failure or error
            except BaseException:
                self._stop(list(running.values()))
                record_stopped(run_dir, manifest, list(running))
                raise
            finally:
                manifest.update(read_manifest(run_dir))  # the records the slots wrote
        if failure is not None:
            raise StepFailed(failure)

    def _launch(self, planned: PlannedStep, decision: Decision, run_dir: Path, tmp: str) -> _Slot:
        name = planned.step.name
        error_file = Path(tmp) / f"{name}.error"
        command = [
            *(sys.executable, "-m", "tinylab.cluster", "run-step", "--local"),
            *("--pipeline", str(self.pipeline_path), "--run-dir", str(run_dir)),
            *("--step", name, "--fingerprint", planned.fingerprint),
            *("--notebooks-dir", str(self.notebooks_dir), "--error-file", str(error_file)),
            *[arg for item in self.overrides for arg in ("--set", item)],
        ]
        self._write(sys.stdout, f"[{name}] launched ({decision.reason})")
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # a terminal's Ctrl-C reaches this process, which stops it
        )
        last_line: list[str] = []
        relays = [
            threading.Thread(target=self._relay, args=(name, stream, out, keep), daemon=True)
            for stream, out, keep in (
                (process.stdout, sys.stdout, []),
                (process.stderr, sys.stderr, last_line),
            )
        ]
        for relay in relays:
            relay.start()
        return _Slot(name, process, error_file, relays, time.monotonic(), last_line)

    def _relay(self, name: str, stream: IO[bytes], out: IO[str], last_line: list[str]) -> None:
        """Copy a slot's output line by line (a carriage return ends a line too), each line with
        the step's name in front unless it starts with it."""
        for raw in iter(stream.readline, b""):
            for piece in raw.decode(errors="replace").replace("\r", "\n").splitlines():
                if piece.strip():
                    named = piece.startswith(f"[{name}]")  # the step's own log lines
                    self._write(out, piece if named else f"[{name}] {piece}")
                    last_line[:] = [piece.strip()]

    def _write(self, out: IO[str], line: str) -> None:
        with self._output:
            out.write(line + "\n")
            out.flush()

    def _finish(self, slot: _Slot) -> str | None:
        """Wait for a slot's end; its failure message, or None when its step is done."""
        code = slot.process.wait()
        for relay in slot.relays:  # a kernel left behind by a killed slot may hold its pipes
            relay.join(timeout=RELAY_DRAIN_S)
        self.spans[slot.name] = (slot.started, time.monotonic())
        if code == 0:
            return None
        if slot.error_file.is_file():
            return slot.error_file.read_text()
        said = f": {slot.last_line[0]}" if slot.last_line else ""
        return f"step {slot.name!r} stopped: its process exited with code {code}{said}"

    def _stop(self, slots: list[_Slot]) -> None:
        """SIGINT to each running slot, then wait for them (killed after STOP_GRACE_S, or at
        once on a second Ctrl-C)."""
        for slot in slots:
            with contextlib.suppress(ProcessLookupError):
                slot.process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + STOP_GRACE_S
        try:
            for slot in slots:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    slot.process.wait(timeout=max(deadline - time.monotonic(), 0))
        except KeyboardInterrupt:
            pass
        for slot in slots:
            if slot.process.poll() is None:
                slot.process.kill()
                slot.process.wait()


def record_stopped(run_dir: Path, manifest: dict[str, Any], names: list[str]) -> None:
    """Record as failed each of the stopped steps `names` that is still `running` in the run's
    manifest: its slot was killed (or died) before it could record its end itself."""
    on_disk = read_manifest(run_dir)["steps"]
    for name in names:
        record = on_disk.get(name, {})
        if record.get("status") == "running":
            error = "stopped (SIGTERM or Ctrl-C) before its slot recorded its end"
            save_step(run_dir, manifest, name, {**record, "status": "failed", "error": error})


def _first_to_end(running: dict[str, _Slot]) -> str:
    """The name of the first running slot whose process ends (polled)."""
    while True:
        for name, slot in running.items():
            if slot.process.poll() is not None:
                return name
        time.sleep(POLL_S)


@contextlib.contextmanager
def _sigterm_stops() -> Iterator[None]:
    """While running slots (in the main thread): SIGTERM exits with code 143 through the
    callers' cleanup (which stops the slots) instead of ending the process at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _exit(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
