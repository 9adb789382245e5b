"""The weighted mixture: which source, and which of its windows, each global window reads.

Window w of a stage (w = 0, 1, ...; the trainer's step s reads windows [s*G, (s+1)*G)) is
decided by (seed, w) alone: a counter-based hash (splitmix64) of (seed, w) gives a uniform
number that picks the source by the mixture weights at token position w * seq_len (weights move
linearly from `ramp.start` to the target over `ramp.tokens`, as TinyLlama v1.1's continual
stage ramps its domain share over the first ~6B tokens). The window read is the source's k-th
draw (k = how often it was picked before w), mapped through a seeded permutation of its
windows per epoch (a Feistel network, O(1) memory at any size): a source's windows are each
read once per epoch before any repeats. Resuming at w, or splitting windows among any number
of ranks, therefore reads exactly the same global sequence, and ranks never read the same
window within an epoch (the reference code's per-rank file shuffles read some files twice).

Trade-off: k needs the picks of all earlier windows; they are computed vectorised in chunks of
65,536 windows and the per-chunk counts are cached, so a resume deep into a stage costs one
pass of hashing (about 1 s per 10^8 windows), and sequential reads cost nothing extra.

    s = MixtureSampler({"slimpajama": 0.75, "starcoder": 0.15, "proofpile": 0.1},
                       num_windows=..., seq_len=2048, seed=3407, ramp=stage.ramp)
    s.source_at(123_456)  # -> ("starcoder", 98_765)
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Mapping

import numpy as np

from tinylab.config.data import RampConfig
from tinylab.config.stage import StageConfig
from tinylab.data.errors import DataError

CHUNK = 1 << 16  # windows per vectorised block and per cached count
_M64 = (1 << 64) - 1


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on a uint64 array (array arithmetic wraps silently)."""
    z = np.asarray(x, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _mix64_int(x: int) -> int:
    """The same finaliser on one Python int (for keys)."""
    z = (x + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _key(*parts: int) -> int:
    """One 64-bit key from integers (seeds, ids), chained through the finaliser."""
    key = 0
    for part in parts:
        key = _mix64_int(key ^ (part & _M64))
    return key


def uniform(seed: int, windows: np.ndarray) -> np.ndarray:
    """A uniform float in [0, 1) per window index, a pure function of (seed, window)."""
    bits = mix64(np.asarray(windows, dtype=np.uint64) ^ np.uint64(_key(seed, 0x6D6978)))
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


def permute(positions: np.ndarray, *, n: int, key: int) -> np.ndarray:
    """A keyed bijection of [0, n) applied to `positions`: 4-round Feistel on the smallest even
    power of two >= n, cycle-walking until the result falls below n."""
    half = max(1, math.ceil(math.log2(max(n, 2)) / 2))
    mask = np.uint64((1 << half) - 1)
    keys = [np.uint64(_key(key, r)) for r in range(4)]
    x = np.asarray(positions, dtype=np.uint64).copy()
    todo = np.ones(len(x), dtype=bool)
    while todo.any():
        y = x[todo]
        left, right = y >> np.uint64(half), y & mask
        for k in keys:
            left, right = right, left ^ (mix64(right ^ k) & mask)
        y = (left << np.uint64(half)) | right
        x[todo] = y
        todo[todo] = y >= np.uint64(n)
    return x.astype(np.int64)


def permute_one(position: int, *, n: int, key: int) -> int:
    """`permute` for one position in plain Python ints (same result, ~50x less overhead)."""
    half = max(1, math.ceil(math.log2(max(n, 2)) / 2))
    mask = (1 << half) - 1
    keys = [_key(key, r) for r in range(4)]
    x = position
    while True:
        left, right = x >> half, x & mask
        for k in keys:
            left, right = right, left ^ (_mix64_int(right ^ k) & mask)
        x = (left << half) | right
        if x < n:
            return x


def _source_id(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little")


class MixtureSampler:
    """Deterministic weighted mixture over sources' train windows (see the module docstring)."""

    def __init__(
        self,
        weights: Mapping[str, float],
        *,
        num_windows: Mapping[str, int],
        seq_len: int,
        seed: int,
        ramp: RampConfig | None = None,
        max_tokens: int | None = None,
    ):
        self.names = sorted(set(weights) | set(ramp.start if ramp else {}))
        self.target = _normalised(weights, self.names, what="mixture")
        self.start = _normalised(ramp.start, self.names, what="ramp.start") if ramp else None
        self.ramp_tokens = ramp.tokens if ramp else 0
        if ramp and max_tokens is not None and ramp.tokens > max_tokens:
            raise DataError(
                f"ramp.tokens = {ramp.tokens} exceeds the stage's max_tokens = {max_tokens}"
            )
        self.seq_len, self.seed = seq_len, seed
        self.sizes = _sizes(self.names, num_windows, self.target, self.start)
        self._ids = [_source_id(n) for n in self.names]
        self._counts = {0: np.zeros(len(self.names), dtype=np.int64)}
        self._last: tuple[int, np.ndarray, np.ndarray] | None = None

    @classmethod
    def for_stage(cls, stage: StageConfig, num_windows: Mapping[str, int]) -> MixtureSampler:
        """The sampler of a stage: its mixture, ramp and budget, seeded by the stage seed mixed
        with the stage name, so a continual stage does not replay its parent's order."""
        return cls(
            stage.mixture,
            num_windows=num_windows,
            seq_len=stage.data.seq_len,
            seed=stage_seed(stage),
            ramp=stage.ramp,
            max_tokens=stage.max_tokens,
        )

    def weights_at(self, tokens: np.ndarray | int) -> np.ndarray:
        """Mixture weights at stage token positions: shape (len(tokens), num sources)."""
        tokens = np.atleast_1d(np.asarray(tokens, dtype=np.float64))
        if self.start is None:
            return np.broadcast_to(self.target, (len(tokens), len(self.names)))
        frac = np.clip(tokens / self.ramp_tokens, 0.0, 1.0)[:, None]
        return self.start + (self.target - self.start) * frac

    def source_at(self, window: int) -> tuple[str, int]:
        """(source, index into its train windows) read at stage window `window`."""
        if window < 0:
            raise ValueError(f"window {window} is negative")
        choice, draw = self._chunk(window // CHUNK)
        source, k = int(choice[window % CHUNK]), int(draw[window % CHUNK])
        epoch, position = divmod(k, int(self.sizes[source]))
        key = _key(self.seed, self._ids[source], epoch)
        return self.names[source], permute_one(position, n=int(self.sizes[source]), key=key)

    def take(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Windows [start, stop): (source number into `names`, index) arrays, vectorised."""
        if start < 0 or stop < start:
            raise ValueError(f"bad window range [{start}, {stop})")
        sources, draws = [], []
        for chunk in range(start // CHUNK, -(-stop // CHUNK)):
            choice, draw = self._chunk(chunk)
            lo, hi = max(start - chunk * CHUNK, 0), min(stop - chunk * CHUNK, CHUNK)
            sources.append(choice[lo:hi])
            draws.append(draw[lo:hi])
        source = np.concatenate(sources) if sources else np.zeros(0, np.int64)
        draw = np.concatenate(draws) if draws else np.zeros(0, np.int64)
        return source, self._indices(source, draw)

    def realized(self, start: int, stop: int) -> dict[str, float]:
        """Share of windows [start, stop) read from each source."""
        counts = np.zeros(len(self.names), dtype=np.int64)
        for chunk in range(start // CHUNK, -(-stop // CHUNK)):
            lo, hi = max(start, chunk * CHUNK), min(stop, (chunk + 1) * CHUNK)
            counts += np.bincount(self._choices(np.arange(lo, hi)), minlength=len(self.names))
        total = max(int(counts.sum()), 1)
        return {name: int(c) / total for name, c in zip(self.names, counts, strict=True)}

    def _choices(self, windows: np.ndarray) -> np.ndarray:
        cumulative = np.cumsum(self.weights_at(windows * self.seq_len), axis=1)[:, :-1]
        return (uniform(self.seed, windows)[:, None] >= cumulative).sum(axis=1)

    def _chunk(self, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        """Source picks of one chunk and, per window, its draw number k within its source."""
        if self._last is not None and self._last[0] == chunk:
            return self._last[1], self._last[2]
        choice = self._choices(np.arange(chunk * CHUNK, (chunk + 1) * CHUNK))
        onehot = choice[:, None] == np.arange(len(self.names))[None, :]
        running = np.cumsum(onehot, axis=0)
        draw = self._counts_before(chunk)[choice] + running[np.arange(CHUNK), choice] - 1
        self._last = (chunk, choice, draw)
        return choice, draw

    def _counts_before(self, chunk: int) -> np.ndarray:
        """Picks per source in windows [0, chunk * CHUNK), from the nearest cached chunk."""
        known = max(c for c in self._counts if c <= chunk)
        counts = self._counts[known].copy()
        for c in range(known, chunk):
            windows = np.arange(c * CHUNK, (c + 1) * CHUNK)
            counts += np.bincount(self._choices(windows), minlength=len(self.names))
            self._counts[c + 1] = counts.copy()
        return counts

    def _indices(self, source: np.ndarray, draw: np.ndarray) -> np.ndarray:
        """k-th draw of a source -> its window: epoch k // n, permuted position k % n."""
        out = np.empty(len(source), dtype=np.int64)
        for s in np.unique(source):
            mask = source == s
            n = self.sizes[s]
            epochs, positions = np.divmod(draw[mask], n)
            result = np.empty(len(positions), dtype=np.int64)
            for epoch in np.unique(epochs):
                sel = epochs == epoch
                key = _key(self.seed, self._ids[s], int(epoch))
                result[sel] = permute(positions[sel], n=n, key=key)
            out[mask] = result
        return out


def stage_seed(stage: StageConfig) -> int:
    """A stage's mixture seed: its seed XOR the CRC-32 of its name, or of its original's name
    for a counterfactual (config.stage.Counterfactual), so the two read the same windows in the
    same order wherever their mixtures agree and differ only by the change declared."""
    name = stage.name if stage.counterfactual is None else stage.counterfactual.of
    return stage.seed ^ zlib.crc32(name.encode("utf-8"))


def _normalised(weights: Mapping[str, float], names: list[str], *, what: str) -> np.ndarray:
    for name, value in weights.items():
        if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise DataError(f"{what}.{name} = {value!r}: weights must be finite and >= 0")
    values = np.array([float(weights.get(n, 0.0)) for n in names])
    if values.sum() <= 0:
        raise DataError(f"{what} = {dict(weights)}: weights must not all be zero")
    return values / values.sum()


def _sizes(names, num_windows, target, start) -> np.ndarray:
    sizes = []
    for i, name in enumerate(names):
        if name not in num_windows:
            raise DataError(f"mixture names source {name!r}; the data has {sorted(num_windows)}")
        used = target[i] > 0 or (start is not None and start[i] > 0)
        if used and num_windows[name] <= 0:
            raise DataError(f"mixture gives source {name!r} weight but it has no train windows")
        sizes.append(max(int(num_windows[name]), 1))
    return np.array(sizes, dtype=np.int64)
