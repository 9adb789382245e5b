"""2-process torchrun with gloo on CPU: FSDP2 training equals single-process training, and a
checkpoint written by 2 ranks resumes on 1 (and, killed during a background save, on 2); a LoRA
stage under FSDP2 equals its single-process
run; both ranks end together on a held stage lock and on a divergence. Launched through
`train_stage(nproc=2)`, the path the notebook takes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from _train_fixtures import MODEL, final_weights, new_run, stage_config, train_records
from torch.distributed.tensor import DTensor

from tinylab.config.loader import ConfigError, dump_config
from tinylab.config.model import ModelConfig
from tinylab.config.stage import ParallelConfig
from tinylab.errors import UserError
from tinylab.files import LockHeld, hold_lock
from tinylab.layout import RunLayout
from tinylab.model import build_model
from tinylab.train import run_stage, train_stage
from tinylab.train.checkpoint import list_checkpoints, read_meta
from tinylab.train.launch import launcher_world_size
from tinylab.train.parallel import init_distributed, parallelize, prepare_micro_batch, shutdown


def losses(records: list[dict]) -> list[float]:
    return [r["loss"] for r in records]


@pytest.mark.slow
def test_fsdp2_on_two_ranks_equals_one_process_and_resumes_on_one(
    tmp_path, prepared, one_thread
) -> None:
    stage = stage_config()  # 8 steps; 2 ranks x 4 micro-batches x 4 windows per step
    single = new_run(tmp_path, prepared, "single")
    run_stage(stage, single, progress=False)
    sharded = new_run(tmp_path, prepared, "sharded")
    result = train_stage(stage, sharded, nproc=2, progress=False)
    assert result.step == 8 and (result.hf_dir / "model.safetensors").is_file()

    want, got = train_records(single), train_records(sharded)
    assert [r["step"] for r in got] == list(range(1, 9))
    assert losses(got) == pytest.approx(losses(want), abs=1e-6)
    assert [r["grad_norm"] for r in got] == pytest.approx([r["grad_norm"] for r in want], abs=1e-5)
    val_lines = (sharded / "stages" / "base" / "metrics.jsonl").read_text().splitlines()
    val = [r for r in map(json.loads, val_lines) if r["kind"] == "val"]
    assert val[-1]["domains"]["english"]["windows"] == 8  # split over ranks, counted once
    for name, tensor in final_weights(single).items():
        torch.testing.assert_close(final_weights(sharded)[name], tensor, atol=1e-5, rtol=0)

    # drop the last checkpoint; resume the 2-rank step-6 checkpoint on 1 rank
    ckpts = sharded / "stages" / "base" / "checkpoints"
    assert read_meta(ckpts / "step-00000006")["world_size"] == 2
    shutil.rmtree(ckpts / "step-00000008")
    resumed = run_stage(stage, sharded, progress=False)
    assert resumed.step == 8
    assert [p.name for p in list_checkpoints(ckpts)][-1] == "step-00000008"
    again = train_records(sharded)
    assert [r["step"] for r in again] == list(range(1, 9))
    assert losses(again) == pytest.approx(losses(want), abs=1e-6)
    for name, tensor in final_weights(single).items():
        torch.testing.assert_close(final_weights(sharded)[name], tensor, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "kept_gathered",
    [{}, {"reshard_after_forward": False, "reshard_after_backward": False}],
    ids=["resharded", "kept-gathered"],
)
def test_fsdp_on_one_process_equals_the_plain_module_and_resumes_plain(
    tmp_path, prepared, one_thread, capsys, kept_gathered
) -> None:
    plain = new_run(tmp_path, prepared, "plain")
    run_stage(stage_config(), plain, progress=False)
    assert "FSDP2" not in capsys.readouterr().out
    one_rank = new_run(tmp_path, prepared, "one-rank")
    stage = stage_config(parallel={"single_process": "fsdp", **kept_gathered})
    assert run_stage(stage, one_rank, progress=False).step == 8
    assert "(1 x 8 x 4 x 32) on cpu, FSDP2" in capsys.readouterr().out
    assert not torch.distributed.is_initialized()  # the group of one is left again

    want = train_records(plain)
    assert losses(train_records(one_rank)) == pytest.approx(losses(want), abs=1e-6)
    for name, tensor in final_weights(plain).items():
        torch.testing.assert_close(final_weights(one_rank)[name], tensor, atol=1e-5, rtol=0)

    # its step-6 checkpoint (DTensor shards of one rank) resumes on the plain module
    ckpts = one_rank / "stages" / "base" / "checkpoints"
    shutil.rmtree(ckpts / "step-00000008")
    assert run_stage(stage_config(), one_rank, progress=False).step == 8
    assert losses(train_records(one_rank)) == pytest.approx(losses(want), abs=1e-6)


@pytest.mark.parametrize("reshard_after_backward", [True, False])
def test_parameters_stay_gathered_between_micro_batches_only_when_asked(
    one_thread, reshard_after_backward
) -> None:
    parallel = ParallelConfig(
        precision="fp32", single_process="fsdp", device="cpu", reshard_after_forward=False,
        reshard_after_backward=reshard_after_backward,
    )  # fmt: skip
    ctx = init_distributed(parallel)
    try:
        model = parallelize(build_model(ModelConfig(**MODEL), seed=0), parallel, ctx)
        tokens = torch.randint(0, MODEL["vocab_size"], (2, 16))

        def micro_batch(last: bool) -> list[bool]:
            prepare_micro_batch(model, parallel, last=last)
            model(input_ids=tokens, labels=tokens, use_cache=False).loss.backward()
            return [isinstance(p, DTensor) for p in model.parameters()]

        assert set(micro_batch(last=False)) == {reshard_after_backward}
        assert set(micro_batch(last=True)) == {True}  # the optimizer steps the shards
    finally:
        shutdown(ctx)


def test_indivisible_batch_fails_before_launching(tmp_path, prepared) -> None:
    run = new_run(tmp_path, prepared)
    with pytest.raises(ConfigError, match="not a multiple of micro_batch_size x seq_len x"):
        train_stage(stage_config(), run, nproc=3, progress=False)
    assert not (run / "stages").exists()


def test_launcher_world_size_is_checked_before_launching(tmp_path, prepared) -> None:
    run = new_run(tmp_path, prepared)
    launcher = [
        "srun",
        "python",
        "-m",
        "torch.distributed.run",
        "--nnodes=3",
        "--nproc-per-node",
        "1",
    ]
    with pytest.raises(ConfigError, match="not a multiple of micro_batch_size x seq_len x"):
        train_stage(stage_config(), run, launcher=launcher, progress=False)
    assert not (run / "stages").exists()


@pytest.mark.parametrize(
    ("launcher", "world"),
    [
        (["torchrun", "--nnodes=2", "--nproc-per-node=8"], 16),
        (["torchrun", "--nnodes", "4", "--nproc_per_node", "8"], 32),
    ],
)
def test_launcher_world_size(launcher: list[str], world: int) -> None:
    assert launcher_world_size(launcher) == world


def test_elastic_launcher_is_rejected() -> None:
    with pytest.raises(ConfigError, match="needs numeric --nnodes"):
        launcher_world_size(["torchrun", "--nnodes=1:4", "--nproc-per-node=8"])


@pytest.mark.slow
def test_lora_with_fsdp2_on_two_ranks_equals_one_process(tmp_path, prepared, one_thread) -> None:
    lora = stage_config(
        name="lora",
        max_tokens=3072,
        init_from={"stage": "base", "carry": ["weights", "schedule"]},
        adapter={"rank": 4, "alpha": 8},
    )
    single = new_run(tmp_path, prepared, "single")
    run_stage(stage_config(max_tokens=2048), single, progress=False)
    run_stage(lora, single, progress=False)
    sharded = new_run(tmp_path, prepared, "sharded")
    shutil.copytree(single / "stages" / "base", sharded / "stages" / "base")  # the same parent
    result = train_stage(lora, sharded, nproc=2, progress=False)
    assert read_meta(result.checkpoint)["world_size"] == 2
    assert result.trainable_params < result.total_params

    want, got = train_records(single, "lora"), train_records(sharded, "lora")
    assert [r["step"] for r in got] == [3, 4, 5]
    assert losses(got) == pytest.approx(losses(want), abs=1e-6)
    assert [r["grad_norm"] for r in got] == pytest.approx([r["grad_norm"] for r in want], abs=1e-5)
    for name, tensor in final_weights(single, "lora").items():
        torch.testing.assert_close(final_weights(sharded, "lora")[name], tensor, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_two_ranks_end_together_on_a_held_lock_and_on_a_divergence(
    tmp_path, prepared, monkeypatch
) -> None:
    run = new_run(tmp_path, prepared)
    layout = RunLayout(run).stage("base")
    config = tmp_path / "stage.yaml"
    config.write_text(dump_config(stage_config()))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node=2", "-m", "tinylab.train"]  # fmt: skip
    with hold_lock(layout.lock, "a test"):
        with pytest.raises(LockHeld, match=f"in use: pid {os.getpid()}"):  # before torchrun
            train_stage(stage_config(), run, nproc=2, progress=False)
        ranks = subprocess.run(  # rank 0 finds the lock taken; rank 1 must not wait forever
            [*torchrun, "--config", str(config), "--run-dir", str(run)],
            capture_output=True, text=True, timeout=240,
        )  # fmt: skip
    assert ranks.returncode != 0 and f"in use: pid {os.getpid()}" in ranks.stdout + ranks.stderr
    monkeypatch.setenv("TINYLAB_FAULT", "nan-at-step:5")
    with pytest.raises(UserError, match="loss = nan.*--nproc 2 --accept-change optim$"):
        train_stage(stage_config(), run, nproc=2, progress=False)  # one message, not a traceback


@pytest.mark.slow
def test_two_ranks_killed_during_a_background_save_resume_as_one_process_trains(
    tmp_path, prepared, one_thread, monkeypatch
) -> None:
    stage = stage_config()  # checkpoint.mode: async (the default)
    single = new_run(tmp_path, prepared, "single")
    run_stage(stage, single, progress=False)
    sharded = new_run(tmp_path, prepared, "sharded")
    ckpts = sharded / "stages" / "base" / "checkpoints"
    # each rank's writer holds step 6's save before its commit; both ranks die at step 7
    monkeypatch.setenv("TINYLAB_FAULT", "hang-in-save:6,kill-after-log:7")
    with pytest.raises(RuntimeError, match="SIGKILL"):
        train_stage(stage, sharded, nproc=2, progress=False)
    assert [p.name for p in list_checkpoints(ckpts)] == ["step-00000003"]
    assert (ckpts / "step-00000006.tmp").is_dir()  # the shards of the save that was in flight
    monkeypatch.setenv("TINYLAB_FAULT", "")
    assert train_stage(stage, sharded, nproc=2, progress=False).step == 8  # from step 3
    assert not list(ckpts.glob("*.tmp"))
    assert read_meta(ckpts / "step-00000008")["world_size"] == 2
    want, got = train_records(single), train_records(sharded)
    assert [r["step"] for r in got] == list(range(1, 9))
    assert losses(got) == pytest.approx(losses(want), abs=1e-6)
    for name, tensor in final_weights(single).items():
        torch.testing.assert_close(final_weights(sharded)[name], tensor, atol=1e-5, rtol=0)
