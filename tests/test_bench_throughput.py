"""bench/throughput.py builds the stages it times as promised: the `default` variants are the
committed base stage, other variants start from plain, bad specs stop with a clear message; a
CPU profile names the top kernels and the ATen ops with their input shapes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from tinylab.config.loader import load_config
from tinylab.config.stage import StageConfig

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "throughput.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["throughput"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    yield module
    del sys.modules["throughput"]


@pytest.mark.parametrize("name, nproc", [("default", 1), ("default@2", 2), ("default@4", 4)])
def test_default_variants_time_the_committed_base_stage(bench, name, nproc) -> None:
    committed = load_config(bench.BASE_STAGE, StageConfig)
    variant = bench.VARIANTS[name]
    stage = bench.bench_stage("tinyllama-1.1b", variant, steps=3, device="cuda", accum=4)
    assert variant.nproc == nproc
    assert stage.micro_batch_size == committed.micro_batch_size
    assert stage.parallel.model_dump(exclude={"device"}) == committed.parallel.model_dump(
        exclude={"device"}
    )
    assert stage.global_batch_tokens == committed.micro_batch_size * 2048 * nproc * 4


@pytest.mark.parametrize(
    "name, groups",
    [("default+fuse", ["qkv", "gate_up"]), ("default+fuse-qkv", ["qkv"]),
     ("default+fuse-gate-up", ["gate_up"])],
)  # fmt: skip
def test_fuse_variants_are_the_default_with_fused_projections(bench, name, groups) -> None:
    committed = load_config(bench.BASE_STAGE, StageConfig)
    stage = bench.bench_stage("tinyllama-1.1b", bench.VARIANTS[name], steps=3, device="cuda")
    assert stage.parallel.fused_projections == groups
    aside = {"device", "fused_projections"}  # all else is the committed stage's
    assert stage.parallel.model_dump(exclude=aside) == (
        committed.parallel.model_dump(exclude=aside)
    )


def test_other_variants_start_from_plain(bench) -> None:
    stage = bench.bench_stage("tinyllama-1.1b", bench.VARIANTS["plain"], steps=3, device="cuda")
    assert (stage.parallel.compile, stage.parallel.liger) == ("off", [])
    assert stage.parallel.single_process == "plain"


def test_a_spec_sets_keys_micro_and_nproc(bench) -> None:
    variant = bench.parse_variant(
        "x:parallel.liger=[swiglu,loss],micro=16,nproc=2,TORCHINDUCTOR_X=1"
    )
    assert (variant.micro, variant.nproc) == (16, 2)
    stage = bench.bench_stage("tinyllama-1.1b", variant, steps=3, device="cuda")
    assert stage.parallel.liger == ["swiglu", "loss"] and stage.micro_batch_size == 16


def test_a_repeat_is_the_known_variant_under_its_own_name(bench) -> None:
    again = bench.parse_variant("default#2")
    assert again.name == "default#2"
    assert (again.sets, again.micro) == (bench.VARIANTS["default"].sets, 16)


def test_the_loss_column_gives_the_settled_and_last_steps(bench) -> None:
    def result(name: str, losses: list[float]) -> dict:
        return {"variant": {"name": name, "nproc": 1, "micro": 16}, "losses": losses}

    base = result("default", [10.0] * 5 + [6.0] * 35)
    other = result("default#2", [13.0] * 5 + [6.1] * 35)
    assert bench._loss_diff(other, base) == (
        "3.0000; after step 20 0.1000; last 10 steps +0.1000 (final 6.100 vs 6.000)"
    )


@pytest.mark.parametrize(
    "spec, message",
    [
        ("nonesuch", "unknown variant 'nonesuch'"),
        ("x:micro", "'micro' is not key=value"),
        ("nonesuch#2", "unknown variant 'nonesuch#2'"),
        ("default#x", "unknown variant 'default#x'"),
    ],
)
def test_bad_specs_name_the_problem(bench, spec, message) -> None:
    with pytest.raises(SystemExit, match=message):
        bench.parse_variant(spec)


def test_a_cpu_profile_names_the_top_kernels_and_the_aten_ops_with_shapes(
    bench, one_thread, tmp_path
):
    """`--profile` on CPU (the demo model): the trainer's own steps 4-5, profiled inside its
    loop; the top kernels and, for each ATen op that launched some, its input shapes, e.g. the
    lm_head's matmul [2048 tokens, 128]."""
    variant = bench.VARIANTS["plain"]
    stage = bench.bench_stage("demo", variant, steps=50, device="cpu")
    stage = stage.model_copy(
        update={"parallel": stage.parallel.model_copy(update={"precision": "fp32"})}
    )
    result = bench.tinylab_profile(stage, variant, tmp_path)
    assert (result["steps"], result["steps_profiled"]) == ("4-5", 2)
    assert min(result["kernel_ms_per_step"], result["wall_ms_per_step"]) > 0
    result["variant"] = {"name": "plain"}
    assert result["top"] and 0 < sum(share for _, share in result["top"]) <= 1 + 1e-9
    assert result["top"] == result["kernels"][:20]
    assert sum(share for _, share in result["kernels"]) == pytest.approx(1)
    ops = {(op, shapes) for op, shapes, _ in result["ops"]}
    assert any(op == "aten::mm" and "2048" in shapes for op, shapes in ops)
    report = bench.profile_report([result]).splitlines()
    assert report[0].startswith("plain: attention kernels:")
    assert "    ATen ops by their own kernels' time, with input shapes:" in report


def test_the_hf_baselines_profile_is_summarized_the_same_way(bench, one_thread) -> None:
    """The HF baseline has no trainer to profile it: its own step function, one step on CPU,
    gives the same summary (tinylab.train.profiling.summarize)."""
    variant = bench.VARIANTS["hf-eager"]
    stage = bench.bench_stage("demo", variant, steps=5, device="cpu")
    stage = stage.model_copy(
        update={"parallel": stage.parallel.model_copy(update={"precision": "fp32"})}
    )
    result = bench.profile_kernels(stage, variant, steps=1)
    assert result["top"] and 0 < sum(share for _, share in result["top"]) <= 1 + 1e-9
    assert any(op == "aten::mm" and "2048" in shapes for op, shapes, _ in result["ops"])


SAMPLES = """\
1980, 125.90, 700.00, 40, 0x0000000000000000
1590, 696.47, 700.00, 61, 0x0000000000000004
1650, 692.25, 700.00, 62, 0x0000000000000004
1815, 645.35, 700.00, 60, 0x0000000000000000
[N/A], 690.00, 700.00, 60, 0x0000000000000004
Field "clocks_throttle_reasons.active" is not a valid field to query.
1605, 692.0"""  # idle, two at the cap, one loaded below it, an unreadable field, an error, a cut


def test_the_clock_under_load_leaves_out_idle_and_unreadable_samples(bench) -> None:
    assert bench.SMI_FIELDS.split(",")[:3] == ["clocks.sm", "power.draw", "power.limit"]
    assert bench.under_load(SAMPLES) == {
        "sm_mhz": 1650.0,
        "power_w": 692.25,
        "max_temp_c": 62.0,
        "power_capped": 2 / 3,
        "samples": 3,
    }
    assert bench.under_load("1980, 80.1, 700.00, 39, 0x1\n") is None  # idle only
    row = {"gpu": bench.under_load(SAMPLES)}
    assert bench._clock_cell(row) == "1,650 MHz, 692 W, capped 67%"
    assert bench._clock_cell({"gpu": None}) == bench._clock_cell({}) == ""


def test_gpu_samples_run_nvidia_smi_while_the_block_runs(bench, tmp_path, monkeypatch) -> None:
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text(
        '#!/bin/sh\necho "$@" > "$(dirname "$0")/args"\n'
        "while true; do echo '1590, 696.5, 700.00, 61, 0x4'; sleep 0.05; done\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{bench.os.environ['PATH']}")
    out = tmp_path / "gpu.csv"
    with bench.gpu_samples([0, 1], out):
        deadline = bench.time.monotonic() + 30
        while out.read_text().count("\n") < 2 and bench.time.monotonic() < deadline:
            bench.time.sleep(0.05)
    written = out.read_text()
    bench.time.sleep(0.2)
    assert out.read_text() == written  # stopped with the block
    assert bench.under_load(written)["power_capped"] == 1.0
    args = (fake.parent / "args").read_text().split()
    assert args[-4:] == ["-lms", "500", "-i", "0,1"]
    assert f"--query-gpu={bench.SMI_FIELDS}" in args and "--format=csv,noheader,nounits" in args
    with bench.gpu_samples([], tmp_path / "none.csv"):  # no GPUs: no sampler
        pass
    assert not (tmp_path / "none.csv").exists()
