"""Kernel profiles of the training loop's own steps (`--profile-steps FIRST-LAST`).

`StepProfiler` runs torch.profiler (CPU and CUDA activities, input shapes recorded) over stage
steps FIRST..LAST of the real loop, the device synchronized where it starts and where it stops,
and rank 0 writes `<stage>/profile/summary.json` and `trace.json.gz` (open it in Perfetto or
chrome://tracing). `summarize` turns a profile into that summary: kernel time and wall time per
step (their ratio: how busy the GPU was), shares by kind of kernel (`KERNEL_KINDS`), the top
kernels, the attention kernels that ran, and the ATen ops that launched kernels with their input
shapes; `tinylab.train.timeline` adds, from the trace, the GPU's idle time by the host ops it
waited for and the host's waits on the GPU. bench/throughput.py prints the same summary.

Trade-off: the two synchronizations and the profiler's own overhead make the profiled steps a
little slower than unprofiled ones; the tokens/s of the metrics lines are the figure of speed,
the profile is the figure of where the time goes.

    python -m tinylab.train --config STAGE.yaml --run-dir RUN --profile-steps 6-7
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from tinylab.config.loader import ConfigError
from tinylab.train.parallel import Distributed
from tinylab.train.timeline import MIN_GAP_US, gpu_timeline, read_trace

PROFILE_STEPS_HELP = (
    "Profile these stage steps (torch.profiler, rank 0) into RUN/stages/<stage>/profile/: "
    "summary.json (kernel time by kind, top kernels, ATen ops with their input shapes, kernel "
    "and wall time per step, the GPU's idle time by the host ops it waited for, the copy / "
    "cast kernels by the host ops that launched them) and "
    "trace.json.gz."
)
ATTENTION_KERNEL = re.compile(r"flash|fmha|cudnn|attention|sdpa|scaled_dot", re.IGNORECASE)
KERNEL_KINDS = [  # first match wins: where GPU time goes, by kernel name
    ("attention", ATTENTION_KERNEL),
    ("matmul", re.compile(r"nvjet|gemm|cutlass|xmma|cublas|splitk|aten::b?mm$|aten::addmm",
                          re.IGNORECASE)),
    ("optimizer", re.compile(r"adam|multi_tensor|foreach", re.IGNORECASE)),
    ("communication", re.compile(r"nccl|all_gather|reduce_scatter|chunk_cat|split_with_sizes",
                                 re.IGNORECASE)),
    ("Liger", re.compile(r"^_\w+_kernel$|liger", re.IGNORECASE)),
    ("inductor (fused)", re.compile(r"^triton_")),
    ("copy / cast", re.compile(r"copy|convert|cast|memcpy|memset|fill", re.IGNORECASE)),
    ("elementwise / reduce (eager)", re.compile(r"elementwise|vectorized|reduce|unrolled",
                                                re.IGNORECASE)),
]  # fmt: skip
NOT_A_CAST = re.compile(r"nocast|(Load|Store)WithCast")  # in eager elementwise kernels' names


@dataclass(frozen=True)
class StepRange:
    """Stage steps FIRST..LAST (1-based, both included)."""

    first: int
    last: int

    @classmethod
    def parse(cls, text: str) -> StepRange:
        """'6-7' or '6'; a ConfigError names the value and what is allowed."""
        parts = text.split("-")
        if len(parts) in (1, 2) and all(p.strip().isdigit() for p in parts):
            first, last = int(parts[0]), int(parts[-1])
            if 1 <= first <= last:
                return cls(first, last)
        raise ConfigError(
            f"--profile-steps {text!r}: give FIRST-LAST (stage steps, 1-based, FIRST <= LAST, "
            "e.g. 6-7) or one step (6)"
        )

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"


class StepProfiler:
    """torch.profiler over the steps of `steps` (None: off), on rank 0; `before(step)` and
    `after(step)` bracket each step of the loop. A resumed stage profiles the steps of the range
    it runs; the stage's last step ends a range that runs past it (writing what ran); leaving
    the context on an error stops the profiler and writes nothing; a range the stage never
    reached gets a warning."""

    def __init__(self, steps: StepRange | None, out_dir: Path, ctx: Distributed) -> None:
        self.steps = steps if ctx.is_main else None
        self.out_dir, self.device = out_dir, ctx.device
        self._prof: torch.profiler.profile | None = None
        self._started = 0.0
        self._ran = 0
        self.summary: dict | None = None

    def __enter__(self) -> StepProfiler:
        return self

    def __exit__(self, *exc) -> None:
        if self._prof is not None:  # an error inside the range: that error is what matters
            prof, self._prof = self._prof, None
            with contextlib.suppress(Exception):
                prof.__exit__(*exc)
        elif self.steps is not None and self.summary is None and exc[0] is None:
            warnings.warn(
                f"--profile-steps {self.steps}: none of these steps ran in this stage",
                stacklevel=2,
            )

    def before(self, step: int) -> None:
        if self.steps is None or self._prof is not None or self.summary is not None:
            return
        if not self.steps.first <= step <= self.steps.last:
            return
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        _sync(self.device)
        self._prof = torch.profiler.profile(activities=activities, record_shapes=True)
        self._prof.__enter__()
        self._started = time.perf_counter()

    def after(self, step: int, *, last_of_stage: bool = False) -> None:
        if self._prof is None:
            return
        self._ran += 1
        if step >= self.steps.last or last_of_stage:
            self._stop()

    def _stop(self) -> None:
        prof, self._prof = self._prof, None
        try:
            _sync(self.device)
            wall_s = time.perf_counter() - self._started
        finally:
            prof.__exit__(None, None, None)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        trace = self.out_dir / "trace.json.gz"
        prof.export_chrome_trace(str(trace))
        self.summary = {"steps": str(self.steps), "steps_profiled": self._ran,
                        **summarize(prof, steps=self._ran, wall_s=wall_s),
                        "timeline": _timeline(trace, self._ran)}  # fmt: skip
        (self.out_dir / "summary.json").write_text(json.dumps(self.summary, indent=1) + "\n")


def _timeline(trace: Path, steps: int) -> dict | None:
    """gpu_timeline of the trace just written; an analysis that fails warns and leaves its error
    in the summary rather than ending the training (a few seconds of rank 0's time on a
    two-step profile of the 1.1B, the other ranks waiting)."""
    try:
        return gpu_timeline(read_trace(trace), steps=steps, attribute=_is_copy)
    except Exception as err:  # noqa: BLE001 - a diagnostic must not stop the run
        warnings.warn(f"--profile-steps: the timeline of {trace} failed: {err!r}", stacklevel=2)
        return {"error": repr(err)}


def _is_copy(name: str) -> bool:
    """A kernel of the kind 'copy / cast': the kind the step's layout and dtype traffic is in."""
    return kernel_kind(name) == "copy / cast"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summarize(prof: torch.profiler.profile, *, steps: int, wall_s: float) -> dict:
    """Kernel time by kind, every kernel, the top ones and attention's (shares of kernel time), the
    ATen ops that launched kernels, kernel and wall time per step; on a CPU, the ops' own CPU
    time stands in for kernel time."""
    events = [e for e in prof.key_averages() if e.device_type.name in ("CUDA", "CPU")]
    device_events = [
        e for e in events if e.device_type.name == "CUDA" and not _annotation(e.key)
    ] or events
    key = "self_device_time_total" if device_events is not events else "self_cpu_time_total"
    total = sum(getattr(e, key) for e in device_events) or 1.0
    ranked = sorted(device_events, key=lambda e: -getattr(e, key))
    rows = [(e.key, getattr(e, key) / total) for e in ranked]
    kernel_ms, wall_ms = total / 1e3 / max(steps, 1), wall_s * 1e3 / max(steps, 1)
    return {
        "attention": [r for r in rows if ATTENTION_KERNEL.search(r[0])][:6],
        "top": rows[:20],
        "kernels": rows,  # all of them: any grouping can be made again from the summary
        "ops": aten_ops(prof, key, total),
        "kinds": kernel_kinds(rows),
        "kernel_ms_per_step": kernel_ms,  # profiler times are in microseconds
        "wall_ms_per_step": wall_ms,
    }


def aten_ops(prof, key: str, total: float, n: int = 10) -> list[tuple[str, str, float]]:
    """The ATen ops whose own kernels take the most time, with their input shapes: who launched
    an eager kernel (an `add` of parameter-shaped tensors, say), and the GEMMs' shapes.
    Inductor's fused kernels, FlashAttention-4's and Liger's are not ATen ops."""
    rows = [
        (e.key, str(e.input_shapes), getattr(e, key) / total)
        for e in prof.key_averages(group_by_input_shape=True)
        if e.key.startswith("aten::") and getattr(e, key) > 0
    ]
    return sorted(rows, key=lambda row: -row[2])[:n]


def _annotation(name: str) -> bool:
    """A profiler range shown on the GPU timeline (`Optimizer.step#AdamW.step`, `ProfilerStep#3`)
    rather than a kernel: its time is its kernels' time again."""
    return "#" in name


def kernel_kind(name: str) -> str:
    """The kind of a kernel: KERNEL_KINDS' first match on its name, else 'other'. The whole name
    counts (FlashAttention-3's is `cutlass::device_kernel<flash::...>`) but for the words of
    PyTorch's elementwise templates that say how any kernel loads its inputs (`..._nocast`,
    `LoadWithCast`): its eager add and mul are no casts."""
    name = NOT_A_CAST.sub("", name)
    return next((kind for kind, pattern in KERNEL_KINDS if pattern.search(name)), "other")


def kernel_kinds(rows: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """Shares of kernel time per kind of kernel (`kernel_kind`), largest first."""
    shares: dict[str, float] = {}
    for name, share in rows:
        kind = kernel_kind(name)
        shares[kind] = shares.get(kind, 0.0) + share
    return sorted(shares.items(), key=lambda item: -item[1])


def report(summary: dict, name: str) -> str:
    """The summary as lines of text: attention kernels, kernel and wall time per step with the
    shares by kind, the top kernels, the ATen ops with their input shapes."""
    attention = "; ".join(f"{k[:90]} ({share:.1%})" for k, share in summary["attention"])
    out = [f"{name}: attention kernels: {attention or 'none matched'}"]
    kinds = ", ".join(f"{kind} {share:.1%}" for kind, share in summary.get("kinds", []))
    if kinds:
        out.append(
            f"    per step: {summary['kernel_ms_per_step']:.0f} ms of kernels in "
            f"{summary['wall_ms_per_step']:.0f} ms (profiled); by kind: {kinds}"
        )
    out += [f"    {share:6.1%}  {k[:110]}" for k, share in summary["top"]]
    if summary.get("ops"):
        out.append("    ATen ops by their own kernels' time, with input shapes:")
        out += [f"    {share:6.1%}  {op} {shapes[:100]}" for op, shapes, share in summary["ops"]]
    if (timeline := summary.get("timeline")) and "error" not in timeline:
        out.append(
            f"    GPU per step: {timeline['busy_ms_per_step']:.0f} ms busy, "
            f"{timeline['idle_ms_per_step']:.1f} ms idle ({timeline['short_gaps_ms_per_step']:.1f}"
            f" in gaps under {MIN_GAP_US:.0f} us); idle after gaps, by the host ops that launched"
            " the next work:"
        )
        out += [_row(row) for row in timeline["idle_by_launcher"]]
        out.append("    the host waiting on the GPU, by the ops that waited:")
        out += [_row(row) for row in timeline["host_waits"]]
        if copies := timeline.get("picked_by_launcher"):
            out.append("    copy / cast kernels, by the host ops that launched them:")
            out += [_row(row) for row in copies]
    return "\n".join(out)


def _row(row: dict) -> str:
    return f"    {row['ms_per_step']:8.2f} ms  {row['per_step']:5.1f}x  {row['where'][:220]}"
