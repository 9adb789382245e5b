"""LoRA stages: a peft adapter trained on the frozen weights of the parent stage.

A stage with `adapter: lora` builds the model, loads its parent's weights into it, wraps it with
peft (`get_peft_model`: base frozen, LoRA A/B trainable) and trains only the adapter with the
same loop, data, schedule and FSDP2 sharding (per decoder layer of the wrapped Llama). At the end
the stage writes the adapter in peft's format (`<stage>/adapter/`) and the merged weights as the
usual HF export (`<stage>/hf/`), which evaluation and later stages read unchanged.

Checkpoints of an adapter stage hold only the trainable parameters, their AdamW state, the
counters and RNG, and the meta names the parent checkpoint the frozen base came from. Trade-off:
the base is reloaded from that parent checkpoint on resume instead of being stored again, so a
checkpoint is ~1% of a full one (the point of LoRA at 1.1B parameters), at the price of needing
the parent's checkpoint to stay; the training recipe records its name and digest, so a changed
parent is refused at resume. A stage whose parent is an adapter stage gets the merged weights:
the parent's base is loaded (recursively), the adapter applied and merged.

    tinylab train params/stages/demo/continual-mathcode-lora.yaml --run-dir outputs/runs/demo
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

from torch import nn

from tinylab.config import AdapterConfig, ConfigError, StageConfig
from tinylab.train.checkpoint import load_checkpoint, read_meta
from tinylab.train.parallel import Distributed

ADAPTER_DIR = "adapter"


def lora_config(adapter: AdapterConfig):
    """peft's LoraConfig for a stage's adapter params."""
    from peft import LoraConfig

    return LoraConfig(
        r=adapter.rank,
        lora_alpha=adapter.alpha,
        lora_dropout=adapter.dropout,
        target_modules=list(adapter.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def add_lora(model: nn.Module, adapter: AdapterConfig) -> nn.Module:
    """Wrap a LlamaForCausalLM with a fresh LoRA adapter (A random from the torch RNG, B = 0);
    only the adapter's parameters require grad."""
    from peft import get_peft_model

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        wrapped = get_peft_model(model, lora_config(adapter))
    for name, param in wrapped.named_parameters():
        param.requires_grad_("lora_" in name)
    return wrapped


def llama_of(model: nn.Module) -> nn.Module:
    """The LlamaForCausalLM inside a peft wrapper (or the model itself): what FSDP shards.
    Duck-typed, so full-weights stages never import peft."""
    unwrap = getattr(model, "get_base_model", None)
    return model if unwrap is None else unwrap()


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Trainable and total parameters (global sizes, also when sharded)."""
    params = list(model.parameters())
    return {
        "trainable_params": sum(p.numel() for p in params if p.requires_grad),
        "total_params": sum(p.numel() for p in params),
    }


def adapter_meta(stage: StageConfig, base: Path | None) -> dict[str, Any] | None:
    """What an adapter stage's checkpoint meta records: the adapter and its base checkpoint."""
    if stage.adapter is None or base is None:  # no base: preloaded_weights() raised already
        return None
    return {
        "config": stage.adapter.model_dump(mode="json"),
        "base": {"stage": base.parent.parent.name, "checkpoint": base.name},
    }


def is_adapter_checkpoint(path: Path) -> bool:
    return read_meta(path).get("adapter") is not None


def preloaded_weights(stage: StageConfig, *, own: Path | None, origin: Path | None) -> Path | None:
    """The checkpoint whose (merged) weights go into the plain model before wrapping and
    sharding: the parent's for an adapter stage (fresh or resumed), an adapter parent's for a
    fresh stage carrying its weights; None when restore() loads weights the usual way."""
    if stage.adapter is not None:
        if origin is None:
            raise ConfigError(
                f"stage {stage.name!r} trains an adapter on stage {stage.init_from.stage!r}'s "
                "weights, but that stage has no checkpoint in this run folder; train it first"
            )
        return origin
    carries = stage.init_from is not None and "weights" in stage.init_from.carry
    if own is None and origin is not None and carries and is_adapter_checkpoint(origin):
        return origin
    return None


def check_start(stage: StageConfig, *, own: Path | None, parent: Path | None) -> None:
    """ConfigError when a checkpoint cannot start this stage because of an adapter mismatch."""
    if own is not None:
        saved = read_meta(own).get("adapter")
        if (saved is None) != (stage.adapter is None):
            held = "a LoRA adapter" if saved else "full weights"
            wanted = "a LoRA adapter" if stage.adapter else "full weights"
            raise ConfigError(
                f"stage {stage.name!r}: its checkpoint {own} holds {held}, but the params now "
                f"train {wanted} (adapter: {_show(stage.adapter)}); start the stage over "
                "(tinylab train --fresh) or use a new run folder"
            )
    elif (
        parent is not None
        and "optimizer" in stage.init_from.carry
        and is_adapter_checkpoint(parent)
    ):
        raise ConfigError(
            f"stage {stage.name!r} carries 'optimizer' from stage {stage.init_from.stage!r}, "
            "which trained a LoRA adapter: that AdamW state covers only the adapter. Set "
            "init_from.carry to [weights, schedule] (the merged weights are carried)"
        )


def _show(adapter: AdapterConfig | None) -> str:
    return "null" if adapter is None else adapter.type


def load_weights(path: Path, model: nn.Module, ctx: Distributed) -> None:
    """Load a checkpoint's weights into a plain (unwrapped, unsharded) Llama: full weights as
    they are; an adapter checkpoint as its base's weights with the adapter merged in."""
    adapter = read_meta(path).get("adapter")
    if adapter is None:
        load_checkpoint(path, model=model, optimizer=None, ctx=ctx, restore_rng=False)
        return
    base = path.parent.parent.parent / adapter["base"]["stage"] / "checkpoints"
    base = base / adapter["base"]["checkpoint"]
    if not base.is_dir():
        raise ConfigError(
            f"adapter checkpoint {path} trained on {base}, which is gone; the merged weights "
            "cannot be rebuilt without it (retrain that stage's parent chain in this run folder)"
        )
    load_weights(base, model, ctx)
    wrapped = add_lora(model, AdapterConfig(**adapter["config"]))
    load_checkpoint(path, model=wrapped, optimizer=None, ctx=ctx, restore_rng=False)
    merge(wrapped)


def merge(wrapped: nn.Module) -> nn.Module:
    """Fold the adapter into the base weights; returns the plain Llama, all weights trainable."""
    model = wrapped.merge_and_unload()
    for param in model.parameters():
        param.requires_grad_(True)
    return model


def export_merged(
    export: nn.Module, full_state: dict, adapter: AdapterConfig, stage_dir: Path
) -> nn.Module:
    """Load a wrapped model's full state dict into a fresh CPU Llama (`export`), write the
    adapter in peft's format to `<stage>/adapter/` and return the merged Llama."""
    wrapped = add_lora(export, adapter)
    wrapped.load_state_dict(full_state)
    folder = stage_dir / ADAPTER_DIR
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    wrapped.save_pretrained(partial)
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return merge(wrapped)
