"""CheckpointWriter: a background save writes the state as it was when the save was called,
commits only after its shards are written (keep-last too), leaves the checkpoints before it
whole when it fails at any point, and its failure reaches the training process; the stage loop
saves in the background by default and matches a synchronous run bit for bit."""

from __future__ import annotations

import copy
import errno
import os
import threading
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
import torch.distributed.checkpoint.filesystem as dcp_filesystem
from _train_fixtures import MODEL, curve, final_weights, new_run, stage_config, train_records
from torch import nn

import tinylab.train.checkpoint as checkpoint
from tinylab.config.model import ModelConfig
from tinylab.config.stage import CheckpointConfig
from tinylab.train import run_stage
from tinylab.train.checkpoint import (
    LATEST,
    CheckpointError,
    CheckpointWriter,
    TrainState,
    list_checkpoints,
    load_checkpoint,
    read_meta,
    remove_partial,
)
from tinylab.train.parallel import Distributed

ALONE = Distributed(0, 1, 0, torch.device("cpu"), None)
MODEL_CFG = ModelConfig.model_validate(MODEL)  # recorded in meta.json only


def net(outputs: int = 2) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A small module with AdamW state (one step taken); other `outputs`: the same keys with
    other shapes (and another init)."""
    torch.manual_seed(2 - outputs)
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, outputs))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    train(model, optimizer)
    return model, optimizer


def train(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    model(torch.ones(3, 4)).square().sum().backward()
    optimizer.step()
    optimizer.zero_grad()


def save(writer: CheckpointWriter, model, optimizer, step: int, **kwargs) -> Path:
    return writer.save(model=model, optimizer=optimizer, state=TrainState(step=step),
                       model_cfg=MODEL_CFG, finished=False, **kwargs)  # fmt: skip


def names(folder: Path) -> list[str]:
    return [p.name for p in list_checkpoints(folder)]


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture
def gate(monkeypatch):
    """DCP's save held at its start until `gate.set()` (the training goes on meanwhile)."""
    opened = threading.Event()
    real = dcp.save

    def held(*args, **kwargs):
        assert opened.wait(30), "the test never opened the gate"
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoint.dcp, "save", held)
    return opened


def test_a_background_save_writes_the_state_of_its_call(tmp_path, gate) -> None:
    model, optimizer = net()
    want = weights(model)
    with CheckpointWriter(tmp_path, ctx=ALONE, keep_last=2, background=True) as writer:
        path = save(writer, model, optimizer, 1)
        train(model, optimizer)  # the training goes on while the save waits at the gate
        assert names(tmp_path) == [] and (tmp_path / "step-00000001.tmp").is_dir()
        gate.set()
    assert names(tmp_path) == ["step-00000001"] and path == tmp_path / "step-00000001"
    fresh, fresh_optimizer = net()
    load_checkpoint(path, model=fresh, optimizer=fresh_optimizer, ctx=ALONE)
    assert all(torch.equal(fresh.state_dict()[k], want[k]) for k in want)
    assert not all(torch.equal(model.state_dict()[k], want[k]) for k in want)


def test_background_and_sync_saves_write_the_same_checkpoint(tmp_path) -> None:
    model, optimizer = net()
    for mode in ("sync", "async"):
        with CheckpointWriter(tmp_path / mode, ctx=ALONE, keep_last=2,
                              background=mode == "async") as writer:  # fmt: skip
            save(writer, model, optimizer, 3, extra_meta={"wall_s": 1.0})
    sync, background = tmp_path / "sync" / "step-00000003", tmp_path / "async" / "step-00000003"
    assert read_meta(sync) == read_meta(background)
    loaded = []
    for path in (sync, background):
        fresh, fresh_optimizer = net()
        load_checkpoint(path, model=fresh, optimizer=fresh_optimizer, ctx=ALONE)
        loaded.append((fresh.state_dict(), fresh_optimizer.state_dict()["state"]))
    (m1, o1), (m2, o2) = loaded
    assert all(torch.equal(m1[k], m2[k]) for k in m1)
    assert all(torch.equal(o1[i][k], o2[i][k]) for i in o1 for k in o1[i])


def test_keep_last_prunes_only_after_the_commit(tmp_path, gate) -> None:
    model, optimizer = net()
    gate.set()
    seen = []  # what on_commit finds in place each time
    writer = CheckpointWriter(tmp_path, ctx=ALONE, keep_last=2, background=True,
                              on_commit=lambda: seen.append(names(tmp_path)))  # fmt: skip
    with writer:
        for step in (1, 2, 3):
            save(writer, model, optimizer, step)
        writer.wait()
        assert names(tmp_path) == ["step-00000002", "step-00000003"]
        gate.clear()
        save(writer, model, optimizer, 4)  # in flight: the two before it stay
        assert names(tmp_path) == ["step-00000002", "step-00000003"]
        assert (tmp_path / LATEST).read_text().strip() == "step-00000003"
        gate.set()
    assert names(tmp_path) == ["step-00000003", "step-00000004"]
    assert (tmp_path / LATEST).read_text().strip() == "step-00000004"
    assert [found[-1] for found in seen] == [f"step-{i:08d}" for i in (1, 2, 3, 4)]


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _bug(*args, **kwargs):
    raise RuntimeError("a bug in the commit")


# Where a background save can break, and the checkpoints it leaves: writing the RNG file (before
# the save returns: it fails there), a shard, after the shards (before the commit), writing
# meta.json, the rename, `latest` (after the rename: the new checkpoint is whole and in place,
# `latest` still names the one before).
POINTS = {
    "rng": (lambda patch: patch.setattr(Path, "write_bytes", _no_space), 2),
    "shard": (lambda patch: patch.setattr(dcp_filesystem, "_write_item", _no_space), 2),
    "before-commit": (lambda patch: None, 2),  # the save's before_commit hook raises
    "meta": (lambda patch: patch.setattr(Path, "write_text", _no_space), 2),
    "rename": (lambda patch: patch.setattr(Path, "rename", _no_space), 2),
    "latest": (lambda patch: patch.setattr(checkpoint, "_write_latest", _no_space), 3),
}


@pytest.mark.parametrize("point", POINTS)
def test_a_background_save_that_fails_leaves_the_checkpoints_before_it(
    tmp_path, monkeypatch, point
) -> None:
    model, optimizer = net()
    with CheckpointWriter(tmp_path, ctx=ALONE, keep_last=3, background=True) as writer:
        save(writer, model, optimizer, 1)
        save(writer, model, optimizer, 2)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    breaks, newest = POINTS[point]
    hook = _no_space if point == "before-commit" else None
    failed = pytest.raises(CheckpointError, match="no space left on device.*step-00000003.tmp")
    writer = CheckpointWriter(tmp_path, ctx=ALONE, keep_last=3, background=True)
    with failed, writer, monkeypatch.context() as patch:
        breaks(patch)
        save(writer, model, optimizer, 3, before_commit=hook)
        train(model, optimizer)  # the training goes on; the failure comes at the next save
        save(writer, model, optimizer, 4)
    assert names(tmp_path) == [f"step-{i:08d}" for i in range(1, newest + 1)]
    assert not list(tmp_path.glob("*.tmp"))
    assert (tmp_path / LATEST).read_text().strip() == "step-00000002"
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert {p: b for p, b in after.items() if "step-00000003" not in str(p)} == before


def test_a_bug_in_the_writer_keeps_its_traceback(tmp_path) -> None:
    model, optimizer = net()
    failed = pytest.raises(RuntimeError, match="a bug in the commit")
    with failed, CheckpointWriter(tmp_path, ctx=ALONE, keep_last=2, background=True) as writer:
        save(writer, model, optimizer, 1, before_commit=_bug)
    assert names(tmp_path) == [] and not list(tmp_path.glob("*.tmp"))


def test_an_error_in_training_lets_the_save_in_flight_commit(tmp_path, gate) -> None:
    model, optimizer = net()
    failed = pytest.raises(ValueError, match="the training broke")
    with failed, CheckpointWriter(tmp_path, ctx=ALONE, keep_last=2, background=True) as writer:
        save(writer, model, optimizer, 5)
        gate.set()
        raise ValueError("the training broke")
    assert names(tmp_path) == ["step-00000005"]


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_a_save_killed_before_its_commit_is_ignored_and_removed(tmp_path) -> None:
    """What SIGKILL leaves at each point of a background save: nothing yet, the RNG file, the
    shards; the newest whole checkpoint is the one before, and the next start removes the rest."""
    model, optimizer = net()
    with CheckpointWriter(tmp_path, ctx=ALONE, keep_last=2, background=True) as writer:
        save(writer, model, optimizer, 1)
    torn = tmp_path / "step-00000002.tmp"
    for leave in ("folder", "rng", "shards"):
        torn.mkdir()
        if leave != "folder":
            torch.save(checkpoint.rng_state(), torn / "rng-00000.pt")
        if leave == "shards":
            dcp.save({"model": model.state_dict()}, checkpoint_id=torn, no_dist=True)
        assert names(tmp_path) == ["step-00000001"]
        remove_partial(tmp_path)
        assert not torn.exists()


def test_the_stage_saves_in_the_background_and_matches_a_sync_run(
    tmp_path, prepared, one_thread
) -> None:
    runs = {}
    for mode in ("sync", "async"):
        runs[mode] = new_run(tmp_path, prepared, mode)
        stage = stage_config(checkpoint={"every_steps": 3, "keep_last": 2, "mode": mode})
        result = run_stage(stage, runs[mode], progress=False)
        assert result.checkpoint.name == "step-00000008"
        assert names(result.checkpoint.parent) == ["step-00000006", "step-00000008"]
    assert curve(train_records(runs["sync"])) == curve(train_records(runs["async"]))
    want, got = final_weights(runs["sync"]), final_weights(runs["async"])
    assert all(torch.equal(want[k], got[k]) for k in want)
    for step in ("step-00000006", "step-00000008"):
        sync, background = (runs[m] / "stages" / "base" / "checkpoints" / step for m in runs)
        meta_sync, meta_async = read_meta(sync), read_meta(background)
        assert meta_sync.pop("wall_s") > 0 and meta_async.pop("wall_s") > 0
        assert meta_sync == meta_async


def data_pointers(value, path: str = "") -> dict[str, int]:
    """`{path: data_ptr}` of every tensor in a (nested) state dict."""
    if isinstance(value, torch.Tensor):
        return {path: value.data_ptr()}
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return {}
    return {k: v for key, item in items for k, v in data_pointers(item, f"{path}/{key}").items()}


@pytest.fixture
def written(monkeypatch) -> list[dict[str, int]]:
    """The tensors' data pointers of each state dict that DCP saves (then saved as before)."""
    pointers, real = [], dcp.save

    def spy(state_dict, **kwargs):
        pointers.append(data_pointers(state_dict))
        return real(state_dict, **kwargs)

    monkeypatch.setattr(checkpoint.dcp, "save", spy)
    return pointers


def loaded(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """What `path` loads into `model` and `optimizer` (their state dicts after the load)."""
    load_checkpoint(path, model=model, optimizer=optimizer, ctx=ALONE)
    return weights(model), copy.deepcopy(optimizer.state_dict())


def same(a: dict, b: dict) -> bool:
    """Two (nested) state dicts hold equal values."""
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_background_saves_copy_into_the_cpu_buffers_of_the_first(tmp_path, written) -> None:
    """Each background save copies into the same CPU buffers (allocated, and pinned on a GPU, by
    the first; torch 2.11's DefaultStager, kept for a second save, failed it on the H200 with
    KeyError: <class 'type'>), and each checkpoint holds its own save's state: the weights,
    AdamW's moments and step, the learning rate."""
    model, optimizer = net()
    states = []
    with CheckpointWriter(tmp_path, ctx=ALONE, keep_last=3, background=True) as writer:
        for step in (1, 2, 3):
            optimizer.param_groups[0]["lr"] = step / 100
            states.append((weights(model), copy.deepcopy(optimizer.state_dict())))
            save(writer, model, optimizer, step)
            train(model, optimizer)  # the next save's state differs
    assert names(tmp_path) == ["step-00000001", "step-00000002", "step-00000003"]
    assert written[0] == written[1] == written[2] and len(written[0]) == 4 + 4 * 3
    assert not {p.data_ptr() for p in model.parameters()} & set(written[0].values())
    assert not same(states[0][0], states[2][0]) and not same(states[0][1], states[2][1])
    for step, state in zip((1, 2, 3), states, strict=True):
        assert same(loaded(tmp_path / f"step-{step:08d}", *net()), state)


def test_a_state_of_other_shapes_gets_fresh_cpu_buffers(tmp_path, written) -> None:
    """The same keys with other shapes: copied into the old buffers, the new state would be
    broadcast into them and the checkpoint would not load."""
    model, optimizer = net()
    other, other_optimizer = net(outputs=1)
    want = weights(other), copy.deepcopy(other_optimizer.state_dict())
    with CheckpointWriter(tmp_path, ctx=ALONE, keep_last=3, background=True) as writer:
        save(writer, model, optimizer, 1)
        save(writer, other, other_optimizer, 2)
        save(writer, other, other_optimizer, 3)
    assert written[0].keys() == written[1].keys() and written[1] == written[2]
    assert same(loaded(tmp_path / "step-00000002", *net(outputs=1)), want)


@pytest.fixture
def allocations(monkeypatch) -> list[tuple[str, dict[str, int]]]:
    """(thread name, data pointers) of each set of CPU buffers the writer allocates."""
    made, real = [], checkpoint._create_cpu_state_dict

    def spy(state_dict, **kwargs):
        buffers = real(state_dict, **kwargs)
        made.append((threading.current_thread().name, data_pointers(buffers)))
        return buffers

    monkeypatch.setattr(checkpoint, "_create_cpu_state_dict", spy)
    return made


def test_prepare_allocates_in_the_writers_thread_and_the_first_save_copies_into_it(
    tmp_path, written, allocations
) -> None:
    """The buffers of the first save come from `prepare` (allocated in the writer's thread, off
    the training's), once, however often it is called; each checkpoint holds its own state."""
    model, optimizer = net()
    states = []
    with CheckpointWriter(tmp_path, ctx=ALONE, keep_last=3, background=True) as writer:
        for _ in range(2):
            writer.prepare(model=model, optimizer=optimizer)
        for step in (1, 2):
            states.append((weights(model), copy.deepcopy(optimizer.state_dict())))
            save(writer, model, optimizer, step)
            writer.prepare(model=model, optimizer=optimizer)  # the buffers are there: nothing
            train(model, optimizer)
    [(thread, buffers)] = allocations
    assert thread.startswith("checkpoint-writer")
    assert written == [buffers, buffers]
    for step, state in zip((1, 2), states, strict=True):
        assert same(loaded(tmp_path / f"step-{step:08d}", *net()), state)


def test_prepared_buffers_of_other_shapes_are_not_used(tmp_path, written, allocations) -> None:
    """Buffers prepared for one state, then a save of a state of other shapes: it gets fresh
    buffers of its own and the checkpoint loads."""
    model, optimizer = net()
    other, other_optimizer = net(outputs=1)
    want = weights(other), copy.deepcopy(other_optimizer.state_dict())
    with CheckpointWriter(tmp_path, ctx=ALONE, keep_last=3, background=True) as writer:
        writer.prepare(model=model, optimizer=optimizer)
        save(writer, other, other_optimizer, 1)
    assert len(allocations) == 2 and written == [allocations[1][1]]
    assert same(loaded(tmp_path / "step-00000001", *net(outputs=1)), want)


def test_a_synchronous_writer_prepares_nothing(tmp_path, allocations) -> None:
    model, optimizer = net()
    with CheckpointWriter(tmp_path, ctx=ALONE, keep_last=3, background=False) as writer:
        writer.prepare(model=model, optimizer=optimizer)
        save(writer, model, optimizer, 1)
    assert allocations == []


@pytest.mark.parametrize(
    ("saves", "allocated"),
    [({"every_steps": 3}, True), ({"every_steps": None, "at_end": False}, False),
     ({"every_steps": 100, "at_end": False}, False)],  # 8 steps: no save ahead
)  # fmt: skip
def test_the_stage_prepares_the_buffers_before_its_first_save(
    tmp_path, prepared, one_thread, monkeypatch, allocations, saves, allocated
) -> None:
    """The loop has the writer allocate its buffers in the background after its first step, and
    only when a save is ahead (a benchmark without saves keeps its host memory)."""
    events, real = [], checkpoint.dcp.save

    def counted(*args, **kwargs):
        events.append(len(allocations))
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoint.dcp, "save", counted)
    run = new_run(tmp_path, prepared)
    run_stage(stage_config(checkpoint=saves), run, progress=False)
    assert [thread[:17] for thread, _ in allocations] == ["checkpoint-writer"] * allocated
    if allocated:
        assert events[0] == 1  # the first save found the buffers allocated


def test_the_default_checkpoint_mode_is_left_out_of_dumps() -> None:
    """Stages trained before the mode existed keep their fingerprints; sync is recorded."""
    assert "mode" not in CheckpointConfig().model_dump()
    assert CheckpointConfig(mode="sync").model_dump()["mode"] == "sync"
