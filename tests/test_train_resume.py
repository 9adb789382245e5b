"""Exact resume: a run killed with SIGKILL at several points (after a step, after its metrics
line, in the middle of a checkpoint save; with a background save in flight) and resumed each
time ends bitwise identical to an uninterrupted run, with one metrics line per step."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch
from _train_fixtures import (
    curve,
    final_weights,
    new_run,
    run_module,
    stage_config,
    train_records,
)

from tinylab.config.loader import dump_config
from tinylab.train import run_stage
from tinylab.train.checkpoint import list_checkpoints


@pytest.fixture(scope="module")
def reference(tmp_path_factory, prepared) -> Path:
    """An uninterrupted run of the tiny stage (8 steps, checkpoints at 3, 6 and 8)."""
    run = new_run(tmp_path_factory.mktemp("reference"), prepared, "reference")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses (OMP_NUM_THREADS=1): the same kernels
    try:
        run_stage(stage_config(), run, progress=False)
    finally:
        torch.set_num_threads(threads)
    return run


def kill_and_resume(config: Path, killed: Path, faults: list[tuple[str, list[str]]]) -> str:
    """Run the stage under each fault (each one SIGKILLs it, leaving `survivors` whole), then
    to the end; the last run's output."""
    ckpts = killed / "stages" / "base" / "checkpoints"
    for fault, survivors in faults:
        proc = run_module(config, killed, fault=fault)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
        assert [p.name for p in list_checkpoints(ckpts)] == survivors
    proc = run_module(config, killed)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not list(ckpts.glob("*.tmp"))  # the torn saves were cleaned up
    return proc.stdout + proc.stderr


def assert_identical(reference: Path, killed: Path) -> None:
    records = train_records(killed)
    assert [r["step"] for r in records] == list(range(1, 9))  # no duplicates, none missing
    assert curve(records) == curve(train_records(reference))  # exact floats
    want, got = final_weights(reference), final_weights(killed)
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(want[name], got[name]), name


@pytest.mark.slow
def test_sigkill_at_any_point_then_resume_is_bitwise_identical(tmp_path, prepared, reference):
    config = tmp_path / "stage.yaml"  # saves that training waits for: the kills land between
    config.write_text(dump_config(stage_config(checkpoint={"mode": "sync"})))
    killed = new_run(tmp_path, prepared, "killed")
    out = kill_and_resume(config, killed, [
        ("kill-after-step:2", []),  # before any checkpoint: starts over
        ("kill-in-save:6", ["step-00000003"]),  # shards written, not yet renamed
        ("kill-after-log:7", ["step-00000003", "step-00000006"]),  # metrics line 7 is dropped
    ])  # fmt: skip
    assert "resuming from step-00000006" in out
    assert_identical(reference, killed)


@pytest.mark.slow
def test_sigkill_during_a_background_save_then_resume_is_bitwise_identical(
    tmp_path, prepared, reference
) -> None:
    config = tmp_path / "stage.yaml"
    config.write_text(dump_config(stage_config()))  # checkpoint.mode: async (the default)
    killed = new_run(tmp_path, prepared, "killed")
    # step 6's save is still being written (held before its commit) when step 7 is killed
    out = kill_and_resume(config, killed, [("hang-in-save:6,kill-after-log:7", ["step-00000003"])])
    assert "resuming from step-00000003" in out
    assert_identical(reference, killed)
