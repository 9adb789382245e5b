"""Probe a trained model by hand: load any stage or HF folder, generate text, and see which
tokens of a chosen text it finds hard (per-token loss).

    from tinylab.analysis.probe import load_for_probing, generate, token_losses
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from tinylab.analysis.runs import Run, final_validation
from tinylab.config.loader import ConfigError, project_path
from tinylab.layout import StageLayout
from tinylab.model import load_hf


def find_hf_folder(path: Path | str) -> Path:
    """An HF folder from a run's stage folder (stages/<name>/hf) or an HF folder itself
    (relative paths: from the project root)."""
    path = project_path(path)
    for candidate in (path, StageLayout(path).hf):
        if (candidate / "config.json").is_file():
            return candidate
    raise ConfigError(
        f"{path}: no HF model here; give an HF folder (with config.json) or a stage folder of a "
        "run whose training finished (it holds hf/)"
    )


def load_for_probing(path: Path | str) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """The model (eval mode, fp32, CPU or the first GPU) and its tokenizer."""
    folder = find_hf_folder(path)
    model = load_hf(folder, attention="sdpa").eval()
    if torch.cuda.is_available():
        model = model.cuda()
    return model, AutoTokenizer.from_pretrained(folder)


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.8,
    top_p: float = 0.95,
    seed: int = 0,
) -> str:
    """Continue `prompt`; temperature 0 is greedy. Returns the new text only."""
    torch.manual_seed(seed)
    ids = tokenizer(prompt, return_tensors="pt").input_ids.to(model.device)
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_p": top_p}
        if temperature > 0
        else {"do_sample": False}
    )
    out = model.generate(
        ids, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.eos_token_id, **sampling
    )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


@torch.no_grad()
def token_losses(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, text: str
) -> pd.DataFrame:
    """Loss (nats) of every token of `text` given the ones before it (the first has none)."""
    ids = tokenizer(text, return_tensors="pt").input_ids.to(model.device)
    if ids.shape[1] < 2:
        raise ConfigError(f"text {text!r}: must hold at least two tokens to score one")
    logits = model(ids, use_cache=False).logits[0, :-1].float()
    losses = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")
    tokens = tokenizer.convert_ids_to_tokens(ids[0, 1:].tolist())
    return pd.DataFrame(
        {"position": range(1, ids.shape[1]), "token": tokens, "loss": losses.cpu().numpy()}
    )


def last_validation(run: Run) -> pd.DataFrame:
    """Bits per byte by domain (columns) at the last validation of every stage (rows)."""
    return final_validation(run).pivot_table(index="stage", columns="domain", values="bpb")


def token_loss_figure(losses: pd.DataFrame, *, per_row: int = 24) -> plt.Figure:
    """The tokens of a text as a grid of cells coloured by their loss."""
    rows = (len(losses) + per_row - 1) // per_row
    fig, ax = plt.subplots(figsize=(per_row * 0.55, rows * 0.42 + 0.6))
    vmax = max(float(losses["loss"].max()), 1e-6)
    cmap = plt.get_cmap("magma_r")
    for i, (token, loss) in enumerate(zip(losses["token"], losses["loss"], strict=True)):
        row, col = divmod(i, per_row)
        ax.add_patch(plt.Rectangle((col, -row), 1, 1, color=cmap(loss / vmax)))
        ax.text(
            col + 0.5,
            -row + 0.5,
            token[:6],
            ha="center",
            va="center",
            fontsize=6,
            color="white" if loss / vmax > 0.5 else "black",
        )
    ax.set_xlim(0, per_row)
    ax.set_ylim(-rows + 1, 1)
    ax.set_axis_off()
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, vmax))
    fig.colorbar(sm, ax=ax, label="loss (nats)", fraction=0.02)
    return fig
