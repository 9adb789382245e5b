"""tinylab.train.loop in one process on a tiny model: metrics, checkpoints, HF export, stage
hand-off, gradient accumulation, AdamW settings, and bad input with clear errors."""

from __future__ import annotations

import gzip
import json
import math
import time

import pytest
import torch
from _train_fixtures import (
    curve,
    final_weights,
    new_run,
    stage_config,
    train_records,
)

from tinylab.config.loader import ConfigError, load_config
from tinylab.config.stage import StageConfig
from tinylab.data import PackedData
from tinylab.layout import read_metrics
from tinylab.model import flash_attn_available
from tinylab.train import NonFiniteLossError, loop, lr_at, run_stage
from tinylab.train.checkpoint import list_checkpoints, read_meta
from tinylab.train.loop import build
from tinylab.train.parallel import Distributed
from tinylab.train.profiling import StepRange

pytestmark = pytest.mark.usefixtures("one_thread")


def test_stage_writes_metrics_checkpoints_and_an_hf_export(tmp_path, prepared) -> None:
    run = new_run(tmp_path, prepared)
    result = run_stage(stage_config(), run, progress=False)
    stage_dir = run / "stages" / "base"
    assert (result.step, result.tokens, result.stage_tokens) == (8, 8192, 8192)
    records = train_records(run)
    assert [r["step"] for r in records] == list(range(1, 9))
    assert records[-1]["loss"] < records[0]["loss"] - 1.0  # it learns
    first = records[0]
    assert first["lr"] == pytest.approx(lr_at(1024, stage_config().optim, stage_config().schedule))
    assert first["mfu"] is None and first["peak_mem_bytes"] > 0 and first["tokens_per_s"] > 0
    assert first["mixture"] == {"prose": 1.0}
    # validation: at the start, every 4 steps, per domain, with bits per byte
    lines = (stage_dir / "metrics.jsonl").read_text().splitlines()
    val = [r for r in map(json.loads, lines) if r["kind"] == "val"]
    assert [r["step"] for r in val] == [0, 4, 8]
    assert set(val[-1]["domains"]) == {"english", "code"}
    english = val[-1]["domains"]["english"]
    assert english["windows"] == 8 and english["loss"] < val[0]["domains"]["english"]["loss"]
    per_token = PackedData.open(prepared).bytes_per_token("english")
    assert english["bpb"] == pytest.approx(english["loss"] / math.log(2) / per_token)
    # checkpoints every 3 steps and at the end, newest 2 kept, `latest` names the newest
    names = [p.name for p in list_checkpoints(stage_dir / "checkpoints")]
    assert names == ["step-00000006", "step-00000008"]
    assert (stage_dir / "checkpoints" / "latest").read_text().strip() == "step-00000008"
    assert read_meta(result.checkpoint)["finished"] is True
    # plain transformers loads the export, tokenizer included, and reproduces the loss
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(result.hf_dir)
    tokenizer = AutoTokenizer.from_pretrained(result.hf_dir)
    ids = torch.tensor([tokenizer("the cat sat on the mat")["input_ids"]])
    assert math.isfinite(float(model(input_ids=ids, labels=ids).loss))
    # the one reader (tinylab.layout) reads what the loop wrote
    assert [r["step"] for r in read_metrics(stage_dir, "train")] == list(range(1, 9))
    assert {d for r in read_metrics(stage_dir, "val") for d in r["domains"]} == {"english", "code"}


def test_gradient_accumulation_1x8_equals_8x1(tmp_path, prepared) -> None:
    # 8 windows per step: one micro-batch of 8, or 8 accumulated micro-batches of 1
    common = {"global_batch_tokens": 256, "max_tokens": 1024, "checkpoint": {"every_steps": 100}}
    one = run_stage(stage_config(micro_batch_size=8, **common), new_run(tmp_path, prepared, "a"))
    eight = run_stage(stage_config(micro_batch_size=1, **common), new_run(tmp_path, prepared, "b"))
    losses_one = [r["loss"] for r in train_records(one.stage_dir.parent.parent)]
    losses_eight = [r["loss"] for r in train_records(eight.stage_dir.parent.parent)]
    assert len(losses_one) == 4
    assert losses_one == pytest.approx(losses_eight, abs=1e-6)
    a, b = final_weights(one.stage_dir.parent.parent), final_weights(eight.stage_dir.parent.parent)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=0)


def test_adamw_uses_the_stage_settings() -> None:
    stage = stage_config(optim={"betas": [0.8, 0.9], "eps": 1e-6, "weight_decay": 0.05})
    ctx = Distributed(0, 1, 0, torch.device("cpu"), None)
    model, optimizer = build(stage, ctx)
    assert isinstance(optimizer, torch.optim.AdamW)
    (group,) = optimizer.param_groups  # weight decay on all parameters (docs/PAPER.md)
    assert (group["betas"], group["eps"], group["weight_decay"]) == ((0.8, 0.9), 1e-6, 0.05)
    assert len(group["params"]) == len(list(model.parameters()))


def test_the_paper_defaults_are_adamw_0_9_0_95_eps_1e_8_wd_0_1_clip_1() -> None:
    optim = stage_config().optim
    assert (optim.betas, optim.eps, optim.weight_decay, optim.grad_clip) == (
        (0.9, 0.95),
        1e-8,
        0.1,
        1.0,
    )


def test_an_lr_cooldown_stage_takes_the_lr_to_min_lr_on_its_last_step(
    tmp_path, prepared, capsys
) -> None:
    """schedule.cooldown (the counterfactual of a 4x-batch cooldown): from the cosine's LR at the
    stage's start down to min_lr, linearly, on the tokens the stage trains; resumes alike."""
    run = new_run(tmp_path, prepared)
    run_stage(stage_config(max_tokens=4096), run, progress=False)  # 4 steps: LR well above min
    cooled = stage_config(
        name="cooldown", max_tokens=4096, init_from={"stage": "base"},
        schedule={"cooldown": "linear"}, checkpoint={"every_steps": 2},
    )  # fmt: skip
    run_stage(cooled, run, progress=False)
    lrs = [r["lr"] for r in train_records(run, "cooldown")]
    start = lr_at(4096, cooled.optim, cooled.schedule)
    assert lrs == pytest.approx([start - k / 4 * (start - 1e-3) for k in (1, 2, 3, 4)])
    assert lrs[-1] == 1e-3 and train_records(run, "cooldown")[-1]["stage_tokens"] == 4096
    (run / "stages" / "cooldown" / "result.json").unlink()  # resume from the step-2 checkpoint
    for name in ("step-00000008", "latest"):
        (run / "stages" / "cooldown" / "checkpoints" / name).rename(tmp_path / name)
    (run / "stages" / "cooldown" / "checkpoints" / "latest").write_text("step-00000006\n")
    capsys.readouterr()
    run_stage(cooled, run, progress=False)
    assert "resuming from step-00000006" in capsys.readouterr().out
    assert [r["lr"] for r in train_records(run, "cooldown")] == lrs


def test_child_stage_continues_weights_optimizer_and_schedule(tmp_path, prepared) -> None:
    run = new_run(tmp_path, prepared)
    run_stage(stage_config(), run, progress=False)
    child = stage_config(
        name="continual",
        mixture={"prose": 1, "code": 1},
        ramp={"tokens": 2048, "start": {"prose": 1}},
        max_tokens=4096,
        init_from={"stage": "base"},
    )
    result = run_stage(child, run, progress=False)
    records = train_records(run, "continual")
    assert [r["step"] for r in records] == [9, 10, 11, 12]  # the step count continues
    assert records[0]["tokens"] == 9 * 1024 and records[0]["stage_tokens"] == 1024
    assert records[0]["lr"] == pytest.approx(lr_at(9 * 1024, child.optim, child.schedule))
    assert records[0]["mixture"]["code"] < records[-1]["mixture"]["code"]  # the ramp

    # the first validation of the child equals the parent's last (same weights)
    def val(stage):
        lines = (run / "stages" / stage / "metrics.jsonl").read_text().splitlines()
        return [r for r in map(json.loads, lines) if r["kind"] == "val"]

    assert val("continual")[0]["domains"] == val("base")[-1]["domains"]
    assert (
        val("continual")[-1]["domains"]["code"]["loss"] < val("base")[-1]["domains"]["code"]["loss"]
    )
    assert result.step == 12


def test_child_without_schedule_carry_restarts_the_counters(tmp_path, prepared) -> None:
    run = new_run(tmp_path, prepared)
    run_stage(stage_config(max_tokens=2048), run, progress=False)
    child = stage_config(
        name="c", max_tokens=1024, init_from={"stage": "base", "carry": ["weights"]}
    )
    run_stage(child, run, progress=False)
    assert [r["step"] for r in train_records(run, "c")] == [1]


def test_missing_parent_checkpoint_is_an_error(tmp_path, prepared) -> None:
    child = stage_config(name="continual", init_from={"stage": "base"})
    with pytest.raises(ConfigError, match="holds no checkpoint; train stage 'base'"):
        run_stage(child, new_run(tmp_path, prepared), progress=False)


def test_unfinished_parent_is_an_error(tmp_path, prepared, monkeypatch) -> None:
    run = new_run(tmp_path, prepared)
    run_stage(stage_config(max_tokens=3072), run, progress=False)  # finishes at step 3
    meta = run / "stages" / "base" / "checkpoints" / "step-00000003" / "meta.json"
    meta.write_text(meta.read_text().replace('"finished": true', '"finished": false'))
    child = stage_config(name="continual", init_from={"stage": "base"})
    with pytest.raises(ConfigError, match="is not the end of that stage"):
        run_stage(child, run, progress=False)


def test_resuming_with_a_changed_model_shape_is_an_error(tmp_path, prepared) -> None:
    run = new_run(tmp_path, prepared)
    run_stage(stage_config(max_tokens=3072), run, progress=False)
    wider = stage_config(max_tokens=4096, model={"hidden_size": 128})
    with pytest.raises(ConfigError, match="hidden_size: 64 in the checkpoint, 128 now"):
        run_stage(wider, run, progress=False)


def test_resuming_under_changed_params_is_an_error_and_fresh_retrains(tmp_path, prepared) -> None:
    run = new_run(tmp_path, prepared)
    run_stage(stage_config(max_tokens=3072), run, progress=False)
    first = curve(train_records(run))
    changed = stage_config(max_tokens=3072, optim={"lr": 5e-4, "min_lr": 5e-5})
    with pytest.raises(ConfigError, match=r"trained with other params \(optim changed since\)"):
        run_stage(changed, run, progress=False)
    run_stage(changed, run, resume=False, progress=False)
    again = curve(train_records(run))
    assert [r[0] for r in again] == [r[0] for r in first]
    assert [r[3] for r in again] != [r[3] for r in first]  # the new learning rates were used


def test_longer_budget_resumes_the_same_training(tmp_path, prepared) -> None:
    run = new_run(tmp_path, prepared)
    run_stage(stage_config(max_tokens=3072), run, progress=False)
    run_stage(stage_config(max_tokens=4096), run, progress=False)  # max_tokens may grow
    assert len(train_records(run)) == 4096 // stage_config().global_batch_tokens


def test_data_prepared_for_another_seq_len_is_an_error(tmp_path, prepared) -> None:
    stage = stage_config(data={"seq_len": 16}, global_batch_tokens=512)
    with pytest.raises(ConfigError, match="has seq_len 32; prepare it again"):
        run_stage(stage, new_run(tmp_path, prepared), progress=False)


def test_missing_data_is_an_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="no prepared data"):
        run_stage(stage_config(), tmp_path, progress=False)


@pytest.mark.parametrize("step", [5, 6])  # 6: a checkpoint is due there
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(
    tmp_path, prepared, monkeypatch, step
) -> None:
    run = new_run(tmp_path, prepared)
    monkeypatch.setenv("TINYLAB_FAULT", f"nan-at-step:{step}")
    with pytest.raises(NonFiniteLossError, match=rf"loss = nan, .* at step {step} .*step-00000003"):
        run_stage(stage_config(), run, progress=False)
    ckpts = run / "stages" / "base" / "checkpoints"
    assert [p.name for p in list_checkpoints(ckpts)] == ["step-00000003"]
    assert [r["step"] for r in train_records(run)] == list(range(1, step))


def test_a_steps_numbers_are_read_once_the_next_step_is_queued(
    tmp_path, prepared, monkeypatch
) -> None:
    """The host reads a step's loss and gradient norm after the next step's forward and backward
    (so on a GPU it never waits with the queue empty), except before a checkpoint (3, 6), a
    validation (4, 8) and the end (8), where they are read at once."""
    events = []
    real_forward_backward, real_ensure_finite = loop.forward_backward, loop.ensure_finite

    def forward_backward(*args, **kwargs):
        events.append(("forward-backward", sum(kind != "read" for kind, _ in events) + 1))
        return real_forward_backward(*args, **kwargs)

    def ensure_finite(loss, grad_norm, *, state, **kwargs):
        events.append(("read", state.step + 1))
        return real_ensure_finite(loss, grad_norm, state=state, **kwargs)

    monkeypatch.setattr(loop, "forward_backward", forward_backward)
    monkeypatch.setattr(loop, "ensure_finite", ensure_finite)
    run_stage(stage_config(), new_run(tmp_path, prepared), progress=False)
    assert [f"{kind} {n}" for kind, n in events] == [
        "forward-backward 1", "forward-backward 2", "read 1", "forward-backward 3", "read 2",
        "read 3", "forward-backward 4", "read 4", "forward-backward 5", "forward-backward 6",
        "read 5", "read 6", "forward-backward 7", "forward-backward 8", "read 7", "read 8",
    ]  # fmt: skip


def test_a_steps_time_is_its_own_though_it_is_read_after_the_next(
    tmp_path, prepared, monkeypatch
) -> None:
    """Steps 2 and 5 take 0.5 s longer (their forward-backward sleeps); their metrics lines say
    so, not those of steps 1 and 4, which are read after steps 2 and 5 have run."""
    real_forward_backward = loop.forward_backward
    calls = []

    def forward_backward(*args, **kwargs):
        calls.append(1)
        if len(calls) in (2, 5):
            time.sleep(0.5)
        return real_forward_backward(*args, **kwargs)

    monkeypatch.setattr(loop, "forward_backward", forward_backward)
    run = new_run(tmp_path, prepared)
    run_stage(stage_config(), run, progress=False)
    seconds = {r["step"]: r["step_s"] for r in train_records(run)}
    typical = sorted(seconds.values())[len(seconds) // 2]
    assert [step for step, s in seconds.items() if s > typical + 0.3] == [2, 5]


def test_profiled_steps_write_a_summary_and_a_trace_and_train_the_same(tmp_path, prepared) -> None:
    """`profile` steps 2-3 (of 8): summary.json of those two steps (kernel and wall time per
    step, shares by kind, ATen ops with shapes) and a gzipped Chrome trace; the losses are those
    of the run without it."""
    plain = new_run(tmp_path, prepared, "plain")
    run_stage(stage_config(), plain, progress=False)
    profiled = new_run(tmp_path, prepared, "profiled")
    run_stage(stage_config(), profiled, progress=False, profile=StepRange(2, 3))
    assert curve(train_records(profiled)) == curve(train_records(plain))
    folder = profiled / "stages" / "base" / "profile"
    summary = json.loads((folder / "summary.json").read_text())
    assert (summary["steps"], summary["steps_profiled"]) == ("2-3", 2)
    assert min(summary["kernel_ms_per_step"], summary["wall_ms_per_step"]) > 0
    assert sum(share for _, share in summary["kinds"]) == pytest.approx(1.0)
    assert any(op == "aten::mm" for op, _, _ in summary["ops"])
    assert summary["timeline"] is None  # no GPU work on the CPU: tests/test_timeline.py
    with gzip.open(folder / "trace.json.gz") as trace:
        assert json.load(trace)["traceEvents"]


def test_a_profile_cut_short_by_the_stages_end_keeps_what_ran(tmp_path, prepared) -> None:
    run = new_run(tmp_path, prepared)
    run_stage(stage_config(), run, progress=False, profile=StepRange(7, 20))
    summary = json.loads((run / "stages" / "base" / "profile" / "summary.json").read_text())
    assert (summary["steps"], summary["steps_profiled"]) == ("7-20", 2)


def test_a_resumed_stage_profiles_the_steps_of_the_range_it_runs(tmp_path, prepared) -> None:
    run = new_run(tmp_path, prepared)
    run_stage(stage_config(max_tokens=4096), run, progress=False)  # steps 1-4
    run_stage(stage_config(), run, progress=False, profile=StepRange(3, 6))  # steps 5-8
    summary = json.loads((run / "stages" / "base" / "profile" / "summary.json").read_text())
    assert (summary["steps"], summary["steps_profiled"]) == ("3-6", 2)


def test_an_error_inside_the_profiled_steps_is_the_error_raised(
    tmp_path, prepared, monkeypatch
) -> None:
    run = new_run(tmp_path, prepared)
    monkeypatch.setenv("TINYLAB_FAULT", "nan-at-step:3")
    with pytest.raises(NonFiniteLossError, match="at step 3"):
        run_stage(stage_config(), run, progress=False, profile=StepRange(2, 5))
    assert not (run / "stages" / "base" / "profile").exists()


def test_a_profile_of_steps_the_stage_never_runs_warns(tmp_path, prepared) -> None:
    run = new_run(tmp_path, prepared)
    with pytest.warns(UserWarning, match="--profile-steps 30-31: none of these steps ran"):
        run_stage(stage_config(), run, progress=False, profile=StepRange(30, 31))
    assert not (run / "stages" / "base" / "profile").exists()


@pytest.mark.parametrize("text", ["0-2", "5-3", "a", "1-2-3", "", "-4", "3-"])
def test_bad_profile_steps_name_the_value_and_the_form(text) -> None:
    with pytest.raises(ConfigError, match=rf"--profile-steps '{text}': give FIRST-LAST"):
        StepRange.parse(text)
    assert StepRange.parse("6") == StepRange(6, 6) and str(StepRange.parse("6-7")) == "6-7"


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_activation_checkpointing_changes_memory_not_the_math(tmp_path, prepared, mode) -> None:
    common = {"max_tokens": 2048, "checkpoint": {"every_steps": 100}}
    plain = run_stage(stage_config(**common), new_run(tmp_path, prepared, "plain"))
    recomputed = run_stage(
        stage_config(parallel={"activation_checkpointing": mode}, **common),
        new_run(tmp_path, prepared, "ac"),
    )
    want = [r["loss"] for r in train_records(plain.stage_dir.parent.parent)]
    got = [r["loss"] for r in train_records(recomputed.stage_dir.parent.parent)]
    assert got == pytest.approx(want, abs=1e-6)
    assert "layers.0.mlp.down_proj.weight" in str(
        list(final_weights(recomputed.stage_dir.parent.parent))
    )


def test_null_cadences_are_off_and_attention_is_resolved_into_resolved_yaml(
    tmp_path, prepared
) -> None:
    stage = stage_config(
        checkpoint={"every_steps": None}, validation={"every_steps": None},
        model={"attention": "auto"},
    )  # fmt: skip
    result = run_stage(stage, new_run(tmp_path, prepared), progress=False)
    assert [p.name for p in list_checkpoints(result.stage_dir / "checkpoints")] == [
        "step-00000008"
    ]  # at the end only
    assert [r["step"] for r in read_metrics(result.stage_dir, "val")] == [0, 8]  # start, end
    resolved = load_config(result.stage_dir / "resolved.yaml", StageConfig)
    assert resolved.model.attention == ("flash_attention_2" if flash_attn_available() else "sdpa")
    assert resolved.checkpoint.every_steps is None and resolved.validation.every_steps is None
