"""tinylab.cluster.local (`tinylab run --jobs N`): independent steps at the same time, a step
after its `after:` steps, at most N at once, a failure stops new launches, skipped steps launch
nothing, the manifest as a sequential run's, output prefixed by step, SIGTERM stops the slots."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest
from _pipeline_fixtures import (
    children,
    copy_library,
    tinylab_in,
    wait_for,
    write_notebook,
    write_pipeline,
)

from tinylab.cluster.local import ParallelRun, record_stopped, run_parallel
from tinylab.files import write_json_atomic
from tinylab.layout import RunLayout
from tinylab.pipeline import Decision, PipelineRun, StepFailed, run_pipeline

PARAMETERS = """\
name = "x"
wait_for = ""
fail = False
sleep_s = 0.0
run_dir = "."
overrides = []
"""
SOURCE = """\
import time
from pathlib import Path
run = Path(run_dir)
run.mkdir(parents=True, exist_ok=True)
start = time.time()
(run / f"{name}.started").write_text(str(start))
while wait_for and not (run / f"{wait_for}.started").exists():
    assert time.time() < start + 60, f"{wait_for} did not start while {name} ran"
    time.sleep(0.05)
print(f"{name} 50%\\r{name} 100%")  # a progress bar's carriage return
time.sleep(sleep_s)
with (run / f"{name}.spans").open("a") as f:
    f.write(f"{start} {time.time()}\\n")
if fail:
    raise RuntimeError(f"step {name} was told to fail")
"""


def jobs_notebook(path: Path) -> Path:
    """A step that records when it started, waits for `wait_for` to start (a rendezvous: two
    steps that wait for each other finish only when they run at the same time), sleeps, appends
    its span to RUN/<name>.spans and fails when told to."""
    return write_notebook(path, PARAMETERS, SOURCE)


@pytest.fixture
def project(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "notebooks").mkdir()
    jobs_notebook(tmp_path / "notebooks" / "jobs.ipynb")
    return {"root": tmp_path, "notebooks": tmp_path / "notebooks", "runs": tmp_path / "runs"}


def _pipeline(project: dict[str, Path], steps: str) -> Path:
    return write_pipeline(project["root"], steps)


def _parallel(project: dict[str, Path], path: Path, jobs: int = 2, **kwargs) -> ParallelRun:
    return run_parallel(
        path, jobs=jobs, runs_dir=project["runs"], notebooks_dir=project["notebooks"], **kwargs
    )


def _spans(run_dir: Path, name: str) -> list[tuple[float, float]]:
    path = run_dir / f"{name}.spans"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [(float(a), float(b)) for a, b in (line.split() for line in lines)]


def _most_at_once(spans: list[tuple[float, float]]) -> int:
    return max(sum(a <= start < b for a, b in spans) for start, _ in spans)


# b and c wait for each other; e is as free as they are, but there are two slots
FOUR_STEPS = """\
  - {name: b, notebook: jobs, params: {name: b, wait_for: c}}
  - {name: c, notebook: jobs, params: {name: c, wait_for: b}}
  - {name: e, notebook: jobs, params: {name: e}}
  - {name: d, notebook: jobs, params: {name: d}, after: [b, c]}
"""


def test_independent_steps_run_at_once_after_their_parents_at_most_n(
    project: dict[str, Path], capfd: pytest.CaptureFixture[str]
) -> None:
    done = _parallel(project, _pipeline(project, FOUR_STEPS))
    run_dir = project["runs"] / "p"
    (b,), (c,), (e,), (d,) = (_spans(run_dir, name) for name in "bced")
    assert max(b[0], c[0]) < min(b[1], c[1])  # b and c overlap (else neither would finish)
    assert e[0] >= min(b[1], c[1])  # waited for a free slot
    assert d[0] >= max(b[1], c[1])  # waited for both its parents
    assert _most_at_once([b, c, e, d]) == 2
    assert [done.run.manifest["steps"][s]["status"] for s in "bced"] == ["done"] * 4
    summary = done.summary()
    assert summary.startswith("run p in ") and ": 4 steps ran (b, c, e, d)" in summary
    assert "; at once: b with c (" in summary
    out, _ = capfd.readouterr()
    lines = out.splitlines()
    assert "[d] launched (after b, c)" in lines and "[b] done in" in out
    assert any(re.fullmatch(r"\[b\] +b 50%", line) for line in lines)  # \r ends a line
    assert any(re.fullmatch(r"\[b\] +b 100%", line) for line in lines)


def test_the_summary_names_the_steps_that_overlapped_in_pipeline_order() -> None:
    decisions = {n: Decision("run", "not run before") for n in "abc"}
    run = PipelineRun({"run_id": "p"}, decisions, wall_s=30.0)
    spans = {"c": (10.0, 20.0), "a": (0.0, 10.2), "b": (0.0, 12.0)}  # a-c: 0.2 s is a hand-over
    assert ParallelRun(run, spans).summary() == (
        "run p in 30 s: 3 steps ran (a, b, c); at once: a with b (10 s), b with c (2 s)"
    )
    assert ParallelRun(run, {"a": (0.0, 1.0)}).summary() == "run p in 30 s: 3 steps ran (a, b, c)"


FAIL_STEPS = """\
  - {name: f, notebook: jobs, params: {name: f, fail: true}}
  - {name: s, notebook: jobs, params: {name: s, wait_for: f, sleep_s: 5}}
  - {name: t, notebook: jobs, params: {name: t}, after: [s]}
"""


def test_a_failed_step_stops_new_launches_and_lets_running_ones_finish(
    project: dict[str, Path],
) -> None:
    with pytest.raises(StepFailed) as caught:
        _parallel(project, _pipeline(project, FAIL_STEPS))
    run_dir = (project["runs"] / "p").resolve()
    assert re.fullmatch(
        r"step 'f' failed in cell \d+ of jobs\.ipynb:\nRuntimeError: step f was told to fail\n"
        rf"executed notebook: {re.escape(str(RunLayout(run_dir).notebooks / 'f.ipynb'))}",
        str(caught.value),
    )
    manifest = json.loads(RunLayout(run_dir).manifest.read_text())
    assert manifest["steps"]["f"]["status"] == "failed"
    assert manifest["steps"]["s"]["status"] == "done"  # running: let finish
    assert "t" not in manifest["steps"] and not (run_dir / "t.started").exists()


THREE_STEPS = """\
  - {name: a, notebook: jobs, params: {name: a}}
  - {name: b, notebook: jobs, params: {name: b}, after: [a]}
  - {name: c, notebook: jobs, params: {name: c}, after: [a]}
"""


def test_the_manifest_is_a_sequential_runs_and_skipped_steps_launch_nothing(
    project: dict[str, Path], capfd: pytest.CaptureFixture[str]
) -> None:
    path = _pipeline(project, THREE_STEPS)
    run_dir = project["runs"] / "p"
    sequential = run_pipeline(path, runs_dir=project["runs"], notebooks_dir=project["notebooks"])
    capfd.readouterr()
    done = _parallel(project, path, from_step="b")
    assert {n: d.action for n, d in done.run.decisions.items()} == {
        "a": "skip",
        "b": "run",
        "c": "run",
    }
    assert len(_spans(run_dir, "a")) == 1 and len(_spans(run_dir, "b")) == 2
    out = capfd.readouterr().out
    assert "[a] skipped: same fingerprint" in out and "[a] launched" not in out
    on_disk = json.loads(RunLayout(run_dir).manifest.read_text())
    assert done.run.manifest == on_disk and "cluster" not in on_disk  # no SLURM job records
    for name, before in sequential.manifest["steps"].items():
        after = on_disk["steps"][name]
        assert set(after) == set(before)
        assert (after["status"], after["fingerprint"], after["inputs"]) == (
            before["status"],
            before["fingerprint"],
            before["inputs"],
        )
        assert after["seconds"] > 0
    assert on_disk["steps"]["a"] == sequential.manifest["steps"]["a"]  # skipped: untouched
    again = _parallel(project, path)
    assert again.run.summary().endswith("nothing ran; 3 skipped (3 same fingerprint)")
    assert again.spans == {} and len(_spans(run_dir, "a")) == 1


def test_cli_jobs_with_sweep_or_below_one_exits_2_and_dry_run_shows_the_plan(
    project: dict[str, Path],
) -> None:
    root = project["root"]
    copy_library(root)
    _pipeline(project, THREE_STEPS)
    sweep = tinylab_in(root, "run", "params/pipelines/p.yaml", "--jobs", "2",
                       "--sweep", "a.value=1,2")  # fmt: skip
    assert sweep.returncode == 2
    assert sweep.stderr.strip() == (
        "error: --jobs runs the steps of one run at once; a --sweep's points run one after "
        "another: leave out --jobs or --sweep"
    )
    zero = tinylab_in(root, "run", "params/pipelines/p.yaml", "--jobs", "0")
    assert zero.returncode == 2 and "--jobs" in zero.stderr
    dry = tinylab_in(root, "run", "params/pipelines/p.yaml", "--jobs", "2", "--dry-run")
    plain = tinylab_in(root, "run", "params/pipelines/p.yaml", "--dry-run")
    assert dry.returncode == 0 == plain.returncode, dry.stderr
    assert dry.stdout == plain.stdout  # --jobs changes how steps run, not which
    assert not (root / "outputs").exists()


def test_a_step_whose_slot_was_killed_is_recorded_as_failed(tmp_path: Path) -> None:
    """Under load a slot may not record its end within STOP_GRACE_S of the SIGINT and is
    killed (CI once left both sleepers `running`): the parent records it; a step the slot
    recorded itself stays as it is."""
    manifest = {"steps": {"a": {"status": "running", "fingerprint": "fa"},
                          "b": {"status": "failed", "error": "KeyboardInterrupt: "}}}  # fmt: skip
    write_json_atomic(RunLayout(tmp_path).manifest, manifest)
    record_stopped(tmp_path, manifest, ["a", "b"])
    steps = json.loads(RunLayout(tmp_path).manifest.read_text())["steps"]
    assert steps["a"]["status"] == "failed" and steps["a"]["fingerprint"] == "fa"
    assert "before its slot recorded its end" in steps["a"]["error"]
    assert steps["b"] == {"status": "failed", "error": "KeyboardInterrupt: "}


SLEEPERS = """\
  - {name: a, notebook: jobs, params: {name: a, sleep_s: 120}}
  - {name: b, notebook: jobs, params: {name: b, sleep_s: 120}}
"""


@pytest.mark.slow
def test_sigterm_stops_the_slots_and_their_kernels(project: dict[str, Path]) -> None:
    root = project["root"]
    copy_library(root)
    _pipeline(project, SLEEPERS)
    run_dir = root / "outputs" / "runs" / "p"
    parent = tinylab_in(root, "run", "params/pipelines/p.yaml", "--jobs", "2", wait=False)
    try:
        wait_for(lambda: all((run_dir / f"{s}.started").exists() for s in "ab"),
                 timeout_s=120, what="steps a and b started")  # fmt: skip
        tree, todo = [], children(parent.pid)
        while todo:  # the slots, their kernels and anything below
            tree.append(todo.pop())
            todo += children(tree[-1])
        assert len(tree) >= 4  # two slots, two kernels
        os.kill(parent.pid, signal.SIGTERM)
        parent.communicate(timeout=60)
    finally:
        if parent.poll() is None:
            parent.kill()
    assert parent.returncode == 128 + signal.SIGTERM
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in tree),
             timeout_s=30, what="the slots and kernels ended")  # fmt: skip
    manifest = json.loads(RunLayout(run_dir).manifest.read_text())
    assert [manifest["steps"][s]["status"] for s in "ab"] == ["failed", "failed"]
