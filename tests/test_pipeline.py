"""tinylab.pipeline: papermill steps, manifest, skip/resume, --from, failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from tinylab.config.loader import ConfigError
from tinylab.layout import RunLayout
from tinylab.pipeline import StepFailed, run_pipeline, split_overrides

STEP_SOURCE = """\
from pathlib import Path
out = Path(run_dir) / f"{name}.txt"
out.parent.mkdir(parents=True, exist_ok=True)
with out.open("a") as f:
    f.write(f"{value} {overrides}\\n")
if fail:
    raise RuntimeError(f"step {name} was told to fail")
if die:
    import os
    os._exit(3)
import time
time.sleep(sleep_s)
"""


def _notebook(path: Path) -> None:
    params = nbformat.v4.new_code_cell(
        'name: str = "x"\nvalue: int = 0\nfail: bool = False\ndie: bool = False\n'
        'sleep_s: float = 0.0\nrun_dir: str = "."\noverrides: list = []',
        metadata={"tags": ["parameters"]},
    )
    nb = nbformat.v4.new_notebook(cells=[params, nbformat.v4.new_code_cell(STEP_SOURCE)])
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)


@pytest.fixture
def project(tmp_path: Path) -> dict[str, Path]:
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    _notebook(notebooks / "step.ipynb")
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


def _run(project: dict[str, Path], path: Path, **kwargs) -> dict:
    return run_pipeline(
        path, runs_dir=project["runs"], notebooks_dir=project["notebooks"], **kwargs
    )


def _lines(run_dir: Path, name: str) -> list[str]:
    return (run_dir / f"{name}.txt").read_text().splitlines()


def test_runs_steps_and_writes_manifest(project: dict[str, Path]) -> None:
    manifest = _run(project, _pipeline(project, THREE_STEPS))
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


def test_rerun_skips_finished_steps(project: dict[str, Path]) -> None:
    path = _pipeline(project, THREE_STEPS)
    _run(project, path)
    _run(project, path)
    assert _lines(project["runs"] / "p", "a") == ["1 []"]


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
    _run(project, path, from_step="b", overrides=["b.optim.lr=1", "c.seed=2"])
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
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    manifest = json.loads(RunLayout(run_dir).manifest.read_text())
    assert manifest["steps"]["b"]["status"] == "running"
    _run(project, _pipeline(project, THREE_STEPS))  # started again (b no longer sleeps)
    assert _lines(run_dir, "a") == ["1 []"]
    assert len(_lines(run_dir, "b")) == 2
    assert _lines(run_dir, "c") == ["3 []"]
