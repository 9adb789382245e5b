"""On a CUDA GPU (`pytest -m gpu`; skipped elsewhere): the attention kernel that runs, the paper
stages' kernels (per-layer compile + Liger's fused loss, FSDP2 over one device) against eager,
resume, LoRA under the same kernels, evaluation in bf16 against fp32, the loop's step readout
without a sync, and the 1.1B forward against transformers' eager reference. Tiny models on the
tiny corpora of _train_fixtures, except the 1.1B forward. Tolerances are stated in each test;
bench/RESULTS.md records a run's summary."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from _train_fixtures import STAGE, curve, new_run, run_module, stage_config, train_records

from tinylab.config.loader import dump_config
from tinylab.config.stage import ParallelConfig
from tinylab.model import build_model, load_preset, to_hf_config
from tinylab.train import run_stage
from tinylab.train.parallel import Distributed, apply_liger, compute_context

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs a CUDA GPU: run `pytest -m gpu` on a GPU machine (README, 'GPU')",
    ),
]
needs_liger = pytest.mark.skipif(  # on a machine without CUDA the reason above shows instead
    torch.cuda.is_available() and importlib.util.find_spec("liger_kernel") is None,
    reason="needs liger-kernel (the gpu extra; scripts/gpu_env.sh installs it)",
)
# The paper stages' kernels (params/stages/tinyllama-v1.1/base.yaml), and eager bf16 beside them.
DEFAULT = {"precision": "bf16", "compile": "layers", "liger": ["loss"], "single_process": "fsdp",
           "reshard_after_forward": False, "reshard_after_backward": False}  # fmt: skip
EAGER = {"precision": "bf16", "compile": "off", "liger": [], "single_process": "plain"}
MODEL = {"hidden_size": 128, "intermediate_size": 352, "num_attention_heads": 4,
         "num_key_value_heads": 2, "max_position_embeddings": 64}  # fmt: skip
STEPS = 24
FUSED_ATTENTION = ("flash", "fmha", "cudnn", "efficient_attention", "cutlass")


def gpu_stage(parallel: dict, **overrides):
    """The tiny stage, 24 steps on the GPU with `parallel`; `overrides` replace any key."""
    fields = {"model": MODEL, "max_tokens": STEPS * STAGE["global_batch_tokens"],
              "checkpoint": {"every_steps": 8}, "validation": {"every_steps": 12},
              "parallel": parallel}  # fmt: skip
    return stage_config(**(fields | overrides))


@pytest.fixture(scope="module")
def trained(prepared, tmp_path_factory):
    """The tiny stage trained 24 steps with the paper's kernels and eagerly, on the GPU."""
    root = tmp_path_factory.mktemp("gpu")
    runs = {}
    for name, parallel in (("default", DEFAULT), ("eager", EAGER)):
        runs[name] = new_run(root, prepared, name)
        run_stage(gpu_stage(parallel), runs[name], progress=False)
    return runs


def test_the_attention_kernel_that_runs_is_a_fused_one() -> None:
    """Profiler kernel names of a forward + backward under the stage's compute context: SDPA's
    fused attention (cuDNN or FlashAttention-2 inside PyTorch), never the unfused math path; and
    `sdpa_backend: flash` runs PyTorch's flash kernel."""
    cfg = load_preset("tinyllama-1.1b").model_copy(update={"num_hidden_layers": 2})
    model = build_model(cfg.model_copy(update={"attention": "sdpa"}), device="cuda", seed=0)
    ctx = Distributed(0, 1, 0, torch.device("cuda"), None)
    ids = torch.randint(0, cfg.vocab_size, (2, 2048), device="cuda")
    ran = {}
    for backend in ("auto", "flash"):
        parallel = ParallelConfig(precision="bf16", sdpa_backend=backend)
        with (
            compute_context(parallel, ctx),
            torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof,
        ):
            model(input_ids=ids, labels=ids).loss.backward()
            torch.cuda.synchronize()
        names = {e.key for e in prof.key_averages()}
        ran[backend] = sorted(n for n in names if any(k in n.lower() for k in FUSED_ATTENTION))
        print(f"sdpa_backend={backend}: attention kernels {ran[backend]}")
    assert ran["auto"], "no fused attention kernel ran: SDPA fell back to the math path"
    assert any("flash" in n.lower() for n in ran["flash"]), ran["flash"]


@needs_liger
def test_compiled_liger_default_matches_eager_over_24_steps(trained) -> None:
    """Same batches, same init: per-step losses within 0.05 nats (bf16 in both; bench/RESULTS.md
    saw <= 0.031 at 1.1B), and both learn (loss falls by more than 1 nat)."""
    default, eager = (train_records(trained[n]) for n in ("default", "eager"))
    assert len(default) == len(eager) == STEPS
    diffs = [abs(a["loss"] - b["loss"]) for a, b in zip(default, eager, strict=True)]
    print(f"max |loss diff| over {STEPS} steps: {max(diffs):.4f}")
    assert max(diffs) < 0.05
    assert default[-1]["loss"] < default[0]["loss"] - 1.0


@needs_liger
def test_resume_on_gpu_continues_the_same_losses(prepared, tmp_path) -> None:
    """Killed after step 10 (checkpoint at 8), resumed: steps 9-24 as the unbroken run's, within
    2e-3 nats (GPU kernels are not bitwise deterministic across processes)."""
    config = tmp_path / "stage.yaml"
    config.write_text(dump_config(gpu_stage(DEFAULT)))
    whole, killed = new_run(tmp_path, prepared, "whole"), new_run(tmp_path, prepared, "killed")
    assert run_module(config, whole).returncode == 0
    assert run_module(config, killed, fault="kill-after-step:10").returncode != 0
    resumed = run_module(config, killed)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = curve(train_records(whole)), curve(train_records(killed))
    assert [r[:2] for r in a] == [r[:2] for r in b]  # same steps, same tokens
    assert [r[2] for r in b] == pytest.approx([r[2] for r in a], abs=2e-3)


@needs_liger
def test_a_lora_stage_trains_under_compile_and_liger(trained) -> None:
    lora = gpu_stage(
        DEFAULT, name="lora", mixture={"code": 1.0}, max_tokens=12 * STAGE["global_batch_tokens"],
        init_from={"stage": "base", "carry": ["weights", "schedule"]},
        adapter={"rank": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"]},
    )  # fmt: skip
    result = run_stage(lora, trained["default"], progress=False)
    losses = [r["loss"] for r in train_records(trained["default"], "lora")]
    assert len(losses) == 12 and all(map(torch.isfinite, torch.tensor(losses)))
    assert losses[-1] < losses[0]  # the adapter learns the new domain
    assert (result.stage_dir / "adapter" / "adapter_config.json").is_file()


needs_float8 = pytest.mark.skipif(
    torch.cuda.is_available()
    and (
        torch.cuda.get_device_capability() < (8, 9) or importlib.util.find_spec("torchao") is None
    ),
    reason="needs torchao (the gpu extra) and a GPU of compute capability 8.9+ (H100, H200)",
)


@needs_liger
@needs_float8
@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise"])
def test_fp8_trains_like_bf16_over_24_steps(trained, prepared, tmp_path, recipe) -> None:
    """The default's kernels with float8 matmuls (torchao), same batches and init as the bf16
    default: per-step losses within 0.1 nats, the model learns, and it saves and exports."""
    run = new_run(tmp_path, prepared, f"fp8-{recipe}")
    parallel = DEFAULT | {"precision": "fp8", "fp8": {"recipe": recipe}}
    result = run_stage(gpu_stage(parallel), run, progress=False)
    fp8, bf16 = train_records(run), train_records(trained["default"])
    diffs = [abs(a["loss"] - b["loss"]) for a, b in zip(fp8, bf16, strict=True)]
    print(f"fp8 {recipe}: max |loss diff| vs bf16 over {STEPS} steps: {max(diffs):.4f}")
    assert max(diffs) < 0.1 and fp8[-1]["loss"] < fp8[0]["loss"] - 1.0
    assert (result.stage_dir / "hf" / "model.safetensors").is_file()


@needs_liger
def test_evaluation_log_likelihoods_bf16_match_fp32(trained, prepared) -> None:
    """lm-eval's log-likelihoods of the trained model in bf16 weights vs fp32: within 2% + 0.05
    nats each, and the same choice on every pair of continuations."""
    from lm_eval.api.instance import Instance
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tinylab.evaluate.harness import make_lm

    tokenizer = AutoTokenizer.from_pretrained(prepared / "tokenizer")
    hf_dir = trained["default"] / "stages" / "base" / "hf"
    pairs = [(f"the {a} sat on the", f" {b}") for a in ("cat", "dog", "moon", "tree")
             for b in ("mat", "river", "stone", "light", "far")]  # fmt: skip
    scores = {}
    for dtype in (torch.bfloat16, torch.float32):
        model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype).to("cuda")
        lm = make_lm(model, tokenizer, batch_size=8)
        requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
        scores[dtype] = [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]
    low, high = scores[torch.bfloat16], scores[torch.float32]
    for a, b in zip(low, high, strict=True):
        assert abs(a - b) <= 0.02 * abs(b) + 0.05, (a, b)
    for start in range(0, len(pairs), 5):
        pick = slice(start, start + 5)
        assert max(range(5), key=low[pick].__getitem__) == max(range(5), key=high[pick].__getitem__)


def test_the_1b_forward_matches_transformers_eager_reference() -> None:
    """tinylab's TinyLlama 1.1B (SDPA; all of Liger's fused ops when installed) against
    transformers' eager LlamaForCausalLM with the same weights, fp32 without TF32: relative
    logits error < 1e-3 in fp32 and < 3e-2 under the training's bf16 autocast."""
    from transformers import LlamaForCausalLM

    cfg = load_preset("tinyllama-1.1b").model_copy(update={"attention": "sdpa"})
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    model = build_model(cfg, device="cuda", seed=3407)
    hf_config = to_hf_config(cfg)
    hf_config._attn_implementation = "eager"
    with torch.device("cuda"):
        reference = LlamaForCausalLM(hf_config)
    reference.load_state_dict(model.state_dict())
    ids = torch.randint(0, cfg.vocab_size, (1, 2048), device="cuda", generator=None)
    ctx = Distributed(0, 1, 0, torch.device("cuda"), None)
    if importlib.util.find_spec("liger_kernel"):
        apply_liger(model, ctx.device, ["rms_norm", "rope", "swiglu"])
    with torch.no_grad():
        want = reference(input_ids=ids, use_cache=False).logits.double()
        got = model(input_ids=ids, use_cache=False).logits.double()
        with compute_context(ParallelConfig(precision="bf16"), ctx):
            low = model(input_ids=ids, use_cache=False).logits.double()

    def rel(x: torch.Tensor) -> float:
        return float((x - want).norm() / want.norm())

    print(f"1.1B logits vs eager reference: fp32 {rel(got):.2e}, bf16 autocast {rel(low):.2e}")
    assert rel(got) < 1e-3
    assert rel(low) < 3e-2


def test_a_steps_numbers_reach_the_host_without_a_sync_and_its_time_is_the_gpus(
    tmp_path,
) -> None:
    """The loop's StepReadout copies a step's loss and gradient norm off the GPU without a
    synchronization (CUDA's sync debug mode raises on one) and reads back exactly those; the
    step's time is the GPU's (tens of ms of spinning), not the host's wait before it reads
    (0.5 s)."""
    import time

    from tqdm import tqdm

    from tinylab.layout import RunLayout, read_metrics
    from tinylab.train.batching import BatchPlan
    from tinylab.train.checkpoint import TrainState
    from tinylab.train.loop import StepClock, StepReadout
    from tinylab.train.metrics import MetricsLog

    class Mixture:
        def realized(self, start: int, stop: int) -> dict[str, float]:
            return {"prose": 1.0}

    stage = stage_config()
    layout = RunLayout(tmp_path).stage("base")
    layout.root.mkdir(parents=True)
    metrics = MetricsLog(layout.metrics, enabled=True)
    readout = StepReadout(
        stage=stage, layout=layout, plan=BatchPlan.from_stage(stage, world_size=1, rank=0),
        source=Mixture(), metrics=metrics, bar=tqdm(disable=True), flops=1, peak=None,
        ctx=Distributed(0, 1, 0, torch.device("cuda"), None), before_stop=None,
    )  # fmt: skip
    loss, grad_norm = torch.tensor(2.5, device="cuda"), torch.tensor(0.75, device="cuda")
    torch.cuda.synchronize()
    spin = time.perf_counter()
    torch.cuda._sleep(10**6)
    torch.cuda.synchronize()
    cycles = int(10**6 * 0.05 / (time.perf_counter() - spin))  # 23 ms on an H200: tens of ms
    torch.cuda.set_sync_debug_mode("error")
    try:
        clock = StepClock.start(torch.device("cuda"))
        torch.cuda._sleep(cycles)
        readout.hold(loss, grad_norm, before=TrainState(), after=TrainState(step=1, stage_step=1),
                     lr=1e-3, first_window=0, clock=clock, log=True)  # fmt: skip
    finally:
        torch.cuda.set_sync_debug_mode("default")
    time.sleep(0.5)
    readout.read()
    metrics.close()
    (record,) = read_metrics(layout.metrics, "train")
    assert (record["step"], record["loss"], record["grad_norm"]) == (1, 2.5, 0.75)
    assert readout.loss == 2.5
    print(f"step_s {record['step_s']:.3f} for tens of ms of the GPU's spinning")
    assert 0.005 < record["step_s"] < 0.25
