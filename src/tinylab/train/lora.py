"""LoRA: a model transform that wraps a built Llama with a peft adapter, and its undoing.

A stage with `adapter: lora` builds the model, loads its parent's weights into it, and `apply`
wraps it (`get_peft_model`: base frozen, LoRA A/B trainable); the same loop, data, schedule and
FSDP2 sharding (per decoder layer of the wrapped Llama) then train only the adapter. At the end
`export` writes the adapter in peft's format (`<stage>/adapter/`) and returns the merged Llama
for the usual HF export (`<stage>/hf/`), which evaluation and later stages read unchanged;
`merge` folds an adapter into its base, as a child stage's start does with the chain of
checkpoints under it (tinylab.train.start).

Trade-off: an adapter stage's checkpoints hold only the trainable parameters (~1% of a full one
at 1.1B parameters) and name the checkpoint the frozen base came from, which is reloaded on
resume instead of being stored again; that checkpoint has to stay, and the training recipe
records its name and digest, so a changed parent is refused at resume.

    tinylab train params/stages/demo/continual-mathcode-lora.yaml --run-dir outputs/runs/demo
"""

from __future__ import annotations

import warnings
from pathlib import Path

from torch import nn

from tinylab.config.stage import AdapterConfig
from tinylab.files import replace_dir_atomic


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


def apply(model: nn.Module, adapter: AdapterConfig) -> nn.Module:
    """Wrap a LlamaForCausalLM with a fresh LoRA adapter (A random from the torch RNG, B = 0);
    only the adapter's parameters require grad."""
    from peft import get_peft_model

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        wrapped = get_peft_model(model, lora_config(adapter))
    for name, param in wrapped.named_parameters():
        param.requires_grad_("lora_" in name)
    return wrapped


def merge(wrapped: nn.Module) -> nn.Module:
    """Fold the adapter into the base weights; returns the plain Llama, all weights trainable."""
    model = wrapped.merge_and_unload()
    for param in model.parameters():
        param.requires_grad_(True)
    return model


def export(model: nn.Module, full_state: dict, adapter: AdapterConfig, folder: Path) -> nn.Module:
    """Load a wrapped model's full state dict into a fresh CPU Llama (`model`), write the
    adapter in peft's format to `folder` (replaced whole) and return the merged Llama."""
    wrapped = apply(model, adapter)
    wrapped.load_state_dict(full_state)
    with replace_dir_atomic(folder) as staging:
        wrapped.save_pretrained(staging)
    return merge(wrapped)
