"""bench/checkpoint_stall.py runs end to end on CPU (a tiny model): one sync save, the async
writer's prepare (or not) and two async saves through the trainer's CheckpointWriter, timed, and
its checkpoints deleted afterwards."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest
import yaml
from _train_fixtures import MODEL

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "checkpoint_stall.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("checkpoint_stall", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["checkpoint_stall"] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules["checkpoint_stall"]


def test_the_1b_is_built_with_the_base_stages_parallel_block(bench) -> None:
    committed = bench.load_config(bench.BASE_STAGE, bench.StageConfig)
    stage = bench.bench_stage("tinyllama-1.1b", device="cuda", micro=4, seq_len=2048)
    assert stage.parallel == committed.parallel.model_copy(update={"device": "cuda"})
    assert stage.model.hidden_size == 2048 and stage.global_batch_tokens == 4 * 2048
    fp8 = bench.bench_stage("tinyllama-1.1b", device="cuda", micro=4, seq_len=2048,
                            sets=["parallel.precision=fp8"])  # fmt: skip
    assert fp8.parallel.precision == "fp8"


@pytest.mark.parametrize("no_prepare", [False, True])
def test_a_cpu_run_times_a_sync_and_two_async_saves(bench, tmp_path, one_thread, no_prepare):
    model = tmp_path / "tiny.yaml"
    model.write_text(yaml.safe_dump(MODEL))
    out = tmp_path / "checkpoints"
    args = argparse.Namespace(model=str(model), device="cpu", micro=2, seq_len=32, warmup=1,
                              steps=2, out=str(out), keep=False, set=["seed=7"],
                              no_prepare=no_prepare)  # fmt: skip
    rows = bench.run(args)
    assert [name for name, _ in rows] == [
        "training steps, no save", "sync", *(["async, prepare"] * (not no_prepare)),
        "async, 1st", "async, 2nd",
    ]  # fmt: skip
    for _, row in rows[1:]:
        assert row["stall"] > 0 and row["written"] > 0
    assert not out.exists()
    text = bench.table(rows, device="cpu", model="tiny")
    assert "GB per checkpoint" in text and text.splitlines()[-1].startswith("async, 2nd")
