"""Perplexity and bits per byte per domain on the held-out windows of a prepared data folder.

The windows are the ones training validates on (`PackedData.validation_windows`: up to
`max_windows` per domain spread evenly over the held-out split, seq_len+1 tokens, predicting
tokens 1..seq_len), so with the stage's `validation.max_windows` this is the same number as
the stage's last validation (the report's held-out bits per byte). Bits per byte is training's
formula too (`tinylab.data.packed.bits_per_byte`: nats/token / ln 2 / the domain's held-out
bytes per token), which makes tokenizers comparable. The trade-off: packed windows cut documents at
arbitrary points, so early tokens of a window see a short context (slightly pessimistic against
a sliding-window evaluation), in exchange for reading the exact bytes the training run held out.
Each window's nats, bytes and bits per byte are kept too (`window_records`, stored as the row's
samples), so tinylab.analysis.effects can put a bootstrap interval on a difference of bpb.

    tinylab eval HF_DIR --params params/eval/demo.yaml --out DIR   # with a run's data folder
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from tinylab.data.packed import bits_per_byte

if TYPE_CHECKING:
    from tinylab.data import PackedData


@torch.no_grad()
def window_nll(model: PreTrainedModel, windows: np.ndarray, *, batch_size: int = 8) -> np.ndarray:
    """Mean negative log-likelihood (nats/token) of each window's tokens 1..T given the rest."""
    model.eval()
    out = []
    for start in range(0, len(windows), batch_size):
        batch = torch.as_tensor(windows[start : start + batch_size], device=model.device)
        logits = model(input_ids=batch[:, :-1], use_cache=False).logits.float()
        nll = F.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none")
        out.append(nll.mean(dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def domain_perplexity(
    model: PreTrainedModel, data: PackedData, *, max_windows: int = 64, batch_size: int = 8
) -> list[tuple[dict, list[dict]]]:
    """One (row, windows) pair per domain: the row holds bits per byte (headline), perplexity,
    nats/token and windows used; `windows` one record per held-out window (`window_records`)."""
    out = []
    for domain, refs in sorted(data.validation_windows(max_windows).items()):
        windows = np.stack([data.window(source, i, "val") for source, i in refs])
        nll = window_nll(model, windows, batch_size=batch_size)
        bytes_per_token = data.bytes_per_token(domain)
        mean = float(nll.mean())
        stderr = float(nll.std(ddof=1) / math.sqrt(len(nll))) if len(nll) > 1 else None
        bpb = bits_per_byte(mean, bytes_per_token)
        row = {
            "task": f"perplexity/{domain}",
            "metric": "bits_per_byte",
            "value": bpb,
            "stderr": None if stderr is None else bits_per_byte(stderr, bytes_per_token),
            "n": int(len(nll)),
            "shots": 0,
            "metrics": {
                "bits_per_byte": bpb,
                "perplexity": math.exp(mean),
                "nats_per_token": mean,
                "tokens": int(len(nll) * data.seq_len),
            },
        }
        out.append(
            (row, window_records(refs, nll, seq_len=data.seq_len, bytes_per_token=bytes_per_token))
        )
    return out


def window_records(
    refs: list[tuple[str, int]], nll: np.ndarray, *, seq_len: int, bytes_per_token: float
) -> list[dict]:
    """One record per window, for a paired bootstrap over windows (tinylab.analysis.effects):
    its id `<source>/<index>` (stable for a data folder and max_windows), nats summed over its
    seq_len predicted tokens, tokens, bytes (tokens x the domain's held-out bytes per token, the
    ratio the domain's bpb uses, so that sum(nats) / sum(bytes) / ln 2 and the mean of the
    windows' bits_per_byte are the domain's bpb) and bits_per_byte."""
    return [
        {
            "window": f"{source}/{index}",
            "nats": float(value) * seq_len,
            "tokens": seq_len,
            "bytes": seq_len * bytes_per_token,
            "bits_per_byte": bits_per_byte(float(value), bytes_per_token),
        }
        for (source, index), value in zip(refs, nll, strict=True)
    ]
