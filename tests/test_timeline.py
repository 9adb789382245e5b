"""tinylab.train.timeline: the GPU's idle time charged to the host ops that launched the work
after each gap, and the host's waits on the GPU, from a Chrome trace as torch.profiler writes
it (a small one built here: a CPU run has no GPU work to show)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tinylab.train.profiling import report
from tinylab.train.timeline import gpu_timeline, read_trace


def _op(name: str, ts: float, dur: float, tid: int = 1) -> dict:
    return {"cat": "cpu_op", "name": name, "ts": ts, "dur": dur, "tid": tid}


def _launch(ts: float, correlation: int, name: str = "cudaLaunchKernel", dur: float = 1) -> dict:
    return {"cat": "cuda_runtime", "name": name, "ts": ts, "dur": dur, "tid": 1,
            "args": {"correlation": correlation}}  # fmt: skip


def _kernel(ts: float, dur: float, correlation: int, stream: int = 7) -> dict:
    return {"cat": "kernel", "name": f"k{correlation}", "ts": ts, "dur": dur, "tid": stream,
            "args": {"correlation": correlation}}  # fmt: skip


# Two steps. The host launches k1, then waits 100 µs in `aten::item` (a sync), so the GPU
# idles 50 µs before k2, launched inside `mask > aten::all`; k3 (another stream) overlaps k2;
# k4 follows after a 5 µs launch gap; k5 comes 30 µs late, launched inside `loss`. A runtime
# call without a duration (as some traces have) is left out.
TRACE = {"traceEvents": [
    _op("step", 0, 1000),
    _op("aten::mm", 10, 5), _launch(11, 1),
    _op("aten::item", 20, 110), _launch(21, 90, "cudaStreamSynchronize", dur=100),
    _op("mask", 130, 20), _op("aten::all", 135, 10), _launch(140, 2),
    _op("aten::add", 150, 5), _launch(151, 3), _launch(152, 4),
    _op("loss", 240, 20), _launch(245, 5),
    _kernel(12, 88, 1), _kernel(150, 40, 2), _kernel(160, 50, 3, stream=9),
    _kernel(215, 10, 4), _kernel(255, 45, 5),
    {"cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": 400, "tid": 1},  # no dur: skipped
]}  # fmt: skip


def test_gaps_are_charged_to_the_ops_that_launched_the_next_work_and_waits_to_theirs() -> None:
    timeline = gpu_timeline(TRACE, steps=2)
    # busy [12, 100] [150, 210] [215, 225] [255, 300]: 88 + 60 + 10 + 45 µs; idle 50 + 5 + 30
    assert timeline["busy_ms_per_step"] == pytest.approx(0.203 / 2)
    assert timeline["idle_ms_per_step"] == pytest.approx(0.085 / 2)
    assert timeline["short_gaps_ms_per_step"] == pytest.approx(0.005 / 2)
    assert timeline["idle_by_launcher"] == [
        {"where": "step > mask > aten::all", "ms_per_step": pytest.approx(0.025),
         "per_step": 0.5},
        {"where": "step > loss", "ms_per_step": pytest.approx(0.015), "per_step": 0.5},
    ]  # fmt: skip
    assert timeline["host_waits"] == [
        {"where": "step > aten::item > cudaStreamSynchronize",
         "ms_per_step": pytest.approx(0.05), "per_step": 0.5},
    ]  # fmt: skip
    lines = report({"attention": [], "top": [], "timeline": timeline}, "default")
    assert "idle after gaps" in lines and "step > mask > aten::all" in lines


def test_deep_nesting_shows_the_outermost_and_innermost_ops() -> None:
    names = ["a", "b", "c", "d", "e"]
    ops = [_op(name, i, 100 - 2 * i) for i, name in enumerate(names)]
    trace = {"traceEvents": [*ops, _launch(50, 1), _kernel(0, 1, 0), _kernel(60, 1, 1)]}
    (row,) = gpu_timeline(trace, steps=1)["idle_by_launcher"]
    assert row["where"] == "a > b > … > d > e"


def test_a_cpu_trace_has_no_timeline_and_gzip_traces_read(tmp_path: Path) -> None:
    cpu_only = {"traceEvents": [_op("aten::mm", 0, 10)]}
    assert gpu_timeline(cpu_only, steps=1) is None
    path = tmp_path / "trace.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump(TRACE, f)
    assert read_trace(path) == TRACE


def test_a_gap_after_work_queued_in_time_is_a_wait_on_the_device_and_ops_are_half_open() -> None:
    """k2 was launched (at 5) long before the GPU idled (20-60): the host was not late, the GPU
    waited on something on the device. k3's launch at 80 is where sibling `a` [70, 80) ends and
    `b` [80, 90) begins: it is b's."""
    trace = {"traceEvents": [
        _op("a", 70, 10), _op("b", 80, 10),
        _launch(1, 1), _launch(5, 2), _launch(80, 3),
        _kernel(10, 10, 1), _kernel(60, 10, 2), _kernel(100, 5, 3),
    ]}  # fmt: skip
    timeline = gpu_timeline(trace, steps=1)
    rows = {row["where"]: row["ms_per_step"] for row in timeline["idle_by_launcher"]}
    assert rows == {"(launched before the gap: a wait on the device)": pytest.approx(0.04),
                    "b": pytest.approx(0.03)}  # fmt: skip


def test_the_profiler_writes_the_timeline_and_survives_one_that_fails(tmp_path, monkeypatch):
    """StepProfiler puts the trace's timeline into summary.json (the trace read back is the
    hand-built one here: a CPU run has no GPU work); a timeline that raises warns and leaves its
    error there, and the run goes on."""
    import torch

    from tinylab.train import profiling
    from tinylab.train.parallel import Distributed
    from tinylab.train.profiling import StepProfiler, StepRange

    ctx = Distributed(0, 1, 0, torch.device("cpu"), None)

    def profile_one_step(folder: Path) -> dict:
        with StepProfiler(StepRange(1, 1), folder, ctx) as profiler:
            profiler.before(1)
            torch.ones(4) @ torch.ones(4)
            profiler.after(1)
        return json.loads((folder / "summary.json").read_text())["timeline"]

    monkeypatch.setattr(profiling, "read_trace", lambda path: TRACE)
    assert profile_one_step(tmp_path / "ok") == gpu_timeline(TRACE, steps=1)

    def broken(path):
        raise KeyError("traceEvents")

    monkeypatch.setattr(profiling, "read_trace", broken)
    with pytest.warns(UserWarning, match="timeline of .* failed: KeyError"):
        assert profile_one_step(tmp_path / "broken") == {"error": "KeyError('traceEvents')"}


# Kernel names as PyTorch's CUDA build gives them (from a trace of the 1.1B on an H200): the
# gradient accumulation's mixed-dtype add and an eager mul name `LoadWithCast` and
# `gpu_kernel_impl_nocast` in their template arguments, and are no casts.
FP32_ADD = ("void at::native::unrolled_elementwise_kernel<at::native::CUDAFunctor_add<float>, "
            "std::array<char*, 3ul>, 4, TrivialOffsetCalculator<2, unsigned int>, "
            "TrivialOffsetCalculator<1, unsigned int>, at::native::memory::LoadWithCast<2>, "
            "at::native::memory::StoreWithCast<1> >(int, at::native::CUDAFunctor_add<float>, "
            "std::array<char*, 3ul>)")  # fmt: skip
MUL = ("void at::native::elementwise_kernel<128, 2, at::native::gpu_kernel_impl_nocast<"
       "at::native::BinaryFunctor<c10::BFloat16, c10::BFloat16, c10::BFloat16, "
       "at::native::binary_internal::MulFunctor<float> > >(at::TensorIteratorBase&, "
       "at::native::BinaryFunctor<c10::BFloat16, c10::BFloat16, c10::BFloat16, "
       "at::native::binary_internal::MulFunctor<float> > const&)::{lambda(int)#1}>(int, "
       "at::native::gpu_kernel_impl_nocast<...>::{lambda(int)#1})")  # fmt: skip
COPY = (
    "void at::native::elementwise_kernel<128, 4, at::native::gpu_kernel_impl_nocast<"
    "at::native::direct_copy_kernel_cuda(at::TensorIteratorBase&)::{lambda()#3}::operator()"
    "() const::{lambda()#7}::operator()() const::{lambda(c10::BFloat16)#1}> >(int, ...)"
)
FILL = (
    "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>, "
    "std::array<char*, 1ul> >(int, at::native::FillFunctor<float>, std::array<char*, 1ul>)"
)


@pytest.mark.parametrize(
    ("name", "kind"),
    [(FP32_ADD, "elementwise / reduce (eager)"), (MUL, "elementwise / reduce (eager)"),
     (COPY, "copy / cast"), (FILL, "copy / cast"),
     ("Memcpy DtoD (Device -> Device)", "copy / cast"), ("Memset (Device)", "copy / cast"),
     ("void downcast_kernel<float>(float const*, int)", "copy / cast"),
     ("void cutlass::device_kernel<flash::FlashAttnFwdSm90<int> >(int)", "attention"),
     ("triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_0", "inductor (fused)")],
)  # fmt: skip
def test_kernels_are_copies_by_what_they_do_not_by_their_template_arguments(name, kind) -> None:
    from tinylab.train.profiling import kernel_kind

    assert kernel_kind(name) == kind


def test_picked_kernels_are_charged_to_the_ops_that_launched_them_with_their_shapes() -> None:
    """Two copies of q's gradient in a compiled backward (one per step) and a fill elsewhere,
    picked as profiling picks copies; the mul beside them is not picked."""
    from tinylab.train.profiling import _is_copy, report

    shapes = [[16, 32, 2048, 64], [16, 32, 2048, 64], []]
    copy_op = {**_op("aten::copy_", 30, 10), "args": {"Input Dims": shapes}}
    step = [
        _op("CompiledFunctionBackward", 0, 100), _op("aten::contiguous", 20, 30), copy_op,
        _launch(35, 1), {**_kernel(40, 50, 1), "name": COPY},
        _op("aten::mul", 60, 10), _launch(61, 2), {**_kernel(90, 20, 2), "name": MUL},
    ]  # fmt: skip
    events = [*step, *(_shifted(e, 1000, 10) for e in step)]
    events += [
        _op("aten::zeros", 1500, 10),
        _launch(1501, 99),
        {**_kernel(1510, 8, 99), "name": FILL},
        {**_kernel(1600, 2, 98), "cat": "gpu_memcpy", "name": "Memcpy DtoD (Device -> Device)"},
    ]
    timeline = gpu_timeline({"traceEvents": events}, steps=2, attribute=_is_copy)
    assert timeline["picked_by_launcher"] == [
        {"where": "at::native::elementwise_kernel (direct_copy_kernel_cuda) | "
                  "CompiledFunctionBackward > aten::contiguous > aten::copy_ "
                  "[[16, 32, 2048, 64], [16, 32, 2048, 64], []]",
         "ms_per_step": pytest.approx(0.05), "per_step": 1.0},
        {"where": "at::native::vectorized_elementwise_kernel (FillFunctor) | aten::zeros",
         "ms_per_step": pytest.approx(0.004), "per_step": 0.5},
        {"where": "Memcpy DtoD (Device -> Device) | (launch not in the trace)",
         "ms_per_step": pytest.approx(0.001), "per_step": 0.5},
    ]  # fmt: skip
    assert gpu_timeline({"traceEvents": events}, steps=2)["picked_by_launcher"] == []
    lines = report({"attention": [], "top": [], "timeline": timeline}, "default")
    assert "copy / cast kernels, by the host ops that launched them:" in lines
    assert "aten::copy_ [[16, 32, 2048, 64]" in lines


def _shifted(event: dict, dt: float, dc: int) -> dict:
    """`event` later by dt µs, its correlation id (if any) by dc."""
    args = event.get("args", {})
    if "correlation" in args:
        args = {**args, "correlation": args["correlation"] + dc}
    return {**event, "ts": event["ts"] + dt, "args": args}


@pytest.mark.parametrize(
    ("name", "short"),
    [(COPY, "at::native::elementwise_kernel (direct_copy_kernel_cuda)"),
     (MUL, "at::native::elementwise_kernel (MulFunctor)"),
     (FP32_ADD, "at::native::unrolled_elementwise_kernel (CUDAFunctor_add)"),
     ("void at::native::(anonymous namespace)::chunk_cat_cuda_kernel<float>(int)",
      "at::native::(anonymous namespace)::chunk_cat_cuda_kernel"),
     ("ncclDevKernel_AllGather_RING_LL(ncclDevKernelArgsStorage<4096ul>)",
      "ncclDevKernel_AllGather_RING_LL"),
     ("Memcpy DtoD (Device -> Device)", "Memcpy DtoD (Device -> Device)"),
     ("nvjet_sm90_tst_128x256_64x4_2x1_v_bz_coopA_NTN",
      "nvjet_sm90_tst_128x256_64x4_2x1_v_bz_coopA_NTN")],
)  # fmt: skip
def test_short_kernel_names_keep_the_kernel_and_the_operation(name, short) -> None:
    from tinylab.train.timeline import short_kernel_name

    assert short_kernel_name(name) == short
