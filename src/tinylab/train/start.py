"""Where a stage starts: one pure decision from what the checkpoint folders hold.

A stage starts from scratch, resumes its own latest checkpoint, or starts from its parent
stage's last checkpoint (`init_from`), carrying what `init_from.carry` names: the weights, the
AdamW state, the schedule position (step and tokens since the first stage). A stage may instead
start from a released HF checkpoint (`init_from.release`, tinylab.release): its weights, and
`init_from.tokens` as the schedule position; no optimizer state. An adapter stage
(`adapter: lora`) trains on its parent's weights, fresh or resumed; a parent that trained an
adapter hands on its merged weights, rebuilt from the chain of checkpoints under it (each
adapter checkpoint names the one it trained on). `find_start` reads the folders once
(`read_checkpoints`: the stage's newest checkpoint that is whole, skipping damaged ones with the
reason), `plan_start` decides, and every refusal is a ConfigError before any compute. A resume
under changed params is refused unless the changed fields are accepted on purpose; the plan then
carries the changes (old -> new), which the stage records. Trade-off: the plan names
checkpoints, it does not load them, so the whole decision is a table test
(tests/test_train_start.py) and the loop's loading code has no branches on why.

    find_start(stage, RunLayout("outputs/runs/demo"), resume=True).describe()
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tinylab.config.loader import ConfigError
from tinylab.config.model import ModelConfig
from tinylab.config.stage import AdapterConfig, InitFrom, StageConfig
from tinylab.layout import RunLayout
from tinylab.train.checkpoint import (
    Checkpoint,
    CheckpointError,
    check_accept,
    check_model,
    check_recipe,
    damage,
    latest_checkpoint,
    list_checkpoints,
    training_recipe,
)


@dataclass(frozen=True)
class ReleaseWeights:
    """A released HF checkpoint (tinylab.release.local_folder(release, revision))."""

    release: str
    revision: str | None = None


@dataclass(frozen=True)
class CheckpointWeights:
    """Weights rebuilt from checkpoints: the first holds full weights (or, with `root`, the
    release does), each next one an adapter trained on the one before it, merged in turn."""

    chain: tuple[Checkpoint, ...]
    root: ReleaseWeights | None = None


# Where a stage's starting weights come from.
WeightsSource = CheckpointWeights | ReleaseWeights


@dataclass(frozen=True)
class StartPlan:
    """Where a stage starts (see the module docstring); the default is from scratch."""

    resume_from: Checkpoint | None = None  # the stage's own checkpoint, loaded whole
    weights_from: WeightsSource | None = None  # into the plain model, before wrapping/sharding
    optimizer_from: Checkpoint | None = None  # AdamW state carried from the parent
    step: int = 0  # schedule position: optimizer steps since the first stage
    tokens: int = 0  # ... and tokens since the first stage
    parent: Checkpoint | None = None  # the parent checkpoint the stage starts (started) from
    adapter_base: Checkpoint | ReleaseWeights | None = None  # what an adapter stage trains on
    skipped: tuple[tuple[Path, str], ...] = ()  # own checkpoints not whole, newer than resume_from
    changes: dict[str, list[Any]] | None = None  # accepted changes since resume_from: [old, new]

    def describe(self) -> str:
        """One line for the log."""
        if self.resume_from is not None:
            return f"resuming from {self.resume_from.path.name} (step {self.step})"
        if isinstance(self.weights_from, ReleaseWeights):
            release = self.weights_from
            at = f"@{release.revision}" if release.revision else ""
            return f"starting from release {release.release}{at} (tokens {self.tokens:,})"
        if self.parent is not None:
            return (
                f"starting from parent {self.parent.stage}/{self.parent.path.name} "
                f"(step {self.step})"
            )
        return "starting from scratch"


@dataclass(frozen=True)
class Found:
    """What the checkpoint folders hold for a stage's start (`read_checkpoints`)."""

    own: Checkpoint | None = None  # the stage's latest checkpoint, when resuming
    parent: Checkpoint | None = None  # the parent stage's latest checkpoint
    parent_dir: Path | None = None  # where the parent's checkpoints are (for messages)
    bases: tuple[Checkpoint, ...] = ()  # under an adapter parent: its base, that one's base, ...
    missing_base: Path | None = None  # the base the last adapter checkpoint names, if gone
    skipped: tuple[tuple[Path, str], ...] = ()  # own checkpoints passed over: (path, why)
    root: ReleaseWeights | None = None  # the release under the chain of adapters, if any


def find_start(
    stage: StageConfig,
    run: RunLayout,
    *,
    resume: bool,
    accept: Sequence[str] = (),
    skip: Sequence[tuple[Path, str]] = (),
) -> StartPlan:
    """The stage's start plan from the run folder; ConfigError when it cannot start. `accept`:
    recipe fields a resume may change on purpose; `skip`: own checkpoints known to be broken
    (path, why), e.g. one whose load failed."""
    check_accept(accept)
    found = read_checkpoints(run, stage.name, stage.init_from, resume=resume, skip=skip)
    plan = plan_start(
        stage.name, model=stage.model, init_from=stage.init_from, adapter=stage.adapter, found=found
    )
    if plan.resume_from is not None:
        recipe = training_recipe(stage, plan.parent)
        changes = check_recipe(plan.resume_from, recipe, stage.name, accept=accept)
        plan = replace(plan, changes=changes or None)
    return replace(plan, skipped=found.skipped)


def read_checkpoints(
    run: RunLayout,
    name: str,
    init_from: InitFrom | None,
    *,
    resume: bool,
    skip: Sequence[tuple[Path, str]] = (),
) -> Found:
    """Read the metas of the stage's own newest whole checkpoint (passing over damaged ones and
    those in `skip`), its parent's latest checkpoint, and the chain of checkpoints under an
    adapter parent."""
    own, skipped = _newest_whole(run, name, skip) if resume else (None, ())
    if init_from is None or init_from.release is not None:
        return Found(own=own, skipped=skipped)
    parent = _latest(run, init_from.stage)
    if parent is not None and (why := damage(parent.path)) is not None:
        raise CheckpointError(
            f"stage {name!r} starts from {parent.path}, which is not whole ({why}); train stage "
            f"{init_from.stage!r} again (it resumes from its newest whole checkpoint)"
        )
    bases: list[Checkpoint] = []
    top = parent
    while top is not None and top.adapter is not None:
        base = top.adapter["base"]
        if "release" in base:
            root = ReleaseWeights(base["release"], base.get("revision"))
            return Found(
                own, parent, run.stage(init_from.stage).checkpoints, tuple(bases), None, skipped,
                root,
            )  # fmt: skip
        path = run.stage(base["stage"]).checkpoints / base["checkpoint"]
        if not path.is_dir():
            return Found(
                own, parent, run.stage(init_from.stage).checkpoints, tuple(bases), path, skipped
            )
        top = Checkpoint.read(base["stage"], path)
        bases.append(top)
    return Found(own, parent, run.stage(init_from.stage).checkpoints, tuple(bases), None, skipped)


def _latest(run: RunLayout, stage: str) -> Checkpoint | None:
    path = latest_checkpoint(run.stage(stage).checkpoints)
    return None if path is None else Checkpoint.read(stage, path)


def _newest_whole(
    run: RunLayout, stage: str, skip: Sequence[tuple[Path, str]]
) -> tuple[Checkpoint | None, tuple[tuple[Path, str], ...]]:
    """The stage's newest checkpoint that is whole, and the newer ones passed over with why;
    CheckpointError when there are checkpoints and none is whole."""
    known = dict(skip)
    skipped = []
    for path in reversed(list_checkpoints(run.stage(stage).checkpoints)):
        why = known.get(path) or damage(path)
        if why is None:
            return Checkpoint.read(stage, path), tuple(skipped)
        skipped.append((path, why))
    if skipped:
        raise CheckpointError(
            f"stage {stage!r}: no whole checkpoint to resume from: "
            + "; ".join(why for _, why in skipped)
            + ". Start the stage over (tinylab train --fresh moves these aside until the new "
            "run saves its first checkpoint)"
        )
    return None, ()


def plan_start(
    name: str,
    *,
    model: ModelConfig,
    init_from: InitFrom | None,
    adapter: AdapterConfig | None,
    found: Found,
) -> StartPlan:
    """Decide where stage `name` starts from what `found` holds; pure (no I/O)."""
    own, parent = found.own, found.parent
    if init_from is not None and init_from.release is not None:
        return _plan_release(name, model=model, init_from=init_from, adapter=adapter, own=own)
    if own is not None:
        check_model(own, model)
        _check_same_kind(name, own, adapter)
        if adapter is not None and parent is None:
            raise ConfigError(
                f"stage {name!r} trains an adapter on stage {init_from.stage!r}'s weights, but "
                "that stage has no checkpoint in this run folder; train it first"
            )
        state = own.state
        return StartPlan(
            resume_from=own,
            weights_from=None if adapter is None else _weights(found),
            step=state.step,
            tokens=state.tokens,
            parent=parent,
            adapter_base=None if adapter is None else parent,
        )
    if init_from is None:
        return StartPlan()
    if parent is None:
        raise ConfigError(
            f"stage {name!r} starts from stage {init_from.stage!r} (init_from), but "
            f"{found.parent_dir} holds no checkpoint; train stage {init_from.stage!r} in this "
            "run folder first"
        )
    if not parent.finished:
        raise ConfigError(
            f"stage {name!r} starts from stage {init_from.stage!r}, whose last "
            f"checkpoint ({parent.path.name}) is not the end of that stage; finish it first"
        )
    carry = init_from.carry
    if "weights" in carry:
        check_model(parent, model)
    if "optimizer" in carry and parent.adapter is not None:
        raise ConfigError(
            f"stage {name!r} carries 'optimizer' from stage {init_from.stage!r}, "
            "which trained a LoRA adapter: that AdamW state covers only the adapter. Set "
            "init_from.carry to [weights, schedule] (the merged weights are carried)"
        )
    state = parent.state if "schedule" in carry else None
    return StartPlan(
        weights_from=_weights(found) if "weights" in carry else None,
        optimizer_from=parent if "optimizer" in carry else None,
        step=0 if state is None else state.step,
        tokens=0 if state is None else state.tokens,
        parent=parent,
        adapter_base=None if adapter is None else parent,
    )


def _plan_release(
    name: str,
    *,
    model: ModelConfig,
    init_from: InitFrom,
    adapter: AdapterConfig | None,
    own: Checkpoint | None,
) -> StartPlan:
    """A stage from a release: its own checkpoint when resuming (an adapter stage reloads the
    release under it), else the release's weights at `init_from.tokens`."""
    release = ReleaseWeights(init_from.release, init_from.revision)
    base = release if adapter is not None else None
    if own is not None:
        check_model(own, model)
        _check_same_kind(name, own, adapter)
        state = own.state
        return StartPlan(resume_from=own, weights_from=base, step=state.step,
                         tokens=state.tokens, adapter_base=base)  # fmt: skip
    carry = init_from.carry
    return StartPlan(
        weights_from=release if "weights" in carry else None,
        tokens=init_from.tokens if "schedule" in carry else 0,
        adapter_base=base,
    )


def _check_same_kind(name: str, own: Checkpoint, adapter: AdapterConfig | None) -> None:
    """ConfigError when the own checkpoint holds an adapter and the params train full weights,
    or the other way round."""
    if (own.adapter is None) == (adapter is None):
        return
    held = "a LoRA adapter" if own.adapter else "full weights"
    wanted = "a LoRA adapter" if adapter else "full weights"
    raise ConfigError(
        f"stage {name!r}: its checkpoint {own.path} holds {held}, but the params now "
        f"train {wanted} (adapter: {'null' if adapter is None else adapter.type}); start the "
        "stage over (tinylab train --fresh) or use a new run folder"
    )


def _weights(found: Found) -> CheckpointWeights:
    """The parent's weights: its checkpoint, under an adapter its chain of bases, base first."""
    if found.missing_base is not None:
        adapter = (found.parent, *found.bases)[-1]
        raise ConfigError(
            f"adapter checkpoint {adapter.path} trained on {found.missing_base}, which is gone; "
            "the merged weights cannot be rebuilt without it (retrain that stage's parent chain "
            "in this run folder)"
        )
    return CheckpointWeights((*reversed(found.bases), found.parent), found.root)


def recorded_adapter(checkpoint: Checkpoint) -> AdapterConfig:
    """The adapter an adapter stage's checkpoint was trained with (its `adapter_record`)."""
    return AdapterConfig(**checkpoint.adapter["config"])


def adapter_record(adapter: AdapterConfig, base: Checkpoint | ReleaseWeights) -> dict[str, Any]:
    """What an adapter stage's checkpoint meta records (`adapter`): the adapter and its base (a
    checkpoint, or a release), which `read_checkpoints` follows."""
    if isinstance(base, ReleaseWeights):
        where = {"release": base.release, "revision": base.revision}
    else:
        where = {"stage": base.stage, "checkpoint": base.path.name}
    return {"config": adapter.model_dump(mode="json"), "base": where}
