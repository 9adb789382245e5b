"""The speed options of a stage (parallel.compile, liger, sdpa_backend), the synthetic token
streams of the benchmarks and the trainer's live readout: same math on CPU, clear errors."""

from __future__ import annotations

import copy
import importlib.util
import re

import numpy as np
import pytest
import torch
from _train_fixtures import new_run, stage_config, train_records
from torch._dynamo.utils import counters

from tinylab.config.kinds import load_params
from tinylab.config.loader import PARAMS_DIR, ConfigError
from tinylab.config.stage import ParallelConfig
from tinylab.model import build_model, load_preset
from tinylab.train import RandomWindows, run_stage, train_stage
from tinylab.train.loop import live_postfix
from tinylab.train.parallel import Distributed, compute_context, convert_float8, float8_role

pytestmark = pytest.mark.usefixtures("one_thread")


def losses(options: dict, tmp_path, prepared, name: str) -> list[float]:
    stage = stage_config(max_tokens=2048, checkpoint={"every_steps": 100}, parallel=options)
    run = new_run(tmp_path, prepared, name)
    run_stage(stage, run, progress=False)
    return [r["loss"] for r in train_records(run)]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["layers", "model"])
def test_compiled_layers_or_model_train_the_same_math(tmp_path, prepared, mode) -> None:
    eager = losses({"precision": "fp32"}, tmp_path, prepared, "eager")
    compiled = losses({"precision": "fp32", "compile": mode}, tmp_path, prepared, "compiled")
    assert compiled == pytest.approx(eager, abs=1e-5)


@pytest.mark.slow
def test_one_compiled_graph_serves_every_layer(tmp_path, prepared) -> None:
    """Per-layer compile must not recompile per layer: past dynamo's limit (8) the remaining
    layers would silently run eager (as they did while training forwards built a KV cache)."""
    torch._dynamo.reset()
    counters.clear()
    layers = torch._dynamo.config.recompile_limit + 2
    stage = stage_config(
        max_tokens=1024, model={"num_hidden_layers": layers}, checkpoint={"every_steps": 100},
        parallel={"precision": "fp32", "compile": "layers"},
    )  # fmt: skip
    run_stage(stage, new_run(tmp_path, prepared, "layers"), progress=False)
    frames = counters["frames"]  # one graph for training, one for validation (no grad)
    assert 1 <= frames["ok"] == frames["total"] <= 2, dict(frames)
    assert counters["stats"]["unique_graphs"] <= 2


def test_the_math_sdpa_backend_trains_the_same_as_pytorchs_choice(tmp_path, prepared) -> None:
    auto = losses({"precision": "fp32"}, tmp_path, prepared, "auto")
    math = losses({"precision": "fp32", "sdpa_backend": "math"}, tmp_path, prepared, "math")
    assert math == pytest.approx(auto, abs=1e-5)


def test_compute_context_selects_the_sdpa_backend_and_restores_it() -> None:
    ctx = Distributed(0, 1, 0, torch.device("cpu"), None)
    with compute_context(ParallelConfig(sdpa_backend="math", precision="fp32"), ctx):
        assert torch.backends.cuda.math_sdp_enabled()
        assert not torch.backends.cuda.flash_sdp_enabled()
        assert not torch.backends.cuda.cudnn_sdp_enabled()
    assert torch.backends.cuda.flash_sdp_enabled()


def test_older_boolean_compile_still_loads() -> None:
    assert ParallelConfig(compile=True).compile == "layers"
    assert ParallelConfig(compile=False).compile == "off"


@pytest.mark.parametrize(
    "ops", [[], ["loss"], ["rms_norm", "rope", "swiglu", "loss"], ["swiglu", "rms_norm"]]
)
def test_liger_is_a_list_of_its_ops(ops) -> None:
    parallel = ParallelConfig(liger=ops)
    assert parallel.liger == ops
    assert ParallelConfig.model_validate(parallel.model_dump(mode="json")) == parallel
    assert ParallelConfig().liger == []  # off by default


def test_compile_model_under_fsdp2_is_an_error_not_per_layer_compile(tmp_path, prepared) -> None:
    parallel = {"compile": "model", "single_process": "fsdp"}
    with pytest.raises(ConfigError, match="compile = 'model' .* FSDP2 .* use compile: layers"):
        run_stage(stage_config(parallel=parallel), new_run(tmp_path, prepared), progress=False)
    with pytest.raises(ConfigError, match=r"FSDP2 \(2 process\(es\), single_process: plain"):
        train_stage(stage_config(parallel={"compile": "model"}), tmp_path / "b", nproc=2)
    assert not (tmp_path / "b").exists()  # refused before launching


@pytest.mark.parametrize(
    ("override", "allowed"),
    [
        ("parallel.compile=fast", "'off', 'layers' or 'model'"),
        ("parallel.liger=loss", "expected a list of ops, e.g. [loss] or [rms_norm, swiglu, loss]"),
        ("parallel.liger=true", "expected a list of ops, e.g. [loss]"),
        ("parallel.liger=[rope,flash]", "'rms_norm', 'rope', 'swiglu' or 'loss'"),
        ("parallel.liger=[loss,loss]", "each op may appear once"),
        ("parallel.sdpa_backend=flash3", "'auto', 'flash', 'cudnn', 'efficient' or 'math'"),
        ("parallel.single_process=ddp", "'plain' or 'fsdp'"),
    ],
)
def test_unknown_speed_options_name_the_key_and_the_allowed_values(override, allowed) -> None:
    base = PARAMS_DIR / "stages" / "tinyllama-v1.1" / "base.yaml"
    with pytest.raises(ConfigError) as err:
        load_params(base, overrides=[override])
    key, value = override.split("=")
    assert key in str(err.value) and value in str(err.value) and allowed in str(err.value)


def test_the_paper_stages_default_to_the_fastest_measured_configuration() -> None:
    for name in ("base", "continual-mathcode", "cooldown-mathcode"):
        stage = load_params(PARAMS_DIR / "stages" / "tinyllama-v1.1" / f"{name}.yaml")
        parallel = stage.parallel
        assert (parallel.compile, parallel.liger, parallel.sdpa_backend) == (
            "layers",
            ["loss"],
            "auto",
        )
        assert parallel.reshard_after_forward is False
        assert parallel.single_process == "fsdp" and stage.micro_batch_size == 16


def test_zipf_copy_windows_are_deterministic_and_half_copies() -> None:
    source = RandomWindows(vocab_size=1000, seq_len=4096, seed=3, pattern="zipf-copy")
    windows = source.train(range(2, 4))
    np.testing.assert_array_equal(windows, source.train(range(2, 4)))
    assert windows.shape == (2, 4097) and windows.min() >= 0 and windows.max() < 1000
    lag = RandomWindows.COPY_LAG
    copied = (windows[:, lag:] == windows[:, :-lag]).mean()
    assert 0.45 < copied < 0.6  # half are copies; a few fresh draws repeat by chance
    frequent = np.bincount(windows.ravel(), minlength=1000)
    assert frequent[0] > 10 * frequent[500]  # Zipf: rank 1 far above rank 501


def test_an_unknown_synthetic_pattern_is_an_error() -> None:
    with pytest.raises(ValueError, match="pattern = 'markov': allowed: uniform, zipf-copy"):
        RandomWindows(vocab_size=10, seq_len=4, seed=0, pattern="markov")


def test_the_live_readout_shows_loss_lr_tokens_per_device_and_mfu() -> None:
    record = {"loss": 2.34567, "lr": 3e-4, "tokens_per_s": 120_000.0, "mfu": 0.4321}
    assert live_postfix(record, world_size=2) == {
        "loss": "2.346",
        "lr": "3.00e-04",
        "tok/s/dev": "60,000",
        "mfu": "43.2%",
    }
    assert "mfu" not in live_postfix({**record, "mfu": None}, world_size=1)


FP8 = "parallel.precision=fp8"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("parallel.precision=fp4", "'fp32', 'bf16' or 'fp8'"),
        (f"{FP8} parallel.fp8.recipe=blockwise",
         "'tensorwise', 'rowwise' or 'rowwise_with_gw_hp'"),
        ("parallel.fp8.keep_bf16=[lm_head]", "fp8: options are set but precision is bf16"),
        (f"{FP8} parallel.fp8.recipe=rowwise parallel.fp8.bf16_inputs=[down_proj]",
         "bf16_inputs: ['down_proj'] needs recipe: tensorwise"),
        (f"{FP8} parallel.fp8.keep_bf16=[lm_head,down_proj] parallel.fp8.bf16_inputs=[down_proj]",
         "['down_proj'] in both keep_bf16 (['lm_head', 'down_proj']) and bf16_inputs"),
    ],
)  # fmt: skip
def test_bad_fp8_options_name_the_key_and_what_is_allowed(override, message) -> None:
    base = PARAMS_DIR / "stages" / "tinyllama-v1.1" / "base.yaml"
    with pytest.raises(ConfigError) as err:
        load_params(base, overrides=override.split(" "))
    assert message in str(err.value)


def test_fp8_all_gather_needs_the_tensorwise_recipe() -> None:
    with pytest.raises(ValueError, match="all_gather: true needs recipe: tensorwise"):
        ParallelConfig(precision="fp8", fp8={"recipe": "rowwise", "all_gather": True})
    assert ParallelConfig(precision="fp8", fp8={"all_gather": True}).fp8.all_gather


def test_fp8_defaults_and_bf16_dumps_without_an_fp8_block() -> None:
    """fp8 fills in its defaults; a bf16 stage dumps (and so fingerprints) as before fp8 existed."""
    fp8 = ParallelConfig(precision="fp8").fp8
    assert (fp8.recipe, fp8.keep_bf16, fp8.bf16_inputs, fp8.all_gather) == (
        "tensorwise",
        ["lm_head"],
        ["down_proj"],
        False,
    )
    assert "fp8" not in ParallelConfig().model_dump()
    assert ParallelConfig(precision="fp8").model_dump()["fp8"]["recipe"] == "tensorwise"


def test_float8_takes_every_linear_but_the_kept_ones_and_odd_shapes() -> None:
    fp8 = ParallelConfig(
        precision="fp8", fp8={"keep_bf16": ["lm_head", "k_proj"], "bf16_inputs": ["down_proj"]}
    ).fp8
    linear = torch.nn.Linear(64, 128)
    assert float8_role(linear, "model.layers.0.mlp.up_proj", fp8) == "all"
    assert float8_role(linear, "lm_head", fp8) is None
    assert float8_role(linear, "model.layers.3.self_attn.k_proj", fp8) is None
    assert float8_role(linear, "model.layers.3.self_attn.kk_proj", fp8) == "all"  # by name
    assert float8_role(linear, "model.layers.3.mlp.down_proj", fp8) == "input_gradient"
    assert float8_role(torch.nn.Linear(64, 100), "model.layers.0.mlp.up_proj", fp8) is None
    assert float8_role(torch.nn.Linear(100, 64), "model.layers.0.mlp.down_proj", fp8) is None
    defaults = ParallelConfig(precision="fp8").fp8
    assert float8_role(linear, "model.layers.0.mlp.down_proj", defaults) == "input_gradient"
    assert float8_role(linear, "lm_head", defaults) is None
    assert float8_role(linear, "model.layers.0.mlp.gate_proj", defaults) == "all"
    assert float8_role(torch.nn.Embedding(16, 64), "model.embed_tokens", fp8) is None


@pytest.mark.parametrize(
    ("block", "inputs"),
    [
        ({}, ["down_proj"]),
        ({"keep_bf16": ["lm_head", "down_proj"]}, []),
        ({"keep_bf16": ["mlp.down_proj"]}, []),  # keep_bf16 names it by a longer suffix
        ({"recipe": "rowwise"}, []),  # bf16_inputs is tensorwise only
        ({"keep_bf16": ["lm_head"], "bf16_inputs": []}, []),
    ],
)
def test_bf16_inputs_left_out_follow_the_recipe_and_keep_bf16(block, inputs) -> None:
    """Left out, bf16_inputs is [down_proj] less what keep_bf16 keeps, none under rowwise; a
    dump always writes it (a resolved.yaml says what ran) and loads back as it was."""
    parallel = ParallelConfig(precision="fp8", fp8=block)
    assert parallel.fp8.bf16_inputs == inputs
    dumped = parallel.model_dump()["fp8"]
    assert dumped["bf16_inputs"] == inputs
    assert ParallelConfig(precision="fp8", fp8=dumped) == parallel


def test_a_layer_kept_and_given_bf16_inputs_by_suffix_is_refused() -> None:
    fp8 = {"keep_bf16": ["mlp.down_proj"], "bf16_inputs": ["down_proj"]}
    with pytest.raises(ValueError, match=re.escape("['down_proj'] in both keep_bf16 (['mlp.")):
        ParallelConfig(precision="fp8", fp8=fp8)


@pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="needs torchao")
def test_bf16_inputs_keep_the_forward_and_weight_gradient_in_bf16() -> None:
    """With `bf16_inputs: [down_proj]` (torchao's float8 emulated on CPU): down_proj's forward
    and weight gradient equal plain bf16's bit for bit and only its input gradient differs (it
    went through float8); gate_proj computes its forward in float8; lm_head stays a Linear."""
    from torchao.float8.float8_linear import Float8Linear

    cfg = load_preset("demo").model_copy(update={"num_hidden_layers": 1, "hidden_size": 64,
                                                 "intermediate_size": 128})  # fmt: skip
    model = build_model(cfg, device="cpu", seed=0).to(torch.bfloat16)
    reference = copy.deepcopy(model)
    fp8 = ParallelConfig(precision="fp8", fp8={"keep_bf16": ["lm_head"],
                                               "bf16_inputs": ["down_proj"]}).fp8  # fmt: skip
    convert_float8(model, fp8, emulate=True)
    mlp, plain = model.model.layers[0].mlp, reference.model.layers[0].mlp
    assert type(model.lm_head) is torch.nn.Linear
    assert isinstance(mlp.down_proj, Float8Linear) and isinstance(mlp.gate_proj, Float8Linear)
    x = torch.randn(8, 32, 128, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(0))
    grad = torch.randn(8, 32, 64, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(1))
    inputs = x.clone().requires_grad_(), x.clone().requires_grad_()
    outputs = mlp.down_proj(inputs[0]), plain.down_proj(inputs[1])
    for out in outputs:
        out.backward(grad)
    assert torch.equal(outputs[0], outputs[1])
    assert torch.equal(mlp.down_proj.weight.grad, plain.down_proj.weight.grad)
    error = (inputs[0].grad - inputs[1].grad).float().norm() / inputs[1].grad.float().norm()
    assert 0 < error < 0.2  # e5m2 gradients: 2 mantissa bits
    h = torch.randn(8, 32, 64, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert not torch.equal(mlp.gate_proj(h), plain.gate_proj(h))


def test_fp8_on_cpu_is_refused_with_what_it_needs(tmp_path, prepared) -> None:
    stage = stage_config(parallel={"precision": "fp8"})
    with pytest.raises(ConfigError, match=r"fp8' needs a CUDA GPU of compute capability 8\.9"):
        run_stage(stage, new_run(tmp_path, prepared), progress=False)
