"""Metrics: one JSON line per optimizer step, validation lines, throughput and MFU.

`<stage>/metrics.jsonl` holds records of three kinds, each written once by rank 0 and flushed:
`{"kind": "train", "step", "stage_step", "tokens", "loss", "lr", "grad_norm", "tokens_per_s",
"mfu", "peak_mem_bytes", "mixture", ...}` every `log_every_steps`,
`{"kind": "val", "step", "tokens", "domains": {domain: {"loss", "bpb", "windows"}}}` on the
validation cadence, and `{"kind": "change", "step", "stage_step", "tokens", "changes": {key:
[old, new]}}` where a resume changed params on purpose (tinylab train --accept-change). On
resume the file is cut back to the checkpoint's step (dropping a torn last line), so each
(kind, step) appears exactly once. TensorBoard events are written alongside when the stage asks
for them and the package is installed. The one reader is tinylab.layout.read_metrics.

Trade-off: MFU = tokens/s x FLOPs/token / (peak x devices) with the project's FLOP convention
(tinylab.model.flops_per_token); it is null when no peak is known (CPU, unknown GPU) rather than
a number against a made-up peak.

    python -c "from tinylab.layout import read_metrics; print(read_metrics('RUN/stages/base'))"
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path
from typing import Any

import torch

from tinylab.config.stage import ParallelConfig
from tinylab.files import write_atomic

H100_BF16_PEAK = 989e12  # dense bf16 FLOP/s, H100 SXM (docs/PAPER.md, "Throughput claims")


class MetricsLog:
    """Append-only JSONL (and optional TensorBoard) writer; a no-op off rank 0."""

    def __init__(self, path: Path, *, enabled: bool, tensorboard: Path | None = None):
        """`tensorboard`: the folder for TensorBoard events, or None for none."""
        self.path, self.enabled = Path(path), enabled
        self._tb = _tensorboard(tensorboard) if enabled and tensorboard is not None else None

    def rewind(self, step: int | None) -> None:
        """Keep only whole records with step <= `step` (None: start an empty file); a change
        record at `step` goes too (a resume wrote it after that step's checkpoint)."""
        if not self.enabled:
            return
        kept = [] if step is None else [r for r in _parse(self.path) if _before(r, step)]
        write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode("utf-8"))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            _to_tensorboard(self._tb, record)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def peak_flops(parallel: ParallelConfig, device: torch.device) -> float | None:
    """Peak FLOP/s per device for MFU: the configured value, else H100/H200 bf16 (also for fp8,
    so that MFU compares like for like with bf16 runs), else None."""
    if parallel.peak_flops is not None:
        return parallel.peak_flops
    if device.type == "cuda" and parallel.precision != "fp32":
        name = torch.cuda.get_device_name(device)
        if "H100" in name or "H200" in name:
            return H100_BF16_PEAK
    return None


def mfu(
    tokens_per_s: float, flops_per_token: int, peak: float | None, world_size: int
) -> float | None:
    """Model FLOPs utilisation, or None without a known peak."""
    if peak is None:
        return None
    return tokens_per_s * flops_per_token / (peak * world_size)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak allocated GPU memory on CUDA; the process's peak resident set size on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def _before(record: dict[str, Any], step: int) -> bool:
    return record["step"] < step or (record["step"] == step and record["kind"] != "change")


def _parse(path: Path) -> list[dict[str, Any]]:
    """Whole records of a possibly torn file (a crash can cut the last line)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def _tensorboard(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("tensorboard is not installed; writing metrics.jsonl only", file=sys.stderr)
        return None
    return SummaryWriter(str(folder))


def _to_tensorboard(writer, record: dict[str, Any]) -> None:
    step = record["step"]
    if record["kind"] == "train":
        for key in ("loss", "lr", "grad_norm", "tokens_per_s", "mfu"):
            if record.get(key) is not None:
                writer.add_scalar(f"train/{key}", record[key], step)
    else:
        for domain, values in record["domains"].items():
            writer.add_scalar(f"val/{domain}/loss", values["loss"], step)
            writer.add_scalar(f"val/{domain}/bpb", values["bpb"], step)
    writer.flush()
