"""Checkpoints: a TrainState saved and restored whole, atomically, on any world size.

A checkpoint is a folder `checkpoints/step-XXXXXXXX/` (XXXXXXXX = optimizer steps since the first
stage) holding the model and AdamW state as torch.distributed.checkpoint (DCP) shards, one RNG
file per rank, and `meta.json` (the TrainState counters, the model config, the world size,
whether the stage finished, and what the caller adds: tinylab.train.start's adapter record). With
`trainable_only` (a LoRA stage) only the trainable parameters are stored. All ranks write into
`step-XXXXXXXX.tmp/`; rank 0 adds meta.json last and renames the folder into place, then points
`checkpoints/latest` at it and deletes all but the newest `keep_last`. A crash at any moment
leaves either the old or the new checkpoint complete; a leftover `.tmp` folder is ignored and
removed on the next start. `CheckpointWriter` saves; in the background (`checkpoint.mode:
async`) a save copies the state into CPU memory and returns, and a thread writes the shards and
commits (the same folder, the same order) while training goes on; the next save waits for it.
A save that fails (disk full, a read-only folder) removes its `.tmp` and raises one
CheckpointError (an async one at the next save or the end of the stage); the checkpoints
before it are untouched. `damage` says why a
checkpoint on disk is not whole (meta.json, DCP's `.metadata`, each shard it names at its full
length, one RNG file per rank), so a resume can skip a truncated or corrupt newest checkpoint;
a load that fails raises CheckpointError too (the same on every rank).

Trade-off: DCP stores every tensor with its global shape and offsets, so a checkpoint written by
2 ranks loads on 1 (or 8) without a conversion step, at the price of one file per rank and a
planning collective on save; the HF export at the end of a stage is the portable format. An async
save holds a second copy of this rank's state in host memory (pinned on a GPU, allocated in the
background after the first step and kept for every save) and a gloo group of its own; in
exchange training stops for the copy, not the write.

    ls outputs/runs/demo/stages/base/checkpoints/
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import io
import json
import os
import random
import shutil
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn

# Private, but what torch's own BlockingAsyncStager calls, the same in torch 2.11 and 2.13. Its
# stagers do not serve: DefaultStager empties its copy table after each stage() in torch 2.11 (a
# kept one failed its second save on the H200: KeyError: <class 'type'>; a fresh one per save pins
# the 13 GB anew), and BlockingAsyncStager always pins, copies blocking and never reallocates.
from torch.distributed._state_dict_utils import _copy_state_dict, _create_cpu_state_dict
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
    set_state_dict,
)
from torch.distributed.tensor import DTensor

from tinylab.config.loader import ConfigError
from tinylab.config.model import ModelConfig
from tinylab.config.stage import StageConfig
from tinylab.errors import UserError
from tinylab.files import write_atomic
from tinylab.train.parallel import Distributed

PREFIX, TMP_SUFFIX, META, LATEST = "step-", ".tmp", "meta.json", "latest"
DCP_METADATA = ".metadata"  # torch.distributed.checkpoint's index of the shards
# What a failed save or load may raise: DCP's CheckpointException derives from BaseException.
FAILURES = (Exception, CheckpointException)
# Fields that fix tensor shapes: a checkpoint loads only into a model that agrees on all of them.
SHAPE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "tie_word_embeddings",
)


class CheckpointError(UserError):
    """A checkpoint that cannot be read, loaded or written; the message names it and the cause."""


@dataclass
class TrainState:
    """Counters that, with the model and optimizer, define where training is."""

    step: int = 0  # optimizer steps since the first stage (schedule position)
    tokens: int = 0  # tokens since the first stage: what lr_at reads
    stage_step: int = 0  # optimizer steps in this stage
    stage_tokens: int = 0  # tokens in this stage: stage window = stage_tokens // seq_len


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint of stage `stage` and its meta.json, read once."""

    stage: str
    path: Path
    meta: Mapping[str, Any]

    @classmethod
    def read(cls, stage: str, path: Path) -> Checkpoint:
        return cls(stage, Path(path), read_meta(path))

    @property
    def finished(self) -> bool:
        return bool(self.meta["finished"])

    @property
    def adapter(self) -> dict[str, Any] | None:
        """The adapter record of a LoRA stage's checkpoint (None: full weights)."""
        return self.meta.get("adapter")

    @property
    def state(self) -> TrainState:
        return TrainState(**self.meta["state"])


def step_dir(folder: Path, step: int) -> Path:
    return Path(folder) / f"{PREFIX}{step:08d}"


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints in `folder` (those with meta.json), oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [
        p
        for p in folder.glob(f"{PREFIX}*")
        if p.is_dir() and p.name[len(PREFIX) :].isdigit() and (p / META).is_file()
    ]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = list_checkpoints(folder)
    return found[-1] if found else None


def read_meta(path: Path) -> dict[str, Any]:
    """A checkpoint's meta.json; CheckpointError naming the file when it is not one."""
    file = Path(path) / META
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{file}: not a readable checkpoint meta.json ({err})") from err
    missing = {"state", "model", "finished"} - set(meta if isinstance(meta, dict) else ())
    if missing:
        raise CheckpointError(f"{file}: not a checkpoint meta.json (no {sorted(missing)})")
    return meta


def damage(path: Path) -> str | None:
    """Why the checkpoint at `path` is not whole, or None when it looks whole: meta.json reads,
    DCP's index reads, every shard it names is there and as long as the index says, and each
    rank that wrote it left its RNG file. Cheap (sizes, not contents): a shard corrupted in
    place is found by the load."""
    path = Path(path)
    if not (path / DCP_METADATA).is_file():
        return f"{path / DCP_METADATA} is missing"
    try:
        meta = read_meta(path)
        index = FileSystemReader(path).read_metadata()
    except CheckpointError as err:
        return str(err)
    except FAILURES as err:
        return f"{path / DCP_METADATA}: unreadable ({_cause(err)})"
    needed: dict[str, int] = {}
    for info in index.storage_data.values():
        end = info.offset + info.length
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), end)
    rng = {f"rng-{rank:05d}.pt": 1 for rank in range(int(meta.get("world_size", 1)))}
    for name, size in sorted({**needed, **rng}.items()):
        file = path / name
        if not file.is_file():
            return f"{file} is missing"
        if file.stat().st_size < size:
            return f"{file} is truncated ({file.stat().st_size} of {size} bytes)"
    return None


def remove_partial(folder: Path) -> None:
    """Delete `.tmp` folders left by a save that was interrupted (rank 0 only)."""
    for tmp in Path(folder).glob(f"{PREFIX}*{TMP_SUFFIX}"):
        shutil.rmtree(tmp, ignore_errors=True)


def check_model(checkpoint: Checkpoint, model: ModelConfig) -> None:
    """ConfigError when the checkpoint was written for a model of another shape."""
    saved = checkpoint.meta["model"]
    diffs = [
        f"{k}: {saved.get(k)} in the checkpoint, {getattr(model, k)} now"
        for k in SHAPE_FIELDS
        if saved.get(k) != getattr(model, k)
    ]
    if diffs:
        raise ConfigError(
            f"checkpoint {checkpoint.path} was written for a model of another shape "
            f"({'; '.join(diffs)}); use the same model params, a new run folder, or start over "
            "(tinylab train --fresh; resume=False from Python)"
        )


# What a stage's checkpoints are a function of: resuming under other values would silently keep
# training that was done with the old ones (max_tokens may grow, cadences and kernels may change).
RECIPE_FIELDS = {"model", "data", "mixture", "ramp", "optim", "schedule", "seed",
                 "global_batch_tokens", "init_from", "adapter"}  # fmt: skip


def training_recipe(stage: StageConfig, parent: Checkpoint | None) -> dict[str, Any]:
    """The params that define a stage's checkpoints, and the parent checkpoint it started from."""
    recipe = stage.model_dump(mode="json", include=RECIPE_FIELDS)
    recipe["model"].pop("attention", None)  # a kernel choice, not a different model
    if recipe.get("adapter") is None:  # full training: the recipe of checkpoints before adapters
        recipe.pop("adapter", None)
    init = recipe.get("init_from")
    if init is not None and init["release"] is None:  # from a stage: as before releases existed
        for key in ("release", "revision", "tokens"):
            init.pop(key)
    if parent is not None:
        recipe["parent"] = {
            "checkpoint": parent.path.name,
            "recipe": parent.meta.get("recipe_digest"),
        }
    return recipe


def recipe_digest(recipe: dict[str, Any]) -> str:
    # Not files.json_digest: its compact separators would change every stored digest, and a
    # child's recipe records its parent's, so resuming a child of an older parent would fail.
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


# Recipe fields a resume may change on purpose (`accept`, tinylab train --accept-change): the
# optimizer and schedule (the remedy for a divergence) and the mixture; the others change what
# the checkpoint's weights are.
ACCEPTABLE = ("optim", "schedule", "mixture", "ramp")


def check_accept(accept: Sequence[str]) -> None:
    """ConfigError for a field that a resume may not change on purpose."""
    for field in accept:
        if field not in ACCEPTABLE:
            raise ConfigError(
                f"--accept-change {field}: a resume may change only {', '.join(ACCEPTABLE)}; "
                "for another change start the stage over (--fresh) or use a new run folder"
            )


def check_recipe(
    checkpoint: Checkpoint, recipe: dict[str, Any], stage_name: str, *, accept: Sequence[str] = ()
) -> dict[str, list[Any]]:
    """The changes of the params since the checkpoint was trained, `{dotted key: [old, new]}`,
    when all are in fields the caller `accept`s; ConfigError for any other change."""
    path, saved = checkpoint.path, checkpoint.meta.get("recipe")
    if saved is None or saved == recipe:
        return {}
    changed = sorted(k for k in set(saved) | set(recipe) if saved.get(k) != recipe.get(k))
    refused = [k for k in changed if k not in accept]
    if refused:
        raise ConfigError(
            f"stage {stage_name!r}: its checkpoint {path} was trained with other params "
            f"({', '.join(refused)} changed since); resuming would keep that training under the "
            "new params. Start the stage over (tinylab train --fresh, or delete its folder "
            f"{path.parent.parent}), resume under the new params on purpose (tinylab train "
            f"--accept-change FIELD, for {', '.join(ACCEPTABLE)}), or use a new run folder"
        )
    return {k: v for field in changed for k, v in _diff(saved.get(field), recipe[field], field)}


def _diff(old: Any, new: Any, key: str) -> list[tuple[str, list[Any]]]:
    """(dotted key, [old, new]) of every leaf that differs."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new)) for d in _diff(old.get(k), new.get(k),
                                                                      f"{key}.{k}")]  # fmt: skip
    return [] if old == new else [(key, [old, new])]


class CheckpointWriter:
    """Saves one stage's checkpoints; with `background`, each save returns once the state is
    copied into CPU memory (pinned on a GPU, the buffers kept for the next save) and a thread
    writes and commits it while training goes on. Collective: every rank makes the same calls.

    A save first waits for the one in flight, so at most one is, and its copy is never
    overwritten while it is written. The thread writes the DCP shards over a gloo group of its
    own (the training's collectives keep the default group to themselves); each rank's RNG file is
    written before it joins DCP's save, so when DCP returns on rank 0 every rank's files are there
    and rank 0 commits (meta.json, the rename, `latest`, keep-last) from the thread. A failure
    surfaces in `wait()` (the next save, or the end of the stage) as `save_checkpoint`'s would:
    the `.tmp` folder removed and one CheckpointError on every rank. Use it as a context manager:
    leaving the block waits for the save in flight (on an error, without collectives, so the
    checkpoint still commits)."""

    def __init__(
        self,
        folder: Path,
        *,
        ctx: Distributed,
        keep_last: int,
        background: bool,
        on_commit: Callable[[], None] | None = None,
    ):
        self.folder, self.ctx, self.keep_last = Path(folder), ctx, keep_last
        self.on_commit = on_commit  # rank 0, after each checkpoint is in place
        self._pending: tuple[Future, Path] | None = None
        self._executor = self._group = None
        self._buffers: dict[str, Any] | None = None  # the staged copy's CPU tensors
        self._layout = None  # what they were allocated for (_layout)
        self._allocating: tuple[Future, Any] | None = None  # prepare()'s buffers, their layout
        self._pin = cuda = ctx.device.type == "cuda"
        if background:
            self._executor = ThreadPoolExecutor(  # on this rank's GPU, as the main thread
                1, "checkpoint-writer", initializer=torch.cuda.set_device if cuda else None,
                initargs=(ctx.device,) if cuda else (),
            )  # fmt: skip
            if ctx.mesh is not None:
                self._group = dist.new_group(backend="gloo")

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(self, kind, error, trace) -> None:
        try:
            if error is None:
                self.wait()
            elif self._pending is not None:
                self._pending[0].exception()  # let it finish; the error in hand is the news
        finally:
            self._close()

    def save(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        state: TrainState,
        model_cfg: ModelConfig,
        recipe: dict[str, Any] | None = None,
        extra_meta: Mapping[str, Any] | None = None,
        trainable_only: bool = False,
        finished: bool,
        before_commit=None,
    ) -> Path:
        """Save a checkpoint of `state` atomically (in the background, or now); returns the
        folder it will have. `before_commit` (tests) runs after the shards are written and
        before the rename; `extra_meta` goes into meta.json; `trainable_only` stores only the
        trainable parameters. A failure on any rank removes the `.tmp` folder and raises on
        every rank, here or in the `wait()` after a background save."""
        self.wait()
        final = step_dir(self.folder, state.step)
        tmp = final.with_name(final.name + TMP_SUFFIX)
        with _saving(tmp, self.ctx):
            if self.ctx.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
        options = StateDictOptions(ignore_frozen_params=trainable_only)
        model_sd, optim_sd = get_state_dict(model, optimizer, options=options)
        meta = {
            "state": asdict(state),
            "model": model_cfg.model_dump(mode="json"),
            "recipe": recipe,
            "recipe_digest": None if recipe is None else recipe_digest(recipe),
            **(extra_meta or {}),
            "world_size": self.ctx.world_size,
            "finished": finished,
        }
        with _saving(tmp, self.ctx):
            rng = io.BytesIO()  # in memory first: a full disk is then an OSError (ENOSPC)
            torch.save(rng_state(), rng)
            (tmp / f"rng-{self.ctx.rank:05d}.pt").write_bytes(rng.getvalue())
            state_dict = {"model": model_sd, "optim": optim_sd}
            if self._executor is not None:
                state_dict = self._stage(state_dict)
        write = functools.partial(self._write, state_dict, tmp, final, meta, before_commit)
        if self._executor is None:
            with _saving(tmp, self.ctx):
                write()
        else:
            self._pending = (self._executor.submit(write), tmp)
        return final

    def prepare(
        self, *, model: nn.Module, optimizer: torch.optim.Optimizer, trainable_only: bool = False
    ) -> None:
        """Background saves only: allocate (and on a GPU pin) the CPU buffers of the staged copy
        now, in the writer's thread while training goes on, so that the first save only copies
        into them (for the 1.1B's 13 GB, allocating and pinning at the first save stopped
        training for 5-10 s; bench/RESULTS.md). Call it when the optimizer has its state (after
        a step); it does nothing once the buffers are there or on their way."""
        if self._executor is None or self._buffers is not None or self._allocating is not None:
            return
        options = StateDictOptions(ignore_frozen_params=trainable_only)
        model_sd, optim_sd = get_state_dict(model, optimizer, options=options)
        state_dict = {"model": model_sd, "optim": optim_sd}
        future = self._executor.submit(_create_cpu_state_dict, state_dict, pin_memory=self._pin)
        self._allocating = future, _layout(state_dict)

    @property
    def preparing(self) -> bool:
        """Whether `prepare`'s buffers are still being allocated."""
        return self._allocating is not None and not self._allocating[0].done()

    @property
    def in_flight(self) -> bool:
        """Whether a background save is still being written or committed."""
        return self._pending is not None and not self._pending[0].done()

    def wait(self) -> None:
        """Wait for the save in flight, if any: in place, or CheckpointError on every rank."""
        if self._pending is None:
            return
        (future, tmp), self._pending = self._pending, None
        with _saving(tmp, self.ctx):
            future.result()

    def _stage(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """`state_dict` copied into this writer's CPU buffers: allocated (pinned on a GPU) by
        `prepare` (waited for here) or else at the first save, and again only when the state's
        layout changes, overwritten by every other save (on a GPU without blocking, then one
        synchronize) once the save before is written. The copy is a new dict over the buffers,
        so its other values (the learning rate) are this save's; a DTensor keeps its placement
        with its local shard on the CPU, as DCP writes it."""
        layout = _layout(state_dict)
        if self._allocating is not None:
            (future, prepared), self._allocating = self._allocating, None
            buffers = future.result()
            if prepared == layout:
                self._buffers, self._layout = buffers, layout
        if layout != self._layout:
            self._buffers = None  # the old buffers go before the new ones are allocated
            self._buffers = _create_cpu_state_dict(state_dict, pin_memory=self._pin)
            self._layout = layout
        staged = _copy_state_dict(state_dict, self._buffers, non_blocking=self._pin)
        if self._pin:
            torch.cuda.synchronize(self.ctx.device)
        return staged

    def _write(self, state_dict, tmp: Path, final: Path, meta: dict, before_commit) -> None:
        """The shards (DCP, collective over the writer's group), then rank 0's commit."""
        with _single_process_ok():
            dcp.save(state_dict, checkpoint_id=tmp, process_group=self._group,
                     no_dist=self.ctx.mesh is None)  # fmt: skip
        if before_commit is not None:
            before_commit()
        if self.ctx.is_main:
            _commit(tmp, final, meta, keep_last=self.keep_last)
            if self.on_commit is not None:
                self.on_commit()

    def _close(self) -> None:
        self._allocating = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        if self._group is not None:
            dist.destroy_process_group(self._group)
        self._buffers = self._layout = None


def _layout(value: Any) -> Any:
    """A state dict's structure and each tensor's dtype and shape (a DTensor's global and local
    shape and placements): what its staged copy's buffers are allocated for."""
    if isinstance(value, Mapping):
        return {key: _layout(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_layout(item) for item in value]
    if isinstance(value, DTensor):
        return value.dtype, value.shape, value.to_local().shape, value.placements
    if isinstance(value, torch.Tensor):
        return value.dtype, value.shape
    return None  # a number or a string: the copy takes this save's


def _commit(tmp: Path, final: Path, meta: dict[str, Any], *, keep_last: int) -> None:
    """Rank 0: meta.json last, the rename into place, `latest`, and the pruning."""
    (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    _write_latest(final.parent, final.name)
    for old in list_checkpoints(final.parent)[:-keep_last]:
        shutil.rmtree(old)


@contextlib.contextmanager
def _saving(tmp: Path, ctx: Distributed) -> Iterator[None]:
    """A step of a save that every rank ends together: when it fails on any rank, the `.tmp`
    folder is removed and every rank raises (a disk full or a read-only folder as one
    CheckpointError; any other failure is a bug and raises as itself on the rank it hit)."""
    failure = None
    try:
        yield
    except FAILURES as err:
        failure = err
    if ctx.agree(failure is None):
        return
    if ctx.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
    folder = tmp.parent
    code = _errno(failure)
    if code in (errno.ENOSPC, errno.EDQUOT):
        why = "no space left on device"
    elif code in (errno.EROFS, errno.EACCES, errno.EPERM):
        why = os.strerror(code).lower()
    elif failure is not None:
        raise failure
    else:
        why = "it failed on another rank (see that rank's message)"
    raise CheckpointError(
        f"saving a checkpoint into {folder} failed: {why}; the unfinished {tmp.name} was removed "
        "and the checkpoints before it are intact. Free space or make the folder writable, then "
        "resume (tinylab train again)"
    ) from failure


def load_checkpoint(
    path: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    ctx: Distributed,
    restore_rng: bool = True,
    trainable_only: bool = False,
) -> TrainState:
    """Load model (and optimizer, and this rank's RNG) from `path`; returns its TrainState.
    With `trainable_only` (a checkpoint saved so) the trainable parameters are loaded, all of
    them, and the frozen ones are left as they are."""
    path, alone = Path(path), ctx.mesh is None
    options = StateDictOptions(ignore_frozen_params=trainable_only, strict=not trainable_only)
    if optimizer is None:
        model_sd = get_model_state_dict(model, options=options)
        with _loading(path, ctx), _single_process_ok():
            dcp.load({"model": model_sd}, checkpoint_id=path, no_dist=alone)
            set_model_state_dict(model, model_sd, options=options)
    else:
        model_sd, optim_sd = get_state_dict(model, optimizer, options=options)
        with _loading(path, ctx), _single_process_ok():
            dcp.load({"model": model_sd, "optim": optim_sd}, checkpoint_id=path, no_dist=alone)
            set_state_dict(
                model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd,
                options=options,
            )  # fmt: skip
    rng_file = path / f"rng-{ctx.rank:05d}.pt"
    with _loading(path, ctx):
        if restore_rng and rng_file.is_file():
            set_rng_state(torch.load(rng_file, weights_only=False))
    return TrainState(**read_meta(path)["state"])


def load_optimizer(
    path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, ctx: Distributed
) -> None:
    """Load only the AdamW state of `path` into `optimizer` (over `model`, weights loaded)."""
    optim_sd = get_optimizer_state_dict(model, optimizer)
    with _loading(Path(path), ctx), _single_process_ok():
        dcp.load({"optim": optim_sd}, checkpoint_id=Path(path), no_dist=ctx.mesh is None)
        set_optimizer_state_dict(model, optimizer, optim_sd)


@contextlib.contextmanager
def _loading(path: Path, ctx: Distributed) -> Iterator[None]:
    """A load that every rank ends together: a failure on any rank (a truncated or corrupt
    shard, ...) is one CheckpointError on every rank, which a resume takes as "not intact"."""
    failure = None
    try:
        yield
    except FAILURES as err:
        failure = err
    if not ctx.agree(failure is None):
        cause = "it failed on another rank" if failure is None else _cause(failure)
        raise CheckpointError(f"checkpoint {path} does not load: {cause}") from failure


def _root(err: BaseException) -> BaseException:
    """The exception under DCP's CheckpointException (which wraps each rank's failure)."""
    while isinstance(err, CheckpointException) and err.failures:
        err = next(iter(err.failures.values()))[0]
    return err


def _cause(err: BaseException) -> str:
    """One line for a failure: its type and the first line of its message."""
    root = _root(err)
    lines = str(root).strip().splitlines()
    return f"{type(root).__name__}: {lines[0] if lines else ''}"


def _errno(err: BaseException | None) -> int | None:
    """The errno of an OSError anywhere in a failure (DCP's wrapping and chaining included)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        err = _root(err)
        if isinstance(err, OSError) and err.errno is not None:
            return err.errno
        err = err.__cause__ or err.__context__
    return None


def rng_state() -> dict[str, Any]:
    """Every RNG this process may draw from."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(saved: dict[str, Any]) -> None:
    random.setstate(saved["python"])
    np.random.set_state(saved["numpy"])
    torch.set_rng_state(saved["torch"])
    if saved["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda"])


def _write_latest(folder: Path, name: str) -> None:
    write_atomic(folder / LATEST, (name + "\n").encode("utf-8"))


@contextlib.contextmanager
def _single_process_ok():
    """DCP warns on every single-process save/load, which is what world size 1 means here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield
