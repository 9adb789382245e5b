"""Checkpoints: a TrainState saved and restored whole, atomically, on any world size.

A checkpoint is a folder `checkpoints/step-XXXXXXXX/` (XXXXXXXX = optimizer steps since the first
stage) holding the model and AdamW state as torch.distributed.checkpoint (DCP) shards, one RNG
file per rank, and `meta.json` (the TrainState counters, the model config, the world size,
whether the stage finished, and what the caller adds: tinylab.train.start's adapter record). With
`trainable_only` (a LoRA stage) only the trainable parameters are stored. All ranks write into
`step-XXXXXXXX.tmp/`; rank 0 adds meta.json last and renames the folder into place, then points
`checkpoints/latest` at it and deletes all but the newest `keep_last`. A crash at any moment
leaves either the old or the new checkpoint complete; a leftover `.tmp` folder is ignored and
removed on the next start.

Trade-off: DCP stores every tensor with its global shape and offsets, so a checkpoint written by
2 ranks loads on 1 (or 8) without a conversion step, at the price of one file per rank and a
planning collective on save; the HF export at the end of a stage is the portable format.

    ls outputs/runs/demo/stages/base/checkpoints/
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import shutil
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
    set_state_dict,
)

from tinylab.config.loader import ConfigError
from tinylab.config.model import ModelConfig
from tinylab.config.stage import StageConfig
from tinylab.files import write_atomic
from tinylab.train.parallel import Distributed

PREFIX, TMP_SUFFIX, META, LATEST = "step-", ".tmp", "meta.json", "latest"
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
        if p.is_dir() and not p.name.endswith(TMP_SUFFIX) and (p / META).is_file()
    ]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = list_checkpoints(folder)
    return found[-1] if found else None


def read_meta(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / META).read_text())


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
            f"({'; '.join(diffs)}); use the same model params, a new run folder, or resume=False "
            "to start over"
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


def check_recipe(checkpoint: Checkpoint, recipe: dict[str, Any], stage_name: str) -> None:
    """ConfigError when a checkpoint was trained under other params than the stage has now."""
    path, saved = checkpoint.path, checkpoint.meta.get("recipe")
    if saved is None or saved == recipe:
        return
    changed = sorted(k for k in set(saved) | set(recipe) if saved.get(k) != recipe.get(k))
    raise ConfigError(
        f"stage {stage_name!r}: its checkpoint {path} was trained with other params "
        f"({', '.join(changed)} changed since); resuming would keep that training under the new "
        "params. Start the stage over (tinylab train --fresh, or delete its folder "
        f"{path.parent.parent}) or use a new run folder"
    )


def save_checkpoint(
    folder: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    model_cfg: ModelConfig,
    recipe: dict[str, Any] | None = None,
    extra_meta: Mapping[str, Any] | None = None,
    trainable_only: bool = False,
    finished: bool,
    keep_last: int,
    ctx: Distributed,
    before_commit=None,
) -> Path:
    """Write a checkpoint of `state` atomically; returns its folder. Collective on all ranks.
    `before_commit` (tests) runs after the shards are written and before the rename;
    `extra_meta` goes into meta.json; `trainable_only` stores only the trainable parameters."""
    final = step_dir(folder, state.step)
    tmp = final.with_name(final.name + TMP_SUFFIX)
    if ctx.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    ctx.barrier()
    options = StateDictOptions(ignore_frozen_params=trainable_only)
    model_sd, optim_sd = get_state_dict(model, optimizer, options=options)
    alone = ctx.mesh is None  # no process group: DCP without collectives
    with _single_process_ok():
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp, no_dist=alone)
    torch.save(rng_state(), tmp / f"rng-{ctx.rank:05d}.pt")
    ctx.barrier()
    if before_commit is not None:
        before_commit()
    if ctx.is_main:
        meta = {
            "state": asdict(state),
            "model": model_cfg.model_dump(mode="json"),
            "recipe": recipe,
            "recipe_digest": None if recipe is None else recipe_digest(recipe),
            **(extra_meta or {}),
            "world_size": ctx.world_size,
            "finished": finished,
        }
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        _write_latest(Path(folder), final.name)
        for old in list_checkpoints(folder)[:-keep_last]:
            shutil.rmtree(old)
    ctx.barrier()
    return final


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
        with _single_process_ok():
            dcp.load({"model": model_sd}, checkpoint_id=path, no_dist=alone)
        set_model_state_dict(model, model_sd, options=options)
    else:
        model_sd, optim_sd = get_state_dict(model, optimizer, options=options)
        with _single_process_ok():
            dcp.load({"model": model_sd, "optim": optim_sd}, checkpoint_id=path, no_dist=alone)
        set_state_dict(
            model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd, options=options
        )
    rng_file = path / f"rng-{ctx.rank:05d}.pt"
    if restore_rng and rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    return TrainState(**read_meta(path)["state"])


def load_optimizer(
    path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, ctx: Distributed
) -> None:
    """Load only the AdamW state of `path` into `optimizer` (over `model`, weights loaded)."""
    optim_sd = get_optimizer_state_dict(model, optimizer)
    with _single_process_ok():
        dcp.load({"optim": optim_sd}, checkpoint_id=Path(path), no_dist=ctx.mesh is None)
    set_optimizer_state_dict(model, optimizer, optim_sd)


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
