"""tinylab.pipeline: papermill steps, manifest, skip/resume, --from, failures, the run summary and
the run lock. Code-aware fingerprints: tests/test_pipeline_code.py; the kill soak of a real
pipeline: tests/test_pipeline_soak.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _pipeline_fixtures import (
    kill_tree,
    project_copy,
    step_notebook,
    tinylab_in,
    wait_for,
    write_pipeline,
)

from tinylab.config.loader import ConfigError
from tinylab.files import LockHeld, hold_lock
from tinylab.layout import RunLayout
from tinylab.pipeline import PipelineRun, StepFailed, run_pipeline, split_overrides


@pytest.fixture
def project(tmp_path: Path) -> dict[str, Path]:
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    step_notebook(notebooks / "step.ipynb")
    pipelines = tmp_path / "params" / "pipelines"
    pipelines.mkdir(parents=True)
    return {"notebooks": notebooks, "pipelines": pipelines, "runs": tmp_path / "runs"}


def _pipeline(project: dict[str, Path], steps: str, name: str = "p") -> Path:
    path = project["pipelines"] / f"{name}.yaml"
    path.write_text(f"name: {name}\nsteps:\n{steps}")
    return path


THREE_STEPS = """\
  - {name: a, notebook: step, params: {name: a, value: 1}}
  - {name: b, notebook: step, params: {name: b, value: 2}, after: [a]}
  - {name: c, notebook: step, params: {name: c, value: 3}, after: [b], html: c.html}
"""


def _run(project: dict[str, Path], path: Path, **kwargs) -> PipelineRun:
    return run_pipeline(
        path, runs_dir=project["runs"], notebooks_dir=project["notebooks"], **kwargs
    )


def _lines(run_dir: Path, name: str) -> list[str]:
    return (run_dir / f"{name}.txt").read_text().splitlines()


def test_runs_steps_and_writes_manifest(project: dict[str, Path]) -> None:
    manifest = _run(project, _pipeline(project, THREE_STEPS)).manifest
    run_dir = project["runs"] / "p"
    assert [manifest["steps"][s]["status"] for s in "abc"] == ["done"] * 3
    assert all(manifest["steps"][s]["seconds"] > 0 for s in "abc")
    assert _lines(run_dir, "b") == ["2 []"]
    assert (RunLayout(run_dir).notebooks / "c.ipynb").is_file()
    html = (run_dir / "c.html").read_text()
    assert "out.parent.mkdir" not in html  # code hidden
    on_disk = json.loads(RunLayout(run_dir).manifest.read_text())
    assert on_disk["steps"]["a"]["status"] == "done"
    assert set(on_disk["git"]) == {"sha", "dirty"}
    assert on_disk["packages"]["torch"]
    assert on_disk["hardware"]["cpu_count"] >= 1


def test_a_manifest_left_half_written_by_a_killed_run_is_removed(project: dict[str, Path]) -> None:
    run_dir = project["runs"] / "p"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    run_dir.mkdir(parents=True)
    orphan = run_dir / f".manifest.json.tmp-{dead}"
    orphan.write_text('{"steps": {"a": ')
    live = run_dir / f".manifest.json.tmp-{os.getppid()}"  # a writer still at work: kept
    live.write_text("{")
    _run(project, _pipeline(project, THREE_STEPS))
    assert not orphan.exists() and live.exists()


def test_rerun_skips_finished_steps(project: dict[str, Path]) -> None:
    path = _pipeline(project, THREE_STEPS)
    _run(project, path)
    _run(project, path)
    assert _lines(project["runs"] / "p", "a") == ["1 []"]


def test_each_step_records_the_commit_version_and_code_that_made_it(
    project: dict[str, Path],
) -> None:
    from importlib import metadata

    record = _run(project, _pipeline(project, THREE_STEPS)).manifest["steps"]["a"]
    assert record["tinylab"] == metadata.version("tinylab")  # the package's metadata
    assert set(record["git"]) == {"sha", "dirty"}
    assert set(record["code"]) == {"files", "versions"} and record["inputs"]


def test_the_summary_says_what_ran_what_was_skipped_and_the_wall_time(
    project: dict[str, Path],
) -> None:
    path = _pipeline(project, THREE_STEPS)
    first = _run(project, path)
    assert first.summary() == f"run p in {first.wall_s:.0f} s: 3 steps ran (a, b, c)"
    again = _run(project, path)
    assert again.summary() == (
        f"run p in {again.wall_s:.0f} s: nothing ran; 3 skipped (3 same fingerprint)"
    )
    assert again.wall_s < first.wall_s  # this invocation's time, not the steps' recorded seconds
    changed = _run(project, _pipeline(project, THREE_STEPS.replace("value: 2", "value: 20")))
    assert changed.summary().endswith("2 steps ran (b, c); 1 skipped (1 same fingerprint)")
    assert [d.reason for d in changed.decisions.values()] == [
        "same fingerprint",
        "notebook or params changed",
        "after b",
    ]


def test_changed_params_rerun_the_step_and_what_follows(project: dict[str, Path]) -> None:
    _run(project, _pipeline(project, THREE_STEPS))
    _run(project, _pipeline(project, THREE_STEPS.replace("value: 2", "value: 20")))
    run_dir = project["runs"] / "p"
    assert _lines(run_dir, "a") == ["1 []"]
    assert _lines(run_dir, "b") == ["2 []", "20 []"]
    assert len(_lines(run_dir, "c")) == 2  # downstream of a step that ran again


def test_from_forces_a_step_and_everything_after(project: dict[str, Path]) -> None:
    path = _pipeline(project, THREE_STEPS)
    _run(project, path)
    done = _run(project, path, from_step="b", overrides=["b.optim.lr=1", "c.seed=2"])
    assert done.decisions["b"].reason == "forced by --from"
    run_dir = project["runs"] / "p"
    assert len(_lines(run_dir, "a")) == 1
    assert _lines(run_dir, "b")[-1] == "2 ['optim.lr=1']"
    assert _lines(run_dir, "c")[-1] == "3 ['seed=2']"


def test_failing_step_stops_the_run_and_keeps_earlier_outputs(project: dict[str, Path]) -> None:
    steps = THREE_STEPS.replace("{name: b, value: 2}", "{name: b, value: 2, fail: true}")
    with pytest.raises(StepFailed, match="RuntimeError: step b was told to fail"):
        _run(project, _pipeline(project, steps))
    run_dir = project["runs"] / "p"
    manifest = json.loads(RunLayout(run_dir).manifest.read_text())
    assert manifest["steps"]["a"]["status"] == "done"
    assert manifest["steps"]["b"]["status"] == "failed"
    assert "told to fail" in manifest["steps"]["b"]["error"]
    assert "c" not in manifest["steps"]
    assert _lines(run_dir, "a") == ["1 []"]
    # fixed and re-run: a is skipped, b and c run
    _run(project, _pipeline(project, THREE_STEPS))
    assert len(_lines(run_dir, "a")) == 1
    assert _lines(run_dir, "c") == ["3 []"]


def test_a_dead_kernel_is_recorded_as_failed(project: dict[str, Path]) -> None:
    steps = THREE_STEPS.replace("{name: b, value: 2}", "{name: b, value: 2, die: true}")
    with pytest.raises(StepFailed, match="step 'b'"):
        _run(project, _pipeline(project, steps))
    manifest = json.loads(RunLayout(project["runs"] / "p").manifest.read_text())
    assert manifest["steps"]["b"]["status"] == "failed"
    assert manifest["steps"]["b"]["error"]
    assert "c" not in manifest["steps"]


def test_a_step_whose_html_cannot_be_rendered_is_recorded_as_failed(
    project: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GPU image's report step once died in nbconvert (no 'lab' template) after its notebook
    ran, and the manifest kept the step as running."""

    def no_template(executed: Path, html: Path) -> Path:
        raise ValueError("No template sub-directory with name 'lab' found")

    monkeypatch.setattr("tinylab.analysis.publish.notebook_to_html", no_template)
    with pytest.raises(StepFailed, match="step 'c' stopped: ValueError: No template"):
        _run(project, _pipeline(project, THREE_STEPS))
    record = json.loads(RunLayout(project["runs"] / "p").manifest.read_text())["steps"]["c"]
    assert record["status"] == "failed" and "No template" in record["error"]


def test_unknown_step_in_from_or_overrides(project: dict[str, Path]) -> None:
    path = _pipeline(project, THREE_STEPS)
    with pytest.raises(ConfigError, match="--from 'z': no such step"):
        _run(project, path, from_step="z")
    with pytest.raises(ConfigError, match="prefix the key with a step name"):
        _run(project, path, overrides=["optim.lr=1"])


def test_missing_notebook_fails_before_anything_runs(project: dict[str, Path]) -> None:
    steps = THREE_STEPS.replace("{name: c, notebook: step", "{name: c, notebook: nope")
    with pytest.raises(ConfigError, match="step 'c': notebook not found"):
        _run(project, _pipeline(project, steps))
    assert not (project["runs"] / "p" / "a.txt").exists()


def test_split_overrides_routes_by_step() -> None:
    routed = split_overrides(["a.x=1", "*.y=2"], ["a", "b"])
    assert routed == {"a": ["x=1", "y=2"], "b": ["y=2"]}


@pytest.mark.slow
def test_killed_run_resumes_with_finished_steps_skipped(project: dict[str, Path]) -> None:
    steps = THREE_STEPS.replace("{name: b, value: 2}", "{name: b, value: 2, sleep_s: 60}")
    path = _pipeline(project, steps)
    script = (
        "import sys; from pathlib import Path; from tinylab.pipeline import run_pipeline; "
        f"run_pipeline(Path({str(path)!r}), runs_dir=Path({str(project['runs'])!r}), "
        f"notebooks_dir=Path({str(project['notebooks'])!r}))"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    run_dir = project["runs"] / "p"
    deadline = time.time() + 60
    while not (run_dir / "b.txt").exists() and time.time() < deadline:
        time.sleep(0.2)
    assert (run_dir / "b.txt").exists(), "step b never started"
    kill_tree(proc.pid)  # the run and its kernel
    proc.wait()
    manifest = json.loads(RunLayout(run_dir).manifest.read_text())
    assert manifest["steps"]["b"]["status"] == "running"
    _run(project, _pipeline(project, THREE_STEPS))  # started again (b no longer sleeps)
    assert _lines(run_dir, "a") == ["1 []"]
    assert len(_lines(run_dir, "b")) == 2
    assert _lines(run_dir, "c") == ["3 []"]


# --------------------------------------------------------------------------------------------
# One `tinylab run` per run folder

HOLD_AND_DIE = """\
import os, signal, sys
from pathlib import Path
from tinylab.files import hold_lock
with hold_lock(Path(sys.argv[1]), "run folder"):
    os.kill(os.getpid(), signal.SIGKILL)  # killed while holding it: nothing cleans up
"""


def test_a_second_run_on_the_same_folder_names_the_holder(project: dict[str, Path]) -> None:
    path = _pipeline(project, THREE_STEPS)
    run_dir = (project["runs"] / "p").resolve()
    with hold_lock(RunLayout(run_dir).run_lock, "test"), pytest.raises(LockHeld) as caught:
        _run(project, path)
    message = str(caught.value)
    assert message.startswith(f"run folder {run_dir} is in use: pid {os.getpid()} on ")
    assert "since 20" in message and "pytest" in message  # when, and the holder's command
    assert not (run_dir / "a.txt").exists() and not RunLayout(run_dir).manifest.exists()
    _run(project, path)  # released: the next run goes ahead
    assert _lines(run_dir, "a") == ["1 []"]


def test_the_lock_of_a_killed_run_is_taken_over(project: dict[str, Path]) -> None:
    run_dir = (project["runs"] / "p").resolve()
    lock = RunLayout(run_dir).run_lock
    killed = subprocess.run([sys.executable, "-c", HOLD_AND_DIE, str(lock)])
    assert killed.returncode == -signal.SIGKILL
    dead = json.loads(lock.read_text())["pid"]  # its record is left behind
    _run(project, _pipeline(project, THREE_STEPS))
    assert _lines(run_dir, "c") == ["3 []"]
    assert json.loads(lock.read_text())["pid"] == os.getpid() != dead  # the new holder's record


SLEEPY = """\
  - {name: a, notebook: step, params: {name: a, sleep_s: SLEEP}}
  - {name: b, notebook: step, params: {name: b}}
"""


@pytest.mark.slow
def test_a_second_tinylab_run_exits_2_naming_the_holder(tmp_path: Path) -> None:
    root = project_copy(tmp_path, SLEEPY.replace("SLEEP", "120"))
    run_dir = root / "outputs" / "runs" / "p"
    first = tinylab_in(root, "run", "params/pipelines/p.yaml", wait=False)
    try:
        wait_for(lambda: (run_dir / "a.txt").exists(), timeout_s=120, what="step a started")
        second = tinylab_in(root, "run", "params/pipelines/p.yaml")
    finally:
        kill_tree(first.pid)  # the run and its kernel, as a crash would
        first.communicate()
    assert second.returncode == 2
    (line,) = second.stderr.splitlines()  # one message, no traceback
    holder = f"pid {first.pid} on {socket.gethostname()} since 20"
    assert line.startswith(f"error: run folder {run_dir} is in use: {holder}")
    assert "tinylab/cli.py run params/pipelines/p.yaml)" in line  # the holder's command
    write_pipeline(root, SLEEPY.replace("SLEEP", "0"))
    third = tinylab_in(root, "run", "params/pipelines/p.yaml")  # the killed run's lock is free
    assert third.returncode == 0, third.stderr
    assert third.stdout.splitlines()[-1].endswith(": 2 steps ran (a, b)")


def test_a_run_shows_steps_and_outputs_without_papermill_chatter_or_kernel_warnings(
    project: dict[str, Path], capfd: pytest.CaptureFixture[str]
) -> None:
    _run(project, _pipeline(project, THREE_STEPS))
    out, err = capfd.readouterr()
    assert "[a] running" in out and "[c] done in" in out
    for chatter in ("Executing Cell", "Ending Cell", "Input Notebook", "without encryption"):
        assert chatter not in out + err
    assert "\n\n" not in out
