"""tinylab.train.start: where a stage starts, as a table of what the checkpoint folders hold
(plan_start is pure), plus the one reader of those folders on a real run folder."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from _train_fixtures import stage_config

from tinylab.config.loader import ConfigError
from tinylab.config.stage import AdapterConfig, InitFrom
from tinylab.layout import RunLayout
from tinylab.train.checkpoint import Checkpoint, CheckpointError
from tinylab.train.start import Found, StartPlan, adapter_record, plan_start, read_checkpoints

MODEL = stage_config().model
LORA = AdapterConfig(rank=4)
RUN = RunLayout("/run")


def ckpt(stage: str, step: int, *, finished=True, base: Checkpoint | None = None, **model):
    """A checkpoint of `stage` at `step` (1,024 tokens a step); with `base`, an adapter's."""
    meta = {
        "state": {"step": step, "tokens": step * 1024, "stage_step": 1, "stage_tokens": 1024},
        "model": MODEL.model_copy(update=model).model_dump(mode="json"),
        "finished": finished,
        "adapter": None if base is None else adapter_record(LORA, base),
    }
    return Checkpoint(stage, RUN.stage(stage).checkpoints / f"step-{step:08d}", meta)


BASE = ckpt("base", 8)
LORA_12 = ckpt("lora", 12, base=BASE)  # a LoRA stage trained on base
LORA2_14 = ckpt("lora2", 14, base=LORA_12)  # a LoRA stage trained on the LoRA stage
CHILD_10 = ckpt("child", 10)
PARENT_DIR = RUN.stage("base").checkpoints
CARRY_ALL = InitFrom(stage="base")
WEIGHTS_SCHEDULE = InitFrom(stage="base", carry=["weights", "schedule"])


def on(stage: str, *carry: str) -> InitFrom:
    return InitFrom(stage=stage, carry=list(carry))


def names(*checkpoints: Checkpoint | None) -> tuple[str | None, ...]:
    return tuple(None if c is None else f"{c.stage}/{c.path.name[-2:]}" for c in checkpoints)


def summary(plan: StartPlan) -> dict:
    """The plan in short names: base/08 = base's step-00000008."""
    weights = None if plan.weights_from is None else names(*plan.weights_from.chain)
    return {
        "resume": names(plan.resume_from)[0],
        "weights": weights,
        "optimizer": names(plan.optimizer_from)[0],
        "at": (plan.step, plan.tokens),
        "adapter_base": names(plan.adapter_base)[0],
    }


def plan(**expected) -> dict:
    return {
        "resume": None, "weights": None, "optimizer": None, "at": (0, 0), "adapter_base": None,
        **expected,
    }  # fmt: skip


# (init_from, adapter, found, the plan in short names, its describe())
STARTS = {
    "scratch": (None, None, Found(), plan(), "starting from scratch"),
    "resume": (
        None, None, Found(own=ckpt("base", 6, finished=False)),
        plan(resume="base/06", at=(6, 6144)), "resuming from step-00000006 (step 6)",
    ),
    "resume a child": (
        CARRY_ALL, None, Found(own=CHILD_10, parent=BASE, parent_dir=PARENT_DIR),
        plan(resume="child/10", at=(10, 10240)), "resuming from step-00000010 (step 10)",
    ),
    "parent, carry all": (
        CARRY_ALL, None, Found(parent=BASE, parent_dir=PARENT_DIR),
        plan(weights=("base/08",), optimizer="base/08", at=(8, 8192)),
        "starting from parent base/step-00000008 (step 8)",
    ),
    "parent, carry weights and schedule": (
        WEIGHTS_SCHEDULE, None, Found(parent=BASE, parent_dir=PARENT_DIR),
        plan(weights=("base/08",), at=(8, 8192)), "starting from parent base/step-00000008",
    ),
    "parent, carry weights and optimizer": (
        on("base", "weights", "optimizer"), None, Found(parent=BASE, parent_dir=PARENT_DIR),
        plan(weights=("base/08",), optimizer="base/08"), "(step 0)",
    ),
    "parent, carry weights": (
        on("base", "weights"), None, Found(parent=BASE, parent_dir=PARENT_DIR),
        plan(weights=("base/08",)), "starting from parent base/step-00000008 (step 0)",
    ),
    "parent, carry schedule": (
        on("base", "schedule"), None, Found(parent=BASE, parent_dir=PARENT_DIR),
        plan(at=(8, 8192)), "(step 8)",
    ),
    "parent, carry nothing": (
        on("base"), None, Found(parent=BASE, parent_dir=PARENT_DIR), plan(), "(step 0)",
    ),
    "parent of another shape, carry schedule only": (
        on("base", "schedule"), None, Found(parent=ckpt("base", 8, hidden_size=128)),
        plan(at=(8, 8192)), "(step 8)",
    ),
    "adapter stage, fresh": (
        WEIGHTS_SCHEDULE, LORA, Found(parent=BASE, parent_dir=PARENT_DIR),
        plan(weights=("base/08",), at=(8, 8192), adapter_base="base/08"),
        "starting from parent base/step-00000008 (step 8)",
    ),
    "adapter stage, resumed": (
        WEIGHTS_SCHEDULE, LORA, Found(own=LORA_12, parent=BASE, parent_dir=PARENT_DIR),
        plan(resume="lora/12", weights=("base/08",), at=(12, 12288), adapter_base="base/08"),
        "resuming from step-00000012 (step 12)",
    ),
    "child of an adapter stage: the merged weights": (
        on("lora", "weights", "schedule"), None, Found(parent=LORA_12, bases=(BASE,)),
        plan(weights=("base/08", "lora/12"), at=(12, 12288)),
        "starting from parent lora/step-00000012 (step 12)",
    ),
    "adapter on an adapter on base": (
        on("lora", "weights"), LORA, Found(parent=LORA2_14, bases=(LORA_12, BASE)),
        plan(weights=("base/08", "lora/12", "lora2/14"), adapter_base="lora2/14"), "(step 0)",
    ),
    "child of an adapter stage, resumed: its own weights": (
        on("lora", "weights"), None, Found(own=CHILD_10, parent=LORA_12, bases=(BASE,)),
        plan(resume="child/10", at=(10, 10240)), "resuming from step-00000010",
    ),
}  # fmt: skip


@pytest.mark.parametrize(("init_from", "adapter", "found", "want", "says"), STARTS.values(),
                         ids=STARTS.keys())  # fmt: skip
def test_plan_start(init_from, adapter, found, want, says) -> None:
    got = plan_start("s", model=MODEL, init_from=init_from, adapter=adapter, found=found)
    assert summary(got) == want
    assert says in got.describe()
    assert got.parent == (found.parent if init_from is not None else None)


# (init_from, adapter, found, the message)
REFUSED = {
    "parent missing": (
        CARRY_ALL, None, Found(parent_dir=PARENT_DIR),
        f"stage 's' starts from stage 'base' (init_from), but {PARENT_DIR} holds no checkpoint; "
        "train stage 'base' in this run folder first",
    ),
    "adapter stage, parent missing": (
        WEIGHTS_SCHEDULE, LORA, Found(parent_dir=PARENT_DIR), "holds no checkpoint",
    ),
    "parent unfinished": (
        CARRY_ALL, None, Found(parent=ckpt("base", 5, finished=False)),
        "whose last checkpoint (step-00000005) is not the end of that stage; finish it first",
    ),
    "parent of another shape": (
        on("base", "weights"), None, Found(parent=ckpt("base", 8, hidden_size=128)),
        "hidden_size: 128 in the checkpoint, 64 now",
    ),
    "own checkpoint of another shape": (
        None, None, Found(own=ckpt("s", 3, num_hidden_layers=4)),
        "num_hidden_layers: 4 in the checkpoint, 2 now",
    ),
    "resume full weights as an adapter": (
        WEIGHTS_SCHEDULE, LORA, Found(own=CHILD_10, parent=BASE),
        "holds full weights, but the params now train a LoRA adapter (adapter: lora)",
    ),
    "resume an adapter as full weights": (
        WEIGHTS_SCHEDULE, None, Found(own=LORA_12, parent=BASE),
        "holds a LoRA adapter, but the params now train full weights (adapter: null)",
    ),
    "adapter stage resumed, parent gone": (
        WEIGHTS_SCHEDULE, LORA, Found(own=LORA_12),
        "stage 's' trains an adapter on stage 'base''s weights, but that stage has no checkpoint",
    ),
    "optimizer from an adapter parent": (
        on("lora", "weights", "optimizer"), None, Found(parent=LORA_12, bases=(BASE,)),
        "carries 'optimizer' from stage 'lora', which trained a LoRA adapter",
    ),
    "the base under an adapter parent is gone": (
        on("lora2", "weights"), None,
        Found(parent=LORA2_14, bases=(LORA_12,), missing_base=BASE.path),
        f"adapter checkpoint {LORA_12.path} trained on {BASE.path}, which is gone",
    ),
}  # fmt: skip


@pytest.mark.parametrize(("init_from", "adapter", "found", "message"), REFUSED.values(),
                         ids=REFUSED.keys())  # fmt: skip
def test_plan_start_refuses(init_from, adapter, found, message) -> None:
    with pytest.raises(ConfigError) as err:
        plan_start("s", model=MODEL, init_from=init_from, adapter=adapter, found=found)
    assert message in str(err.value)


def write_checkpoint(run: RunLayout, checkpoint: Checkpoint) -> None:
    """A whole checkpoint on disk: its meta, a (one-tensor) DCP save and an RNG file."""
    folder = run.stage(checkpoint.stage).checkpoints / checkpoint.path.name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DCP on one process without a process group
        dcp.save({"model": {"w": torch.zeros(2)}}, checkpoint_id=folder, no_dist=True)
    torch.save({}, folder / "rng-00000.pt")
    (folder / "meta.json").write_text(json.dumps({**checkpoint.meta, "world_size": 1}))


def test_read_checkpoints_follows_the_adapter_chain_through_the_layout(tmp_path: Path) -> None:
    run = RunLayout(tmp_path)
    for checkpoint in (ckpt("base", 4), BASE, LORA_12, LORA2_14, CHILD_10):
        write_checkpoint(run, checkpoint)
    (run.stage("child").checkpoints / "step-00000011.tmp").mkdir()  # a torn save: ignored
    found = read_checkpoints(run, "child", on("lora2", "weights"), resume=True)
    assert names(found.own, found.parent, *found.bases) == (
        "child/10", "lora2/14", "lora/12", "base/08",
    )  # fmt: skip
    assert found.own.path == run.stage("child").checkpoints / "step-00000010"
    assert found.parent_dir == run.stage("lora2").checkpoints and found.missing_base is None
    assert read_checkpoints(run, "child", None, resume=False) == Found()

    shutil.rmtree(run.stage("base").checkpoints / "step-00000008")
    gone = read_checkpoints(run, "child", on("lora2", "weights"), resume=False)
    assert names(*gone.bases) == ("lora/12",)
    assert gone.missing_base == run.stage("base").checkpoints / "step-00000008"
    with pytest.raises(ConfigError, match="which is gone"):
        plan_start("child", model=MODEL, init_from=on("lora2", "weights"), adapter=None, found=gone)


def _shard(folder: Path) -> Path:
    (shard,) = folder.glob("*.distcp")
    return shard


# How a checkpoint folder can be damaged, and the reason the resume gives for passing it over.
DAMAGE = {
    "meta.json is not JSON": (
        lambda f: (f / "meta.json").write_text('{"state": '), "meta.json: not a readable",
    ),
    "meta.json lacks the state": (
        lambda f: (f / "meta.json").write_text("{}"), "not a checkpoint meta.json (no ['finished'",
    ),
    "a shard is truncated": (
        lambda f: _shard(f).write_bytes(_shard(f).read_bytes()[:10]), "is truncated (10 of",
    ),
    "a shard is gone": (lambda f: _shard(f).unlink(), ".distcp is missing"),
    "DCP's index is gone": (lambda f: (f / ".metadata").unlink(), ".metadata is missing"),
    "DCP's index is garbage": (
        lambda f: (f / ".metadata").write_bytes(b"\x00garbage"), ".metadata: unreadable",
    ),
    "an RNG file is gone": (lambda f: (f / "rng-00000.pt").unlink(), "rng-00000.pt is missing"),
}  # fmt: skip


@pytest.mark.parametrize(("hurt", "why"), DAMAGE.values(), ids=DAMAGE.keys())
def test_a_damaged_newest_checkpoint_is_passed_over_with_the_reason(tmp_path, hurt, why) -> None:
    run = RunLayout(tmp_path)
    older, newest = ckpt("base", 4), ckpt("base", 8)
    for checkpoint in (older, newest):
        write_checkpoint(run, checkpoint)
    hurt(run.stage("base").checkpoints / "step-00000008")
    found = read_checkpoints(run, "base", None, resume=True)
    assert found.own.path.name == "step-00000004"
    ((path, reason),) = found.skipped
    assert path.name == "step-00000008" and why in reason and str(path) in reason
    hurt(run.stage("base").checkpoints / "step-00000004")  # nothing whole is left: one message
    with pytest.raises(CheckpointError, match="no whole checkpoint to resume from.*--fresh"):
        read_checkpoints(run, "base", None, resume=True)


def test_a_checkpoint_that_failed_to_load_is_skipped_and_a_damaged_parent_named(tmp_path) -> None:
    run = RunLayout(tmp_path)
    for checkpoint in (ckpt("base", 4), BASE, CHILD_10):
        write_checkpoint(run, checkpoint)
    child = run.stage("child").checkpoints / "step-00000010"
    found = read_checkpoints(run, "base", None, resume=True, skip=[(tmp_path / "other", "no")])
    assert found.own.path.name == "step-00000008"  # a skip entry of another path changes nothing
    skip = [(run.stage("base").checkpoints / "step-00000008", "does not load: IndexError")]
    found = read_checkpoints(run, "base", None, resume=True, skip=skip)
    assert found.own.path.name == "step-00000004" and found.skipped == tuple(skip)
    _shard(run.stage("base").checkpoints / "step-00000008").unlink()
    with pytest.raises(CheckpointError, match=r"starts from .*step-00000008, which is not whole"):
        read_checkpoints(run, "child", on("base", "weights"), resume=True)
    assert child.is_dir()
