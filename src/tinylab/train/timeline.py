"""Where the GPU waited, and for whom: the idle time of a profiled stretch of training, from the
Chrome trace torch.profiler exports (`--profile-steps` writes it as profile/trace.json.gz).

`gpu_timeline` merges the GPU's kernels, copies and memsets into busy intervals. Each gap
between two of them is charged to the host operations that launched the work after it (the
CPU ops enclosing its launch: the host was late there), unless that launch ended before the gap
began (the GPU then waited on the device: another stream, an event). Each time the host blocked
on the GPU (a stream, device or event synchronization, or a synchronous copy) is charged to the
ops that made it wait. A host wait drains the GPU's queue, so the gaps that follow it are where the
time is lost. Both are per step, largest first. Kernels a caller picks by name (profiling picks
the copies and casts) are charged to the ops that launched them, with the innermost op's input
shapes: which copy a step makes, and where.

On the 1.1B this found a host sync in every micro-batch inside transformers' mask preparation
and two in Liger's fused loss, and the gradient copies of a compiled layer (bench/RESULTS.md).
"""

from __future__ import annotations

import bisect
import gzip
import json
import re
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

GPU_WORK = ("kernel", "gpu_memcpy", "gpu_memset")
HOST_OPS = ("cpu_op", "user_annotation")
LAUNCHES = ("cuda_runtime", "cuda_driver")
WAITS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")
MIN_GAP_US = 20.0  # shorter gaps are the kernel-to-kernel launch latency: counted, not charged


def read_trace(path: Path) -> dict:
    """A Chrome trace as torch.profiler exports it (.json or .json.gz)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return json.load(f)


def gpu_timeline(
    trace: dict, *, steps: int, top: int = 8, attribute: Callable[[str], bool] | None = None
) -> dict | None:
    """The GPU's busy and idle ms per step over the trace, its idle time (gaps of MIN_GAP_US or
    more) by the host ops that launched the work after each gap, the host's waits on the GPU by
    the ops that waited, and the time of the kernels whose names `attribute` picks by the ops
    that launched them; None when the trace has no GPU work (a CPU run)."""
    events = [e for e in trace.get("traceEvents", []) if "dur" in e and "ts" in e]
    work = sorted((e for e in events if e.get("cat") in GPU_WORK), key=lambda e: e["ts"])
    if not work:
        return None
    per_step = 1e-3 / max(steps, 1)  # µs over the trace -> ms per step
    busy, after_gap = _merge(work)
    gaps = [
        (busy[i][0] - busy[i - 1][1], busy[i - 1][1], after_gap[i]) for i in range(1, len(busy))
    ]
    ops = _HostOps([e for e in events if e.get("cat") in HOST_OPS])
    launches = {
        e["args"]["correlation"]: e
        for e in events
        if e.get("cat") in LAUNCHES and "correlation" in e.get("args", {})
    }
    idle, short = _idle_by_launcher(gaps, launches, ops)
    picked = _by_launcher(work, attribute, launches, ops) if attribute else {}
    waits = _host_waits(events, ops)
    span = busy[-1][1] - busy[0][0]
    busy_us = sum(end - start for start, end in busy)
    return {
        "busy_ms_per_step": busy_us * per_step,
        "idle_ms_per_step": (span - busy_us) * per_step,
        "short_gaps_ms_per_step": short * per_step,
        "idle_by_launcher": _ranked(idle, per_step, steps, top),
        "host_waits": _ranked(waits, per_step, steps, top),
        "picked_by_launcher": _ranked(picked, per_step, steps, top),
    }


def _idle_by_launcher(gaps: list, launches: dict, ops: _HostOps) -> tuple[dict, float]:
    """Gaps of MIN_GAP_US or more, µs and count by where the work after each was launched (the
    device when it was queued before the gap began); the shorter gaps' µs."""
    idle: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    short = 0.0
    for gap, gap_start, first in gaps:
        if gap < MIN_GAP_US:
            short += gap
            continue
        launch = launches.get(first.get("args", {}).get("correlation"))
        if launch is None:
            where = "(launch not in the trace)"
        elif launch["ts"] + launch["dur"] <= gap_start:  # queued in time: the GPU waited on
            where = "(launched before the gap: a wait on the device)"  # a stream or an event
        else:
            where = ops.around(launch)
        idle[where][0] += gap
        idle[where][1] += 1
    return idle, short


def _host_waits(events: list[dict], ops: _HostOps) -> dict:
    """µs and count of the host's waits on the GPU, by the ops that waited."""
    waits: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for e in events:
        if e.get("cat") in LAUNCHES and e["name"] in WAITS:
            row = waits[f"{ops.around(e)} > {e['name']}"]
            row[0] += e["dur"]
            row[1] += 1
    return waits


def _by_launcher(
    work: list[dict], attribute: Callable[[str], bool], launches: dict, ops: _HostOps
) -> dict:
    """µs and count of the GPU work `attribute` picks by name, by the kernel, the ops enclosing
    its launch and the innermost one's input shapes."""
    picked: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for e in work:
        if not attribute(e["name"]):
            continue
        launch = launches.get(e.get("args", {}).get("correlation"))
        where = "(launch not in the trace)"
        if launch is not None:
            enclosing = ops.enclosing(launch)
            shapes = enclosing[0].get("args", {}).get("Input Dims") if enclosing else None
            where = f"{_stack(enclosing)}{f' {shapes}' if shapes else ''}"
        row = picked[f"{short_kernel_name(e['name'])} | {where}"]
        row[0] += e["dur"]
        row[1] += 1
    return picked


def short_kernel_name(name: str) -> str:
    """A C++ kernel's name without its template and call arguments, and the functor they name:
    PyTorch's `void at::native::elementwise_kernel<128, 4, ...direct_copy_kernel_cuda...>(...)`
    is `at::native::elementwise_kernel (direct_copy_kernel_cuda)`. Other names are kept whole
    (`Memcpy DtoD (Device -> Device)`, inductor's and cuBLAS's)."""
    head = _KERNEL_HEAD.match(name)
    if head is None or not head.group(2):
        return name
    functor = _FUNCTOR.search(name, head.end(1))
    return f"{head.group(1)} ({functor.group(0)})" if functor else head.group(1)


_KERNEL_HEAD = re.compile(r"(?:void )?((?:\w|::|\(anonymous namespace\))+)([<(]?)")
# the operation, not a wrapper: MulFunctor inside BinaryFunctor<..., MulFunctor<float>>
_FUNCTOR = re.compile(r"\b(?!(?:Binary|Unary|AUnary|BUnary)Functor\b)\w*(?:copy|Functor|fill)\w*")


def _merge(work: list[dict]) -> tuple[list[list[float]], list[dict]]:
    """Busy intervals of the GPU (work on any stream overlapping merges), and the first event
    of each."""
    busy: list[list[float]] = []
    firsts: list[dict] = []
    for e in work:
        start, end = e["ts"], e["ts"] + e["dur"]
        if busy and start <= busy[-1][1]:
            busy[-1][1] = max(busy[-1][1], end)
        else:
            busy.append([start, end])
            firsts.append(e)
    return busy, firsts


def _ranked(totals: dict, per_step: float, steps: int, top: int) -> list[dict]:
    rows = [
        {"where": where, "ms_per_step": us * per_step, "per_step": n / max(steps, 1)}
        for where, (us, n) in totals.items()
    ]
    return sorted(rows, key=lambda row: -row["ms_per_step"])[:top]


class _HostOps:
    """The CPU ops of each host thread as the tree they nest in, to find those enclosing an
    instant: the ancestors (or self) of the last op to start before it that have not ended."""

    def __init__(self, ops: list[dict]) -> None:
        self._ops: dict = defaultdict(list)
        for op in sorted(ops, key=lambda op: (op["ts"], -op["dur"])):  # parents first
            self._ops[op.get("tid")].append(op)
        self._starts = {tid: [op["ts"] for op in ops] for tid, ops in self._ops.items()}
        self._parent: dict[int, dict | None] = {}
        for ops_of_thread in self._ops.values():
            stack: list[dict] = []
            for op in ops_of_thread:
                while stack and stack[-1]["ts"] + stack[-1]["dur"] <= op["ts"]:  # [ts, end)
                    stack.pop()
                self._parent[id(op)] = stack[-1] if stack else None
                stack.append(op)

    def enclosing(self, event: dict) -> list[dict]:
        """The ops enclosing `event` on its thread, innermost first."""
        tid, t = event.get("tid"), event["ts"]
        i = bisect.bisect_right(self._starts.get(tid, []), t)
        op = self._ops[tid][i - 1] if i else None
        ops = []
        while op is not None:
            if op["ts"] + op["dur"] > t:
                ops.append(op)
            op = self._parent[id(op)]
        return ops

    def around(self, event: dict) -> str:
        """The names of the ops enclosing `event` on its thread (`_stack`)."""
        return _stack(self.enclosing(event))


def _stack(enclosing: list[dict], depth: int = 4) -> str:
    """Ops' names (given innermost first) outermost first: the two outermost and the two
    innermost when there are more than `depth`."""
    names = [op["name"][:60] for op in reversed(enclosing)]
    if len(names) > depth:
        names = [*names[: depth // 2], "…", *names[-(depth // 2) :]]
    return " > ".join(names) or "(no host op)"
