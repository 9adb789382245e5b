"""Helpers of the pipeline tests: a small step notebook, a copy of the library tree, and killing
a process with everything it started (a crash of `tinylab run` and its kernel at once)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat

import tinylab

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
PARAMETERS = (
    'name: str = "x"\nvalue: int = 0\nfail: bool = False\ndie: bool = False\n'
    'sleep_s: float = 0.0\nrun_dir: str = "."\noverrides: list = []'
)


KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}


def step_notebook(path: Path, *, imports: str = "") -> Path:
    """A notebook that appends `value overrides` to RUN/<name>.txt (then fails, dies or sleeps
    when told to), after a cell with `imports` (e.g. "import tinylab.layout") when given."""
    return write_notebook(path, PARAMETERS, *([imports] if imports else []), STEP_SOURCE)


def write_notebook(path: Path, parameters: str, *sources: str) -> Path:
    """A Python notebook at `path`: a parameters cell (papermill's tag), then a cell a source."""
    params = nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]})
    nb = nbformat.v4.new_notebook(cells=[params, *map(nbformat.v4.new_code_cell, sources)])
    nb.metadata["kernelspec"] = KERNELSPEC
    nbformat.write(nb, path)
    return path


def copy_library(root: Path) -> Path:
    """A copy of the tinylab package at root/src/tinylab; returns root/src."""
    src = root / "src"
    shutil.copytree(
        Path(tinylab.__file__).parent, src / "tinylab", ignore=shutil.ignore_patterns("__pycache__")
    )
    return src


def project_copy(root: Path, steps: str) -> Path:
    """A project at `root` that `tinylab_in` runs: a copy of the library (so root is its
    PROJECT_ROOT), notebooks/step.ipynb (importing tinylab.layout) and notebooks/cached.ipynb
    (importing tinylab.cache), and params/pipelines/p.yaml with `steps` (YAML list items)."""
    copy_library(root)
    (root / "notebooks").mkdir()
    step_notebook(root / "notebooks" / "step.ipynb", imports="import tinylab.layout")
    step_notebook(root / "notebooks" / "cached.ipynb", imports="from tinylab import cache")
    write_pipeline(root, steps)
    return root


def write_pipeline(root: Path, steps: str) -> Path:
    path = root / "params" / "pipelines" / "p.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"name: p\nsteps:\n{steps}")
    return path


def tinylab_in(root: Path, *args: str, wait: bool = True):
    """`tinylab ARGS` run from `root` on root's copy of the library (PYTHONPATH, kernels too);
    the finished process (text output), or the running Popen when not `wait`."""
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "tinylab.cli", *args]
    if not wait:
        return subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300)


def edit(path: Path, line: str = "# edited") -> None:
    """Append a line to a source file (a change of its bytes, not of its behaviour)."""
    path.write_text(path.read_text() + f"\n{line}\n")


def children(pid: int) -> list[int]:
    """The processes `pid` started that still run (from /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL `pid` and every process below it (a papermill kernel runs in a session of its own,
    so a process group is not enough). Each is stopped before its children are listed, so none
    starts another or escapes by being re-parented; then all are killed."""
    stopped, todo = [], [pid]
    while todo:
        victim = todo.pop(0)
        try:
            os.kill(victim, signal.SIGSTOP)
        except ProcessLookupError:
            continue
        stopped.append(victim)
        todo += children(victim)
    for victim in stopped:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)


def wait_for(
    predicate,
    *,
    timeout_s: float,
    what: str,
    every_s: float = 0.05,
    proc: subprocess.Popen | None = None,
    log: Path | None = None,
) -> None:
    """Poll `predicate` until it holds; fail after `timeout_s`, or as soon as `proc` (the process
    expected to make it hold) has ended, with the end of its output `log`."""
    deadline = time.monotonic() + timeout_s

    def said() -> str:
        return f"; its output ends:\n{log.read_text()[-3000:]}" if log and log.is_file() else ""

    while not predicate():
        if proc is not None and proc.poll() is not None and not predicate():
            raise AssertionError(f"{what}: the process ended (exit {proc.returncode}){said()}")
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s{said()}"
        time.sleep(every_s)
