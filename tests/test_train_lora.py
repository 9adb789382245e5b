"""LoRA stages (tinylab.train.lora) on the tiny model: only the adapter trains, the merged HF
export equals the unmerged model, resume is exact, a child stage gets the merged weights, and
bad input gets one clear message."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from _train_fixtures import curve, final_weights, new_run, stage_config, train_records

from tinylab import cli
from tinylab.config.loader import ConfigError, dump_config
from tinylab.model import count_parameters
from tinylab.train import run_stage
from tinylab.train.checkpoint import read_meta

# A LoRA continual stage on base: rank 4 on the attention projections, a higher LR than base.
LORA = {
    "name": "lora",
    "mixture": {"prose": 1, "code": 1},
    "max_tokens": 4096,
    "optim": {"lr": 3e-2, "min_lr": 3e-3},
    "init_from": {"stage": "base", "carry": ["weights", "schedule"]},
    "adapter": {"rank": 4, "alpha": 8, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
}
LLAMA_PARAMS = count_parameters(stage_config().model)["params"]


def lora_stage(**overrides):
    return stage_config(**{**LORA, **overrides})


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, prepared):
    """A run with base (8 steps) and a LoRA stage on it (4 steps), shared by the read-only tests."""
    torch.set_num_threads(1)
    run = new_run(tmp_path_factory.mktemp("lora"), prepared)
    run_stage(stage_config(), run, progress=False)
    return run, run_stage(lora_stage(), run, progress=False)


def val(run, stage: str) -> list[dict]:
    lines = (run / "stages" / stage / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "val"]


def test_lora_trains_only_the_adapter_on_frozen_base_weights(trained) -> None:
    run, result = trained
    records = train_records(run, "lora")
    assert [r["step"] for r in records] == [9, 10, 11, 12]  # the schedule continues
    assert val(run, "lora")[0]["domains"] == val(run, "base")[-1]["domains"]  # base's weights
    assert (
        val(run, "lora")[-1]["domains"]["code"]["bpb"]
        < val(run, "base")[-1]["domains"]["code"]["bpb"]
    )  # the adapter learned the new domain
    # 2 layers x 4 projections x r (in + out); q, o: 64 -> 64; k, v: 64 -> 32 (GQA)
    assert result.trainable_params == 2 * 4 * ((64 + 64) * 2 + (64 + 32) * 2)
    assert result.total_params == result.trainable_params + LLAMA_PARAMS
    base, merged = final_weights(run, "base"), final_weights(run, "lora")
    assert base.keys() == merged.keys()  # plain Llama names: no peft wrapper in the export
    for name in base:
        changed = not torch.equal(base[name], merged[name])
        assert changed == any(
            f"self_attn.{m}" in name for m in ("q_proj", "k_proj", "v_proj", "o_proj")
        ), name
    meta = read_meta(result.checkpoint)
    assert meta["adapter"]["base"] == {"stage": "base", "checkpoint": "step-00000008"}
    assert meta["adapter"]["config"]["rank"] == 4


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing")
def test_merged_export_logits_equal_the_unmerged_peft_model(trained) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run, result = trained
    adapter_dir = result.stage_dir / "adapter"
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["r"] == 4
    unmerged = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(run / "stages" / "base" / "hf"), adapter_dir
    ).eval()
    merged = AutoModelForCausalLM.from_pretrained(result.hf_dir).eval()  # plain transformers
    base = AutoModelForCausalLM.from_pretrained(run / "stages" / "base" / "hf").eval()
    ids = torch.randint(0, 320, (3, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = unmerged(input_ids=ids).logits, merged(input_ids=ids).logits
        before = base(input_ids=ids).logits
    assert want.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (got - before).abs().max() > 1e-2  # the adapter changed the model: not a vacuous test


def test_lora_resume_is_exact(tmp_path, prepared) -> None:
    run = new_run(tmp_path, prepared, "a")
    run_stage(stage_config(), run, progress=False)
    stage = lora_stage(max_tokens=8192, adapter={**LORA["adapter"], "dropout": 0.1})  # RNG used
    whole = run_stage(stage, run, progress=False)
    reference = curve(train_records(run, "lora"))

    resumed = new_run(tmp_path, prepared, "b")
    run_stage(stage_config(), resumed, progress=False)
    run_stage(
        lora_stage(max_tokens=4096, adapter=stage.adapter.model_dump()), resumed, progress=False
    )
    again = run_stage(stage, resumed, progress=False)  # resumes at its 4th step
    assert curve(train_records(resumed, "lora")) == reference  # exact floats
    assert read_meta(again.checkpoint)["state"] == read_meta(whole.checkpoint)["state"]
    for name, tensor in final_weights(run, "lora").items():
        assert torch.equal(final_weights(resumed, "lora")[name], tensor), name


def test_child_of_a_lora_stage_starts_from_the_merged_weights(trained, tmp_path) -> None:
    run, _ = trained
    cooldown = stage_config(
        name="cooldown",
        mixture={"prose": 1, "code": 1},
        max_tokens=2048,
        init_from={"stage": "lora", "carry": ["weights", "schedule"]},
    )
    result = run_stage(cooldown, run, progress=False)
    first, last = val(run, "cooldown")[0]["domains"], val(run, "lora")[-1]["domains"]
    for domain, values in last.items():  # merged weights: the same losses up to rounding
        assert first[domain]["loss"] == pytest.approx(values["loss"], rel=1e-5, abs=0)
    assert [r["step"] for r in train_records(run, "cooldown")] == [13, 14]
    assert result.trainable_params == result.total_params == LLAMA_PARAMS  # all train again
    carried = stage_config(
        **{**cooldown.model_dump(), "name": "c2", "init_from": {"stage": "lora"}}
    )
    with pytest.raises(ConfigError, match="carries 'optimizer' from stage 'lora', which trained"):
        run_stage(carried, run, progress=False)


def test_resuming_full_weights_as_an_adapter_run_and_back_is_refused(tmp_path, prepared) -> None:
    run = new_run(tmp_path, prepared)
    run_stage(stage_config(max_tokens=1024), run, progress=False)
    run_stage(lora_stage(max_tokens=1024, adapter=None), run, progress=False)  # full weights
    with pytest.raises(ConfigError, match="holds full weights, but the params now train a LoRA"):
        run_stage(lora_stage(max_tokens=2048), run, progress=False)
    run_stage(lora_stage(max_tokens=1024), run, resume=False, progress=False)  # start over
    with pytest.raises(ConfigError, match="holds a LoRA adapter, but the params now train full"):
        run_stage(lora_stage(max_tokens=2048, adapter=None), run, progress=False)


def test_lora_without_a_trained_parent_is_an_error(tmp_path, prepared) -> None:
    with pytest.raises(ConfigError, match="holds no checkpoint; train stage 'base'"):
        run_stage(lora_stage(), new_run(tmp_path, prepared), progress=False)


@pytest.mark.parametrize(
    ("adapter", "init_from", "message"),
    [
        ({"target_modules": ["q_proj", "qkv_proj"]}, None,
         "adapter.target_modules = ['q_proj', 'qkv_proj']: no module named 'qkv_proj' in a "
         "Llama block; allowed: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj"),
        ({"target_modules": ["q_proj", "q_proj"]}, None, "each module may appear once"),
        ({"rank": 0}, None, "adapter.rank = 0: Input should be greater than 0"),
        ({"alpha": -8}, None, "adapter.alpha = -8: Input should be greater than 0"),
        ({"dropout": 1.0}, None, "adapter.dropout = 1.0: Input should be less than 1"),
        ("qlora", None, "adapter = 'qlora': expected 'lora' or a mapping"),
        ("lora", "null", "adapter = 'lora': a lora adapter trains on a parent's weights, but "
         "init_from is None"),
        ("lora", {"stage": "base", "carry": ["schedule"]}, "trains on a parent's weights"),
        ("lora", {"stage": "base"}, "cannot carry the parent's 'optimizer'"),
    ],
)  # fmt: skip
def test_bad_adapter_params_exit_2_naming_key_and_value(
    tmp_path, monkeypatch, capsys, adapter, init_from, message
) -> None:
    data = json.loads(json.dumps(stage_config().model_dump(mode="json")))
    data.update(name="lora", adapter=adapter, init_from=LORA["init_from"])
    if init_from is not None:
        data["init_from"] = None if init_from == "null" else init_from
    path = tmp_path / "stages" / "lora.yaml"
    path.parent.mkdir()
    path.write_text(json.dumps(data))  # JSON is YAML
    monkeypatch.setattr(sys, "argv", ["tinylab", "params", "check", str(path)])
    with pytest.raises(SystemExit) as exit_info:
        cli.run()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert str(path) in err and message in " ".join(err.split()), err


def test_shorthand_gives_llama_defaults() -> None:
    adapter = lora_stage(adapter="lora").adapter
    assert (adapter.type, adapter.rank, adapter.alpha, adapter.dropout) == ("lora", 16, 32.0, 0.0)
    assert adapter.target_modules == [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    ]  # fmt: skip
    assert "adapter:\n  type: lora\n  rank: 16" in dump_config(lora_stage(adapter="lora"))
