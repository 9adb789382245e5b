"""Which windows each rank and micro-batch reads, and where they come from.

Optimizer step s of a stage consumes the stage windows [s*G, (s+1)*G), G = global_batch_tokens
/ seq_len (the contract with tinylab.data). Rank r of W reads the contiguous block
[r*G/W, (r+1)*G/W) of them, cut into `accum_steps` micro-batches of `micro_batch_size`. The
global batch is fixed in tokens by the params, so gradient accumulation is derived:
accum = G / (micro_batch_size * W), and a combination that does not divide is a ConfigError
before any compute (the reference code's global batch silently depended on the GPU count).
Trade-off: the mean loss over all G windows is the same for every (W, micro) split up to float
rounding, which is what lets a run resume on another world size; a rank's windows are not
interleaved with its neighbours', which costs nothing since the mixture is already shuffled.
The mixture's seed mixes the stage seed with the stage name (`MixtureSampler.for_stage`),
because windows are stage-relative: a continual stage must not re-read its parent's windows in
the same order.

    plan = BatchPlan.from_stage(stage, world_size=2, rank=0)
    plan.micro_windows(first_window=0, micro=3)   # -> range(...) of stage windows
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from tinylab.config.loader import ConfigError
from tinylab.config.stage import StageConfig
from tinylab.data import MixtureSampler, PackedData
from tinylab.layout import RunLayout


@dataclass(frozen=True)
class BatchPlan:
    """How one optimizer step is split among ranks and micro-batches."""

    seq_len: int
    micro_batch_size: int
    windows_per_step: int
    world_size: int
    rank: int

    @classmethod
    def from_stage(cls, stage: StageConfig, *, world_size: int, rank: int = 0) -> BatchPlan:
        """The plan for `stage` on `world_size` ranks; ConfigError if the batch does not split."""
        seq_len, micro = stage.data.seq_len, stage.micro_batch_size
        per_round = micro * seq_len * world_size
        if stage.global_batch_tokens % per_round:
            raise ConfigError(
                f"stage {stage.name!r}: global_batch_tokens = {stage.global_batch_tokens} is not "
                f"a multiple of micro_batch_size x seq_len x world_size = {micro} x {seq_len} x "
                f"{world_size} = {per_round}; change global_batch_tokens, micro_batch_size or "
                "the number of processes"
            )
        return cls(seq_len, micro, stage.global_batch_tokens // seq_len, world_size, rank)

    @property
    def accum_steps(self) -> int:
        """Micro-batches per rank per optimizer step."""
        return self.windows_per_step // (self.micro_batch_size * self.world_size)

    @property
    def step_tokens(self) -> int:
        return self.windows_per_step * self.seq_len

    def micro_windows(self, first_window: int, micro: int) -> range:
        """Stage windows of micro-batch `micro` of this rank, for a step starting at
        `first_window`."""
        per_rank = self.micro_batch_size * self.accum_steps
        start = first_window + self.rank * per_rank + micro * self.micro_batch_size
        return range(start, start + self.micro_batch_size)


class WindowSource(Protocol):
    """What the trainer reads: stage windows, held-out windows per domain, and text stats."""

    seq_len: int
    tokenizer_dir: Path | None

    def train(self, windows: range) -> np.ndarray: ...  # (len, seq_len + 1) int64

    def realized(self, start: int, stop: int) -> dict[str, float]: ...

    def validation(self, max_windows: int) -> dict[str, list[tuple[str, int]]]: ...

    def val_window(self, source: str, index: int) -> np.ndarray: ...

    def bytes_per_token(self, domain: str) -> float: ...


class MixtureWindows:
    """Stage windows of a prepared data folder, drawn through the stage's mixture."""

    def __init__(self, data: PackedData, stage: StageConfig):
        if data.seq_len != stage.data.seq_len:
            raise ConfigError(
                f"stage {stage.name!r}: data.seq_len = {stage.data.seq_len}, but the prepared "
                f"data in {data.data_dir} has seq_len {data.seq_len}; prepare it again"
            )
        vocab = data.index.get("vocab_size", 0)
        if vocab > stage.model.vocab_size:
            raise ConfigError(
                f"stage {stage.name!r}: the tokenizer in {data.data_dir} has {vocab} tokens, more "
                f"than model.vocab_size = {stage.model.vocab_size}; use a model with a larger "
                "vocabulary or a smaller tokenizer"
            )
        self.data, self.seq_len, self.tokenizer_dir = data, data.seq_len, data.tokenizer_dir
        self.sampler = MixtureSampler.for_stage(
            stage, {s: data.num_windows(s, "train") for s in data.sources}
        )

    def train(self, windows: range) -> np.ndarray:
        sources, indices = self.sampler.take(windows.start, windows.stop)
        names = self.sampler.names
        return np.stack(
            [self.data.window(names[s], int(i)) for s, i in zip(sources, indices, strict=True)]
        )

    def realized(self, start: int, stop: int) -> dict[str, float]:
        return self.sampler.realized(start, stop)

    def validation(self, max_windows: int) -> dict[str, list[tuple[str, int]]]:
        return self.data.validation_windows(max_windows)

    def val_window(self, source: str, index: int) -> np.ndarray:
        return self.data.window(source, index, "val")

    def bytes_per_token(self, domain: str) -> float:
        return self.data.bytes_per_token(domain)


class RandomWindows:
    """Synthetic tokens, a pure function of (seed, window), for benchmarks that need no corpus.

    `uniform`: every token uniform over the vocabulary (nothing to learn). `zipf-copy`: a
    learnable stream for comparing loss curves across kernels: each token is, with even odds,
    a copy of the token `COPY_LAG` positions back (attention must find it) or a fresh draw from
    a Zipf(1.1) unigram distribution (the embedding and head must learn it).
    """

    tokenizer_dir = None
    PATTERNS = ("uniform", "zipf-copy")
    COPY_LAG = 64

    def __init__(self, *, vocab_size: int, seq_len: int, seed: int, pattern: str = "uniform"):
        if pattern not in self.PATTERNS:
            raise ValueError(f"pattern = {pattern!r}: allowed: {', '.join(self.PATTERNS)}")
        self.vocab_size, self.seq_len, self.seed = vocab_size, seq_len, seed
        self.pattern = pattern
        weights = 1.0 / np.arange(1, vocab_size + 1) ** 1.1
        self._zipf_cdf = np.cumsum(weights / weights.sum())

    def train(self, windows: range) -> np.ndarray:
        make = self._uniform if self.pattern == "uniform" else self._zipf_copy
        return np.stack([make(np.random.default_rng([self.seed, w])) for w in windows])

    def _uniform(self, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, self.vocab_size, self.seq_len + 1)

    def _zipf_copy(self, rng: np.random.Generator) -> np.ndarray:
        n, lag = self.seq_len + 1, self.COPY_LAG
        fresh = np.searchsorted(self._zipf_cdf, rng.random(n), side="right")
        fresh = np.minimum(fresh, self.vocab_size - 1)
        copy = rng.random(n) < 0.5
        tokens = fresh.copy()
        for start in range(lag, n, lag):
            block = slice(start, min(start + lag, n))
            earlier = tokens[start - lag : block.stop - lag]
            tokens[block] = np.where(copy[block], earlier, fresh[block])
        return tokens

    def realized(self, start: int, stop: int) -> dict[str, float]:
        return {"random": 1.0}

    def validation(self, max_windows: int) -> dict[str, list[tuple[str, int]]]:
        return {}

    def val_window(self, source: str, index: int) -> np.ndarray:
        raise KeyError(source)

    def bytes_per_token(self, domain: str) -> float:
        raise KeyError(domain)


def open_windows(run_dir: Path, stage: StageConfig) -> MixtureWindows:
    """The stage's windows from `<run>/data` (written by `tinylab.data.prepare`)."""
    run = RunLayout(run_dir)
    data_dir = run.data
    if not run.data_index.is_file():
        raise ConfigError(
            f"stage {stage.name!r}: no prepared data in {data_dir}; run "
            f"`tinylab prepare <data params> --out {data_dir}` first"
        )
    return MixtureWindows(PackedData.open(data_dir), stage)


def to_batch(windows: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs w[:, :-1] and targets w[:, 1:] of a (batch, seq_len + 1) window array."""
    tokens = torch.from_numpy(windows)
    if device.type == "cuda":
        tokens = tokens.pin_memory().to(device, non_blocking=True)
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
