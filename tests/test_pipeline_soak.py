"""The pipeline-level kill soak: `tinylab run` of a tiny real pipeline (the four notebooks:
prepare, train, evaluate, report) killed with SIGKILL, together with its kernel, once inside each
kind of step, and run again each time; the finished run folder equals an uninterrupted run's
(data, metrics, weights, eval JSON and samples, figures' names; timings removed).

Each kill comes at a reproducible point: when a file appears that only that step writes, part
way through it (prepare: the trained tokenizer, before any shard; training: `latest` naming the
checkpoint of step 4 of 8; evaluation: the samples of its first task of two; the report: its
first figure of five). The test polls for it every 20 ms, then stops the run process and all it
started (the kernel runs in a session of its own) and SIGKILLs them, as a machine crash would.

    python -m pytest -q tests/test_pipeline_soak.py -m slow -s
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from _evaluate_fixtures import arc_task
from _pipeline_fixtures import kill_tree, wait_for
from _train_fixtures import DATA, STAGE, write_corpora

from tinylab.files import sha256_file
from tinylab.layout import RunLayout

pytestmark = pytest.mark.slow

# measured, not computed: wall-clock times, rates and the process's peak memory
MEASURED = {"seconds", "wall_s", "items_per_s", "tokens_per_s", "step_s", "mfu", "peak_mem_bytes"}


def _project(root: Path) -> Path:
    """The tiny corpora, data, stage and eval params, and a four-step pipeline; its path."""
    write_corpora(root)
    data = {**DATA, "sources": {n: {**s, "paths": [str(root / p) for p in s["paths"]]}
                                for n, s in DATA["sources"].items()}}  # fmt: skip
    stage = {**STAGE, "data": data, "checkpoint": {"every_steps": 2, "keep_last": 2}}
    tasks = arc_task(root / "tasks")
    arc_task(tasks, name="local_arc_2")
    files = {
        "data.yaml": data,
        "stage.yaml": stage,
        "eval.yaml": {
            "tasks": [
                {"name": "local_arc_easy", "metric": "acc_norm", "chance": 0.25},
                {"name": "local_arc_2", "metric": "acc"},
            ],
            "include_path": str(tasks),
            "batch_size": 8,
            "device": "cpu",
            "perplexity_max_windows": 4,
        },
    }
    for name, content in files.items():
        (root / name).write_text(yaml.safe_dump(content))
    steps = [
        {"name": "prepare", "notebook": "01_prepare_data",
         "params": {"data_params": str(root / "data.yaml"), "progress": False}},
        {"name": "base", "notebook": "02_train_stage",
         "params": {"stage_params": str(root / "stage.yaml")}, "after": ["prepare"]},
        {"name": "eval-base", "notebook": "03_evaluate",
         "params": {"stage": "base", "eval_params": str(root / "eval.yaml")}, "after": ["base"]},
        {"name": "report", "notebook": "04_report", "after": ["eval-base"], "html": "report.html"},
    ]  # fmt: skip
    pipeline = root / "soak.yaml"
    pipeline.write_text(yaml.safe_dump({"name": "soak", "steps": steps}, sort_keys=False))
    return pipeline


def _start(pipeline: Path, runs: Path, log: Path) -> subprocess.Popen:
    """`tinylab run` (run_pipeline in a process of its own) on one thread, as the CLI runs it;
    its output into `log` (readable while it runs)."""
    script = (
        "import sys; from pathlib import Path; from tinylab.pipeline import run_pipeline; "
        f"print(run_pipeline(Path({str(pipeline)!r}), runs_dir=Path({str(runs)!r})).summary())"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1"}
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, "-c", script], env=env, stdout=out,
                                stderr=subprocess.STDOUT, text=True)  # fmt: skip


def _finish(proc: subprocess.Popen, log: Path) -> str:
    proc.wait(timeout=600)
    out = log.read_text()
    assert proc.returncode == 0, out[-3000:]
    return out.strip().splitlines()[-1]


def _read(path: Path) -> str | None:
    return path.read_text() if path.is_file() else None


def _step_status(run_dir: Path, step: str) -> str | None:
    path = RunLayout(run_dir).manifest
    steps = json.loads(path.read_text())["steps"] if path.is_file() else {}
    return steps.get(step, {}).get("status")


def _computed(value, run_dir: Path):
    """`value` (parsed JSON) without MEASURED keys, the run folder's path written as RUN."""
    if isinstance(value, dict):
        return {k: _computed(v, run_dir) for k, v in value.items() if k not in MEASURED}
    if isinstance(value, list):
        return [_computed(v, run_dir) for v in value]
    return value.replace(str(run_dir), "RUN") if isinstance(value, str) else value


def _files(run_dir: Path) -> list[str]:
    """Every file of a run folder but the executed notebooks and the two locks."""
    names = [p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()]
    skip = ("notebooks/", ".run.lock", ".manifest.lock")
    return sorted(name for name in names if not name.startswith(skip))


def _contents(run_dir: Path) -> dict[str, object]:
    """What an interruption must not change: the bytes of data, weights and samples, the records
    of metrics, stage result and evaluation (MEASURED values aside), each step's status and
    fingerprint."""
    found: dict[str, object] = {}
    for name in _files(run_dir):
        path = run_dir / name
        if name == "data/.verified.json":  # which shard states were verified: mtimes
            continue
        if name.startswith("data/") or name.endswith((".safetensors", ".samples.jsonl")):
            found[name] = sha256_file(path)
        elif name.endswith(".jsonl"):
            found[name] = [_computed(json.loads(x), run_dir) for x in path.read_text().splitlines()]
        elif name.endswith(".json") and name.startswith(("eval/", "stages/base/result")):
            found[name] = _computed(json.loads(path.read_text()), run_dir)
    steps = json.loads(RunLayout(run_dir).manifest.read_text())["steps"]
    found["manifest steps"] = {n: (s["status"], s["code"]) for n, s in steps.items()}
    return found


def test_a_run_killed_in_every_kind_of_step_ends_as_an_uninterrupted_one(tmp_path: Path) -> None:
    pipeline = _project(tmp_path)
    started = time.monotonic()
    logs = tmp_path / "logs"
    logs.mkdir()
    # beside the killed runs, one thread each
    uninterrupted = _start(pipeline, tmp_path / "reference", logs / "reference.txt")
    run_dir = tmp_path / "runs" / "soak"
    run = RunLayout(run_dir)
    kills = {
        "prepare": lambda: (run.data / "tokenizer").is_dir(),
        "base": lambda: _read(run.stage("base").checkpoints / "latest") == "step-00000004\n",
        "eval-base": lambda: run.eval_samples("base").is_file(),
        "report": lambda: any(run.figures.glob("*.png")),
    }
    timings = {}
    for step, marker in kills.items():
        begun = time.monotonic()
        log = logs / f"killed in {step}.txt"
        proc = _start(pipeline, run_dir.parent, log)
        wait_for(marker, timeout_s=300, what=f"{step} under way", every_s=0.02, proc=proc, log=log)
        kill_tree(proc.pid)
        proc.wait()
        timings[f"run killed in {step}"] = time.monotonic() - begun
        assert _step_status(run_dir, step) == "running", f"{step} was not killed inside"
    begun = time.monotonic()
    summary = _finish(_start(pipeline, run_dir.parent, logs / "last.txt"), logs / "last.txt")
    timings["run to the end"] = time.monotonic() - begun
    print(f"uninterrupted: {_finish(uninterrupted, logs / 'reference.txt')}\n"
          f"interrupted, last run: {summary}")  # fmt: skip
    timings["all"] = time.monotonic() - started
    print("\n".join(f"{name}: {seconds:.1f} s" for name, seconds in timings.items()))
    assert summary.endswith(": 1 step ran (report); 3 skipped (3 same fingerprint)")
    reference = tmp_path / "reference" / "soak"
    assert _files(run_dir) == _files(reference)  # e.g. no temporary file left by a kill
    assert _contents(run_dir) == _contents(reference)
