"""Exact resume: a run killed with SIGKILL at several points (after a step, after its metrics
line, in the middle of a checkpoint save) and resumed each time ends bitwise identical to an
uninterrupted run, with one metrics line per step."""

from __future__ import annotations

import signal

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


@pytest.mark.slow
def test_sigkill_at_any_point_then_resume_is_bitwise_identical(tmp_path, prepared) -> None:
    config = tmp_path / "stage.yaml"
    config.write_text(dump_config(stage_config()))  # 8 steps, checkpoints at 3, 6 and 8
    reference = new_run(tmp_path, prepared, "reference")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses (OMP_NUM_THREADS=1): the same kernels
    try:
        run_stage(stage_config(), reference, progress=False)
    finally:
        torch.set_num_threads(threads)

    killed = new_run(tmp_path, prepared, "killed")
    ckpts = killed / "stages" / "base" / "checkpoints"
    for fault, survivors in [
        ("kill-after-step:2", []),  # before any checkpoint: starts over
        ("kill-in-save:6", ["step-00000003"]),  # shards written, not yet renamed
        ("kill-after-log:7", ["step-00000003", "step-00000006"]),  # metrics line 7 is dropped
    ]:
        proc = run_module(config, killed, fault=fault)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
        assert [p.name for p in list_checkpoints(ckpts)] == survivors
    assert (ckpts / "step-00000006.tmp").exists() is False  # the torn save was cleaned up
    proc = run_module(config, killed)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resuming from step-00000006" in proc.stdout + proc.stderr

    records = train_records(killed)
    assert [r["step"] for r in records] == list(range(1, 9))  # no duplicates, none missing
    assert curve(records) == curve(train_records(reference))  # exact floats
    want, got = final_weights(reference), final_weights(killed)
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(want[name], got[name]), name
