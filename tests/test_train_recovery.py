"""A stage folder stays usable after every failure: a damaged newest checkpoint (the resume
falls back to the newest whole one, nothing of the old run touched before the load), a fresh
start killed before its first checkpoint (the old outputs come back), a second training of the
same stage (refused, naming the holder), a divergence (the message's command resumes with a
lower LR, recorded as a deliberate change), a full disk or a read-only folder during a save
(one message, the previous checkpoint intact), temp files of killed processes (removed), and the
stage's wall time across resumes."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint.filesystem as dcp_filesystem
from _cli import tinylab
from _train_fixtures import curve, final_weights, new_run, run_module, stage_config, train_records

from tinylab.config.loader import ConfigError, dump_config
from tinylab.errors import UserError
from tinylab.files import LockHeld, hold_lock
from tinylab.layout import RunLayout, StageResult, read_metrics
from tinylab.train import NonFiniteLossError, run_stage
from tinylab.train.checkpoint import CheckpointError, list_checkpoints, read_meta

pytestmark = pytest.mark.usefixtures("one_thread")


def stage_dir(run: Path) -> RunLayout:
    return RunLayout(run).stage("base")


def shard(checkpoint: Path) -> Path:
    (found,) = checkpoint.glob("*.distcp")
    return found


@pytest.fixture
def reference(tmp_path, prepared) -> Path:
    """An uninterrupted 8-step run (checkpoints 6 and 8 kept)."""
    run = new_run(tmp_path, prepared, "reference")
    run_stage(stage_config(), run, progress=False)
    return run


# ---------------------------------------------------------------------------------------------
# A damaged newest checkpoint


@pytest.mark.parametrize(
    "hurt",
    [
        lambda ckpt: shard(ckpt).write_bytes(shard(ckpt).read_bytes()[:1000]),  # truncated
        lambda ckpt: shard(ckpt).write_bytes(bytes(shard(ckpt).stat().st_size)),  # zeroed
        lambda ckpt: (ckpt / "meta.json").write_text("{not json"),
    ],
    ids=["truncated-shard", "same-size-garbage-shard", "corrupt-meta"],
)
def test_resume_falls_back_over_a_damaged_newest_checkpoint(
    tmp_path, prepared, reference, hurt, capsys
) -> None:
    run = new_run(tmp_path, prepared)
    run_stage(stage_config(max_tokens=7168), run, progress=False)  # 7 steps: checkpoints 6, 7
    hurt(stage_dir(run).checkpoints / "step-00000007")
    capsys.readouterr()
    result = run_stage(stage_config(), run, progress=False)  # 8 steps: resumes from 6
    out = capsys.readouterr()
    assert "warning: skipped checkpoint step-00000007, not whole" in out.out + out.err
    assert "resuming from step-00000006" in out.out + out.err
    assert result.step == 8
    assert curve(train_records(run)) == curve(train_records(reference))
    want, got = final_weights(reference), final_weights(run)
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_no_whole_checkpoint_is_one_message_and_leaves_the_folder_as_it_was(
    tmp_path, prepared
) -> None:
    run = new_run(tmp_path, prepared)
    run_stage(stage_config(max_tokens=7168), run, progress=False)
    layout = stage_dir(run)
    before = {p: p.read_bytes() for p in (layout.result, layout.resolved, layout.metrics)}
    for checkpoint in list_checkpoints(layout.checkpoints):
        shard(checkpoint).write_bytes(bytes(shard(checkpoint).stat().st_size))
    with pytest.raises(CheckpointError, match="no whole checkpoint to resume from.*does not load"):
        run_stage(stage_config(), run, progress=False)
    assert {p: p.read_bytes() for p in before} == before  # result.json is still there


def test_a_corrupt_meta_json_is_named(tmp_path) -> None:
    folder = tmp_path / "step-00000003"
    folder.mkdir()
    (folder / "meta.json").write_bytes(b"\xff\xfe binary")
    with pytest.raises(CheckpointError, match=rf"{folder / 'meta.json'}: not a readable"):
        read_meta(folder)


# ---------------------------------------------------------------------------------------------
# A fresh start


def test_fresh_killed_before_its_first_checkpoint_gives_the_old_outputs_back(
    tmp_path, prepared
) -> None:
    run = new_run(tmp_path, prepared)
    config = tmp_path / "stage.yaml"
    config.write_text(dump_config(stage_config(max_tokens=7168)))
    assert run_module(config, run).returncode == 0
    layout = stage_dir(run)
    old = {p.name: p.read_bytes() for p in (layout.result, layout.metrics, layout.resolved)}
    old_ckpts = [p.name for p in list_checkpoints(layout.checkpoints)]

    proc = run_module(config, run, fault="kill-after-step:2", extra=("--no-resume",))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert layout.previous.is_dir() and not layout.result.exists()  # set aside, not deleted

    proc = run_module(config, run)  # the next start puts them back and resumes the old run
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resuming from step-00000007" in proc.stdout + proc.stderr
    assert not layout.previous.exists()
    assert [p.name for p in list_checkpoints(layout.checkpoints)] == old_ckpts
    assert layout.metrics.read_bytes() == old[layout.metrics.name]
    assert layout.resolved.read_bytes() == old[layout.resolved.name]


def test_fresh_drops_the_old_outputs_at_its_first_checkpoint_or_at_once_with_discard(
    tmp_path, prepared
) -> None:
    run = new_run(tmp_path, prepared)
    config = tmp_path / "stage.yaml"  # saves that training waits for: step 3's is in place at 5
    config.write_text(dump_config(stage_config(max_tokens=7168, checkpoint={"mode": "sync"})))
    assert run_module(config, run).returncode == 0
    layout = stage_dir(run)
    proc = run_module(config, run, fault="kill-after-step:5", extra=("--no-resume",))
    assert proc.returncode == -signal.SIGKILL
    assert not layout.previous.exists()  # the new run saved step 3: the old outputs are gone
    assert [p.name for p in list_checkpoints(layout.checkpoints)] == ["step-00000003"]
    assert [r["step"] for r in train_records(run)] == [1, 2, 3, 4]  # killed before line 5

    proc = run_module(config, run, fault="kill-after-step:1", extra=("--no-resume", "--discard"))
    assert proc.returncode == -signal.SIGKILL
    assert not layout.previous.exists() and list_checkpoints(layout.checkpoints) == []


def test_discard_without_fresh_exits_2(tmp_path, monkeypatch, capsys) -> None:
    config = tmp_path / "stage.yaml"
    config.write_text(dump_config(stage_config()))
    assert tinylab(monkeypatch, "train", str(config), "--run-dir", str(tmp_path), "--discard") == 2
    assert "use it with --fresh" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# One training per stage folder


def test_a_second_training_of_the_stage_exits_2_naming_the_holder(tmp_path, prepared) -> None:
    run = new_run(tmp_path, prepared)
    config = tmp_path / "stage.yaml"
    config.write_text(dump_config(stage_config()))
    layout = stage_dir(run)
    with hold_lock(layout.lock, "a test"):
        proc = run_module(config, run)
        with pytest.raises(LockHeld, match=rf"stage folder .* is in use: pid {os.getpid()} on "):
            run_stage(stage_config(), run, progress=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert f"is in use: pid {os.getpid()} on " in line and "since 20" in line
    assert "Traceback" not in proc.stderr and not layout.metrics.exists()


def test_a_folder_without_locks_is_one_message(tmp_path, monkeypatch) -> None:
    def no_locks(*args):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    locking = hold_lock(tmp_path / ".lock", "a stage")
    with pytest.raises(UserError, match=r"cannot lock .*\.lock \(No locks available\): a stage"):
        locking.__enter__()


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path, prepared) -> None:
    run = new_run(tmp_path, prepared)
    config = tmp_path / "stage.yaml"
    config.write_text(dump_config(stage_config(max_tokens=4096)))
    proc = run_module(config, run, fault="kill-after-step:2")  # dies holding the lock
    assert proc.returncode == -signal.SIGKILL
    assert '"pid"' in stage_dir(run).lock.read_text()  # its record stays; the flock is gone
    assert run_stage(stage_config(max_tokens=4096), run, progress=False).step == 4


# ---------------------------------------------------------------------------------------------
# A divergence


def test_the_divergence_message_names_a_command_that_resumes_with_a_lower_lr(
    tmp_path, prepared, monkeypatch, capsys
) -> None:
    run = new_run(tmp_path, prepared)
    config = tmp_path / "stage.yaml"
    config.write_text(dump_config(stage_config()))
    monkeypatch.setenv("TINYLAB_FAULT", "nan-at-step:5")
    assert tinylab(monkeypatch, "train", str(config), "--run-dir", str(run)) == 2
    err = capsys.readouterr().err
    assert "loss = nan" in err and "Traceback" not in err
    command = shlex.split(err.split("lower learning rate (or check the data first): ")[1])
    assert command[:2] == ["tinylab", "train"] and "--accept-change" in command

    monkeypatch.setenv("TINYLAB_FAULT", "")
    assert tinylab(monkeypatch, *command[1:]) == 0, capsys.readouterr().err
    layout = stage_dir(run)
    change = {"step": 3, "changes": {"optim.lr": [0.01, 0.005]}}
    assert read_meta(layout.checkpoints / "step-00000008")["recipe_changes"] == [change]
    assert StageResult.read(layout.root).recipe_changes == [change]
    (record,) = read_metrics(layout.metrics, "change")
    assert (record["step"], record["changes"]) == (3, change["changes"])
    lrs = {r["step"]: r["lr"] for r in train_records(run)}
    assert list(lrs) == list(range(1, 9)) and lrs[4] < lrs[3]  # the new peak from step 4

    # resumed again under the same params: no second change, the first one still recorded
    assert tinylab(monkeypatch, *command[1:5]) == 0
    assert StageResult.read(layout.root).recipe_changes == [change]
    assert len(read_metrics(layout.metrics, "change")) == 1


def test_only_some_fields_may_change_on_purpose(tmp_path, prepared) -> None:
    run = new_run(tmp_path, prepared)
    run_stage(stage_config(max_tokens=3072), run, progress=False)
    with pytest.raises(ConfigError, match="a resume may change only optim, schedule"):
        run_stage(stage_config(seed=5), run, accept=["seed"], progress=False)
    with pytest.raises(ConfigError, match=r"\(schedule changed since\).*--accept-change"):
        changed = stage_config(optim={"lr": 5e-3}, schedule={"warmup_tokens": 0})
        run_stage(changed, run, accept=["optim"], progress=False)


def test_nan_before_any_checkpoint_names_a_fresh_start(tmp_path, prepared, monkeypatch) -> None:
    monkeypatch.setenv("TINYLAB_FAULT", "nan-at-step:2")
    with pytest.raises(NonFiniteLossError, match=r"none \(nothing saved yet\).*--fresh$"):
        run_stage(stage_config(), new_run(tmp_path, prepared), progress=False)


# ---------------------------------------------------------------------------------------------
# A full disk, a read-only folder


def test_a_full_disk_during_a_save_is_one_message_and_keeps_the_last_checkpoint(
    tmp_path, prepared, monkeypatch
) -> None:
    run = new_run(tmp_path, prepared)
    run_stage(stage_config(max_tokens=3072), run, progress=False)  # step-00000003

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(dcp_filesystem, "_write_item", no_space)
    with pytest.raises(CheckpointError) as err:
        run_stage(stage_config(), run, progress=False)
    layout = stage_dir(run)
    assert f"into {layout.checkpoints} failed: no space left on device" in str(err.value)
    assert [p.name for p in layout.checkpoints.iterdir() if p.name.startswith("step")] == [
        "step-00000003"
    ]  # the .tmp is gone
    monkeypatch.undo()
    assert run_stage(stage_config(), run, progress=False).step == 8


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs (root only; skipped elsewhere): room for one checkpoint, not two."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
                          capture_output=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_really_full_disk(small_disk, prepared) -> None:
    run = new_run(small_disk, prepared)
    stage = stage_config(checkpoint={"every_steps": 3, "keep_last": 5}, export_hf=False)
    with pytest.raises(CheckpointError, match="failed: no space left on device") as err:
        run_stage(stage, run, progress=False)
    layout = stage_dir(run)
    saved = [p.name for p in list_checkpoints(layout.checkpoints)]
    assert saved and str(layout.checkpoints) in str(err.value)
    assert not list(layout.checkpoints.glob("*.tmp"))
    last = int(saved[-1][len("step-") :])
    assert run_stage(stage_config(max_tokens=1024 * last), run, progress=False).step == last


def test_a_read_only_stage_folder_is_one_message(tmp_path, prepared) -> None:
    run = new_run(tmp_path, prepared)
    run_stage(stage_config(max_tokens=3072), run, progress=False)
    layout = stage_dir(run)
    layout.lock.unlink()
    done = subprocess.run(["mount", "--bind", "-o", "ro", str(layout.root), str(layout.root)],
                          capture_output=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount read-only here: {done.stderr.decode().strip()}")
    try:
        with pytest.raises(UserError) as err:
            run_stage(stage_config(), run, progress=False)
    finally:
        subprocess.run(["umount", str(layout.root)], check=True)
    assert f"cannot write to {layout.root} (Read-only file system)" in str(err.value)


# ---------------------------------------------------------------------------------------------
# What killed processes leave behind; the stage's wall time


def test_temp_files_of_killed_processes_are_removed_at_the_next_start(tmp_path, prepared) -> None:
    run = new_run(tmp_path, prepared)
    run_stage(stage_config(max_tokens=3072), run, progress=False)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    layout = stage_dir(run)
    orphans = [
        layout.checkpoints / f".latest.tmp-{dead}",
        layout.root / f".metrics.jsonl.tmp-{dead}",
    ]
    alive = layout.root / f".result.json.tmp-{os.getppid()}"  # a live writer's: kept
    for path in (*orphans, alive):
        path.write_text("torn")
    run_stage(stage_config(max_tokens=4096), run, progress=False)
    assert not any(p.exists() for p in orphans) and alive.exists()


def test_wall_s_counts_every_process_of_the_stage(tmp_path, prepared, monkeypatch) -> None:
    run = new_run(tmp_path, prepared)
    monkeypatch.setenv("TINYLAB_FAULT", "nan-at-step:8")  # stops after checkpoint 6
    with pytest.raises(NonFiniteLossError):
        run_stage(stage_config(), run, progress=False)
    first = read_meta(stage_dir(run).checkpoints / "step-00000006")["wall_s"]
    monkeypatch.setenv("TINYLAB_FAULT", "")
    tick = time.perf_counter()
    result = run_stage(stage_config(), run, progress=False)
    second = time.perf_counter() - tick
    assert first > 0 and result.wall_s > second and result.wall_s >= first
    assert json.loads(stage_dir(run).result.read_text())["wall_s"] == result.wall_s
