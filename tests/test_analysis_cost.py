"""tinylab.analysis.cost, the cost planner: its arithmetic on known cases (steps, accumulation,
GPU-hours, checkpoint bytes, fit or no fit), the paper pipeline's plan beside the paper's own
figures, the hardware files' derived rows, the report's table of a run, and bad inputs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from _analysis_fixtures import write_run
from _train_fixtures import stage_config
from typer.testing import CliRunner

from tinylab.analysis.cost import (
    PlanError,
    accumulation,
    checkpoint_bytes,
    cost_plan,
    eval_hours,
    format_cost_plan,
    load_hardware,
    lora_params,
    run_cost_table,
    stage_cost,
)
from tinylab.analysis.eval_cost import TASK_SIZES, evaluation_tokens
from tinylab.analysis.runs import load_run
from tinylab.cli import app
from tinylab.config.eval import EvalConfig
from tinylab.config.loader import PARAMS_DIR, load_config
from tinylab.config.stage import StageConfig
from tinylab.model import build_model
from tinylab.train import lora
from tinylab.train.checkpoint import CheckpointWriter, TrainState
from tinylab.train.parallel import Distributed

PAPER = "params/pipelines/tinyllama-v1.1.yaml"
BASE = load_config(PARAMS_DIR / "stages" / "tinyllama-v1.1" / "base.yaml", StageConfig)


def card(memory_gib: float = 79.6, **row):
    """The H100 file with its memory (and the first row) changed."""
    hardware = load_hardware("h100")
    rows = [hardware.throughput[0].model_copy(update=row), *hardware.throughput[1:]]
    return hardware.model_copy(update={"memory_gib": memory_gib, "throughput": rows})


def test_steps_accumulation_and_gpu_hours_of_the_base_stage_on_8_h100() -> None:
    notes: dict = {}
    row = stage_cost(BASE, 8, load_hardware("h100"), None, notes)
    steps = math.ceil(1.5e12 / 1_835_008)  # 896 sequences of 2048 per step
    assert (
        (row["steps"], row["tokens"]) == (steps, steps * 1_835_008) == (817_436, 1_500_001_599_488)
    )
    assert (row["micro"], row["accum"]) == (16, 7)  # 896 / (16 x 8)
    assert row["tok/s/GPU"] == 73_851  # the 4-GPU row: the largest GPU count <= 8
    assert row["GPU-h"] == pytest.approx(steps * 1_835_008 / 73_851 / 3600)
    assert row["wall h"] == pytest.approx(row["GPU-h"] / 8)
    assert (row["peak GiB"], row["fits"]) == (50.9, True)
    assert any("per-GPU rate assumed to hold on 8" in text for text in notes)


def test_accumulation_is_none_when_the_batch_does_not_split() -> None:
    assert accumulation(BASE, 16, 8) == 7
    assert accumulation(BASE, 8, 16) == 7
    assert accumulation(BASE, 16, 16) is None  # 896 = 2^7 x 7: 16 x 16 = 256 does not divide
    assert accumulation(BASE, 16, 3) is None


def test_a_given_rate_replaces_the_cards() -> None:
    row = stage_cost(BASE, 8, load_hardware("h100"), 50_000.0, {})
    assert row["GPU-h"] == pytest.approx(row["tokens"] / 50_000 / 3600)


def test_a_micro_batch_over_the_cards_memory_falls_back_to_one_that_fits() -> None:
    notes: dict = {}
    row = stage_cost(BASE, 4, card(memory_gib=40.0), None, notes)  # 16 peaks at 50.9 GiB on 4
    assert (row["micro"], row["accum"], row["peak GiB"], row["fits"]) == (8, 28, 30.1, True)
    assert list(notes)[0] == "micro-batch 16 -> 8: peaks at 50.9 GiB, over 38.0 GiB usable"
    roomy = stage_cost(BASE, 4, card(memory_gib=79.6), None, {})
    assert (roomy["micro"], roomy["fits"]) == (16, True)


def test_when_no_micro_batch_fits_the_row_says_no() -> None:
    notes: dict = {}
    row = stage_cost(BASE, 4, card(memory_gib=20.0), None, notes)
    assert (row["micro"], row["fits"]) == (16, False)
    assert "no measured micro-batch does" in next(iter(notes))


def test_checkpoint_bytes_are_what_the_checkpoint_writer_writes(tmp_path: Path) -> None:
    stage = stage_config()
    model = build_model(stage.model, device="cpu", seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.zeros(1, 8, dtype=torch.long)).logits.sum().backward()
    optimizer.step()  # creates AdamW's moments
    alone = Distributed(0, 1, 0, torch.device("cpu"), None)
    with CheckpointWriter(tmp_path, ctx=alone, keep_last=1, background=False) as writer:
        folder = writer.save(model=model, optimizer=optimizer, state=TrainState(),
                             model_cfg=stage.model, finished=False)  # fmt: skip
    params = sum(p.numel() for p in model.parameters())
    assert checkpoint_bytes(stage) == 12 * params
    written = sum(p.stat().st_size for p in folder.glob("*.distcp"))
    entries = 4 * len(list(model.parameters()))  # weight, exp_avg, exp_avg_sq, step
    assert checkpoint_bytes(stage) <= written < checkpoint_bytes(stage) + 2500 * entries


def test_a_tied_embedding_is_stored_twice() -> None:
    tied = stage_config(model={"tie_word_embeddings": True})
    params = sum(p.numel() for p in build_model(tied.model, device="meta").parameters())
    assert checkpoint_bytes(tied) == 12 * params + 4 * 320 * 64


def test_a_lora_checkpoint_holds_the_adapter_only() -> None:
    stage = stage_config(
        adapter={"type": "lora", "rank": 4, "target_modules": ["q_proj", "k_proj", "down_proj"]},
        init_from={"stage": "base", "carry": ["weights"]},
    )
    wrapped = lora.apply(build_model(stage.model, device="cpu", seed=0), stage.adapter)
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    assert (
        lora_params(stage.model, stage.adapter)
        == trainable
        == 2 * 4 * (64 + 64 + 64 + 32 + 176 + 64)
    )
    assert checkpoint_bytes(stage) == 12 * trainable


def test_the_paper_pipeline_on_16_a100_beside_the_papers_90_days() -> None:
    plan = cost_plan(PAPER, gpus=16, gpu="a100-40g")
    rows = plan.table.set_index("stage")
    assert (rows.loc["base", "micro"], rows.loc["base", "accum"]) == (8, 7)  # 16 x 16 no split
    assert (rows.loc["cooldown-general", "micro"], rows.loc["cooldown-general", "accum"]) == (8, 28)
    assert rows.loc["base", "tok/s/GPU"] == 21_869  # 69,321 x 312 / 989
    assert rows.loc["base", "ckpt GB"] == pytest.approx(12 * 1_100_048_384 / 1e9)
    assert rows.loc["base", "disk GB"] == pytest.approx((3 * 12 + 4) * 1_100_048_384 / 1e9)
    chain_tokens = sum(
        rows.loc[s, "tokens"] for s in ("base", "continual-general", "cooldown-general")
    )
    assert chain_tokens == pytest.approx(2e12, rel=1e-5)
    days = (
        sum(rows.loc[s, "GPU-h"] for s in ("base", "continual-general", "cooldown-general"))
        / 16
        / 24
    )
    assert days == pytest.approx(chain_tokens / 21_869 / 16 / 86400)
    text = format_cost_plan(plan)
    assert f"this plan {days:.1f} days on 16 a100-40g" in text and "66.2 days" in text
    assert "at the paper's rate on its 16 A100-40G: 60.3 days" in text  # 2T / (24,000 x 16)
    assert "3T tokens on 16 A100-40G in about 90 days" in text


def test_the_paper_pipeline_on_8_h100() -> None:
    plan = cost_plan(PAPER, gpus=8, gpu="h100")
    base = plan.table.set_index("stage").loc["base"]
    assert (base["micro"], base["accum"], base["tok/s/GPU"], base["fits"]) == (16, 7, 73_851, True)
    assert "39.2 days on 8 h100" in format_cost_plan(plan)


def test_derived_rows_follow_from_the_measured_ones() -> None:
    h200, h100, a100 = (load_hardware(k) for k in ("h200", "h100", "a100-40g"))
    rate = {
        (c.name, r.micro_batch_size, r.gpus): r for c in (h200, h100, a100) for r in c.throughput
    }
    for row in h100.throughput:
        if row.status == "derived":
            key = (row.micro_batch_size, row.gpus)
            scaling = rate[("h200", *key)].tokens_per_s / rate[("h200", key[0], 1)].tokens_per_s
            assert row.tokens_per_s == round(rate[("h100", key[0], 1)].tokens_per_s * scaling)
            assert row.peak_gib == rate[("h200", *key)].peak_gib
    for row in a100.throughput:
        key = (row.micro_batch_size, row.gpus)
        assert row.status == "derived"
        assert row.tokens_per_s == round(rate[("h100", *key)].tokens_per_s * 312 / 989)
    forward = {(c.name, r.dtype): r for c in (h200, h100, a100) for r in c.evaluation}
    h100_vs_h200 = rate[("h100", 16, 1)].tokens_per_s / rate[("h200", 16, 1)].tokens_per_s
    for dtype in ("bf16", "fp32"):
        assert forward[("h200", dtype)].status == "measured"
        h100_rate = forward[("h100", dtype)].tokens_per_s
        assert h100_rate == round(forward[("h200", dtype)].tokens_per_s * h100_vs_h200)
        peaks = {"bf16": "peak_bf16_tflops", "fp32": "peak_fp32_tflops"}[dtype]
        ratio = getattr(a100, peaks) / getattr(h100, peaks)
        assert forward[("a100-40g", dtype)].tokens_per_s == round(h100_rate * ratio)


def test_evaluation_hours_are_its_tokens_at_the_cards_rate_in_its_dtype() -> None:
    paper_eval = load_config(PARAMS_DIR / "eval" / "paper.yaml", EvalConfig)
    domains = len({s.domain for s in BASE.data.sources.values()})
    tokens, _ = evaluation_tokens(paper_eval, domains=domains, seq_len=2048)
    rows = cost_plan(PAPER, gpus=16, gpu="a100-40g").table.set_index("stage")
    assert rows.loc["base", "eval h"] == pytest.approx(tokens / 5720 / 3600)  # float32 on A100
    bf16 = paper_eval.model_copy(update={"dtype": "bfloat16"})
    assert eval_hours(bf16, BASE, load_hardware("h200"), {}) == pytest.approx(
        tokens / 175_322 / 3600
    )


def test_evaluation_tokens_count_items_windows_and_humaneval() -> None:
    eval_cfg = EvalConfig(tasks=[{"name": "piqa"}, {"name": "mystery"}], suites=["chinese"],
                          limit=100, perplexity_max_windows=8,
                          humaneval={"limit": 10, "max_new_tokens": 50})  # fmt: skip
    tokens, uncounted = evaluation_tokens(eval_cfg, domains=2, seq_len=32)
    assert tokens == 100 * TASK_SIZES["piqa"][1] + 2 * 8 * 32 + 10 * (150 + 50)
    assert uncounted == ["chinese", "mystery"]


def test_the_run_table_plans_at_the_runs_own_rate(tmp_path: Path) -> None:
    table = run_cost_table(load_run(write_run(tmp_path / "run"))).set_index("stage")
    base = table.loc["base"]
    assert base["tok/s per device"] == 2000.0  # median of 1000, 2000, 3000
    assert base["wall s (plan)"] == pytest.approx(8192 / 2000.0, abs=0.005)  # 2 decimals
    assert base["micro x accum"] == "4 x 8"  # 32 windows per step, micro-batch 4, one device
    assert base["ckpt MB (plan)"] == pytest.approx(
        checkpoint_bytes(stage_config()) / 1e6, abs=0.005
    )
    assert base["wall s (measured)"] == 12.34 and base["ckpt MB (on disk)"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([PAPER, "--gpus", "0", "--gpu", "h100"], "--gpus 0: the number of GPUs must be at"),
        ([PAPER, "--gpus", "8", "--gpu", "v100"], "--gpu 'v100': no params/hardware/v100.yaml; "
                                                  "allowed: a100-40g, h100, h200"),
        (["params/stages/demo/base.yaml", "--gpus", "8", "--gpu", "h100"],
         "params/stages/demo/base.yaml: a params/stages/ file, not a pipeline"),
        (["nothere.yaml", "--gpus", "8", "--gpu", "h100"], "nothere.yaml: no such file"),
        ([PAPER, "--gpus", "8", "--gpu", "h100", "--tokens-per-s-per-gpu", "0"],
         "--tokens-per-s-per-gpu 0.0: must be above 0"),
    ],
)  # fmt: skip
def test_bad_inputs_exit_2_with_one_message(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["plan", *args])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), result.output


def test_plan_error_is_a_user_error() -> None:
    with pytest.raises(PlanError, match="--gpus -1"):
        cost_plan(PAPER, gpus=-1, gpu="h100")
