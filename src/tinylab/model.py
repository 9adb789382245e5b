"""The model: transformers' LlamaForCausalLM with TinyLlama's init, and its size and cost.

We use HF's own class, so a checkpoint's parameter names are HF Llama's and an export needs no
converter. Presets live in params/models/*.yaml (`tinyllama-1.1b` is the paper's exact config).

    tinylab model info tinyllama-1.1b        # 1,100,048,384 params, 7.314e9 FLOPs/token at T=2048
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import AttentionInterface, DynamicCache, LlamaConfig, LlamaForCausalLM
from transformers.masking_utils import find_packed_sequence_indices

from tinylab.config.loader import PARAMS_DIR, ConfigError, load_config
from tinylab.config.model import ModelConfig
from tinylab.files import replace_dir_atomic

FA4 = "flash_attention_4"  # flash-attn-4 (flash_attn.cute), through fa4_attention_forward
ATTENTION_BACKENDS = ("sdpa", "eager", "flash_attention_2", FA4)
_FA4_KEY = "tinylab_fa4"  # its key in transformers' registries: no "flash" in it (transformers
# takes any name with "flash" in it for one of its own FlashAttention paths)
_FA4_CAUSAL_ONLY = (
    f"attention = {FA4!r} runs causal attention without a mask only, and this batch has a padding "
    "mask, packed sequences or a static KV cache; use attention: sdpa for padded or packed batches"
)


def load_preset(name_or_path: str | Path) -> ModelConfig:
    """A model preset by name (params/models/NAME.yaml) or by path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = PARAMS_DIR / "models" / f"{name_or_path}.yaml"
        if not path.is_file():
            names = sorted(p.stem for p in (PARAMS_DIR / "models").glob("*.yaml"))
            raise ConfigError(f"model preset {str(name_or_path)!r} not found; presets: {names}")
    return load_config(path, ModelConfig)


def flash_attn_available() -> bool:
    """True when FlashAttention-2 itself (flash-attn's CUDA extension) is importable and a CUDA
    device is present; flash-attn-4 installs the `flash_attn` package too, with only `.cute`."""
    return importlib.util.find_spec("flash_attn_2_cuda") is not None and torch.cuda.is_available()


def flash_attn_4_preferred() -> bool:
    """True on a Hopper GPU (compute capability 9.x: H100, H200) with flash-attn-4 installed,
    where its kernels were measured faster than cuDNN's SDPA (bench/RESULTS.md, issue 21)."""
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9:
        return False
    try:
        return importlib.util.find_spec("flash_attn.cute") is not None
    except ImportError:  # no `flash_attn` package at all
        return False


def resolve_attention(requested: str) -> str:
    """The attention implementation to ask transformers for; errors if it cannot run here.
    `auto`: FlashAttention-4 where it was measured fastest (Hopper), else FlashAttention-2 when
    installed, else SDPA (PyTorch picks cuDNN's or its own FlashAttention-2 kernel)."""
    if requested == "auto":
        if flash_attn_4_preferred():
            return FA4
        return "flash_attention_2" if flash_attn_available() else "sdpa"
    if requested not in ATTENTION_BACKENDS:
        raise ConfigError(
            f"attention = {requested!r}: allowed: auto, {', '.join(ATTENTION_BACKENDS)}"
        )
    if requested == "flash_attention_2" and not flash_attn_available():
        raise ConfigError(
            "attention = 'flash_attention_2' needs the flash-attn package and a CUDA GPU; install "
            "the gpu extra (FLASH_ATTN_CUDA_ARCHS=90 pip install flash-attn --no-build-isolation) "
            "or use attention: sdpa"
        )
    if requested == FA4:
        _check_flash_attn_4()
    return requested


def hf_attention(name: str) -> str:
    """transformers' name of a resolved attention: ours for FlashAttention-4 (registered on first
    use; transformers' own `flash_attention_4` entry stays theirs), else `name` itself.

    Ours has no mask function in transformers' registry, so its mask preparation hands every layer
    no mask at once. With one, it looks for packed sequences in the position ids it makes itself,
    a host sync in every forward, after which the GPU idled while the host caught up (about 10 ms
    per step of the 1.1B at 4 micro-batches on an H200, read from one profile). The inputs that
    need a mask are refused by `refuse_masked_inputs` instead (hooked in where such a model is
    built)."""
    if name != FA4:
        return name
    AttentionInterface.register(_FA4_KEY, fa4_attention_forward)
    return _FA4_KEY


def refuse_masked_inputs(module: nn.Module, args: tuple, kwargs: dict) -> None:
    """A forward pre-hook for a LlamaModel on FlashAttention-4 (causal attention, no mask): a
    ConfigError for a padding mask, packed position ids or a KV cache other than transformers'
    DynamicCache (a static one needs a mask), before any layer runs."""

    def given(name: str, position: int, *aliases: str):
        for key in (name, *aliases):
            if kwargs.get(key) is not None:
                return kwargs[key]
        return args[position] if len(args) > position else None

    mask, positions = given("attention_mask", 1), given("position_ids", 2)
    cache = given("cache", 3, "past_key_values")  # its name before transformers 5.2x
    padded = mask is not None and not bool(mask.all())
    packed = (
        positions is not None
        and not torch.compiler.is_compiling()  # traced, the check finds packing everywhere
        and find_packed_sequence_indices(positions) is not None
    )
    if padded or packed or (cache is not None and not isinstance(cache, DynamicCache)):
        raise ConfigError(_FA4_CAUSAL_ONLY)


def _with_fa4_guard(model: LlamaForCausalLM) -> LlamaForCausalLM:
    if model.config._attn_implementation == _FA4_KEY:
        model.model.register_forward_pre_hook(refuse_masked_inputs, with_kwargs=True)
    return model


def _check_flash_attn_4() -> None:
    """A ConfigError unless flash-attn-4's `flash_attn.cute` imports and a CUDA GPU is here."""
    if not torch.cuda.is_available():
        raise ConfigError(
            f"attention = {FA4!r} needs a CUDA GPU (FlashAttention-4's CuTe kernels); use "
            "attention: sdpa here"
        )
    try:
        importlib.import_module("flash_attn.cute")
    except ImportError as err:
        raise ConfigError(
            f"attention = {FA4!r} needs the flash-attn-4 package (import flash_attn.cute: {err}); "
            "on a GPU machine with no network: scripts/gpu_env.sh fa4 here, then . "
            "scripts/gpu_env.sh install there (README, GPU), or use attention: sdpa"
        ) from err


def fa4_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention call on FlashAttention-4: query [B, H, T, D] and key/value
    [B, H_kv, T, D] (GQA: H_kv divides H) in, [B, T, H, D] out as LlamaAttention reshapes it;
    causal, with the module's scaling; no padding mask, no dropout."""
    if attention_mask is not None:
        raise ConfigError(_FA4_CAUSAL_ONLY)
    if dropout or not getattr(module, "is_causal", True):
        raise ConfigError(f"attention = {FA4!r} runs causal attention without dropout only")
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # FA4's [B, T, H, D]
    out, _lse = _fa4_call(q, k, v, scaling)
    return out, None


@torch.compiler.disable  # the CuTe DSL compiles and launches its kernels in Python
def _fa4_call(q, k, v, scaling):
    from flash_attn.cute import flash_attn_func  # resolve_attention checked that it imports

    return flash_attn_func(q, k, v, softmax_scale=scaling, causal=True)


def with_resolved_attention(cfg: ModelConfig) -> ModelConfig:
    """`cfg` with its attention decided (auto: resolve_attention): what a stage
    resolves once when it starts and writes into its resolved.yaml."""
    return cfg.model_copy(update={"attention": resolve_attention(cfg.attention)})


def to_hf_config(cfg: ModelConfig) -> LlamaConfig:
    """The transformers LlamaConfig of a preset (no biases, no dropout, SwiGLU)."""
    return LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=cfg.tie_word_embeddings,
        bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        attention_dropout=0.0,
        initializer_range=cfg.resolved_init_std,
    )


def build_model(
    cfg: ModelConfig, *, device: str | torch.device = "cpu", seed: int | None = None
) -> LlamaForCausalLM:
    """Build LlamaForCausalLM with TinyLlama's init; on the meta device nothing is allocated."""
    hf_config = to_hf_config(cfg)
    hf_config._attn_implementation = hf_attention(resolve_attention(cfg.attention))
    with torch.device(device):
        model = _with_fa4_guard(LlamaForCausalLM(hf_config))
    if torch.device(device).type != "meta":
        init_weights(model, cfg, seed=seed)
    return model


@torch.no_grad()
def init_weights(model: LlamaForCausalLM, cfg: ModelConfig, *, seed: int | None = None) -> None:
    """TinyLlama's init: N(0, std) for embeddings and linears, a smaller std for the two
    projections that write into the residual stream (o_proj, down_proj), norms = 1."""
    generator = torch.Generator(device="cpu")
    if seed is not None:
        generator.manual_seed(seed)
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding | nn.Linear):
            residual = name.endswith(("o_proj", "down_proj"))
            std = cfg.resolved_init_std_residual if residual else cfg.resolved_init_std
            _normal_(module.weight, std, generator)
        elif (
            hasattr(module, "weight")
            and module.weight is not None
            and "norm" in type(module).__name__.lower()
        ):
            module.weight.fill_(1.0)


def _normal_(weight: torch.Tensor, std: float, generator: torch.Generator) -> None:
    # Sample on the CPU with an explicit generator so the init is the same on every device.
    weight.copy_(
        torch.empty(weight.shape, dtype=torch.float32).normal_(0.0, std, generator=generator)
    )


def count_parameters(cfg: ModelConfig) -> dict[str, int]:
    """Parameter counts, from a model built on the meta device (no memory is allocated)."""
    model = build_model(cfg.model_copy(update={"attention": "sdpa"}), device="meta")
    total = sum(p.numel() for p in model.parameters())
    embedding = model.model.embed_tokens.weight.numel()
    lm_head = 0 if cfg.tie_word_embeddings else model.lm_head.weight.numel()
    return {
        "params": total,
        "embedding": embedding,
        "lm_head": lm_head,
        "non_embedding": total - embedding - lm_head,
    }


def flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
    """Training FLOPs per token: 6 N + 12 L d T, with N the non-embedding params incl. lm_head
    (forward + backward of the matmuls, plus attention scores; docs/PAPER.md, 'Throughput')."""
    counts = count_parameters(cfg)
    n_matmul = counts["non_embedding"] + cfg.hidden_size * cfg.vocab_size
    return 6 * n_matmul + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq_len


def model_info(cfg: ModelConfig, *, seq_len: int | None = None) -> dict[str, int | float]:
    """Sizes and cost of a preset, as `tinylab model info` prints them."""
    seq_len = seq_len or cfg.max_position_embeddings
    return {
        **count_parameters(cfg),
        "seq_len": seq_len,
        "flops_per_token": flops_per_token(cfg, seq_len),
    }


def save_hf(model: LlamaForCausalLM, folder: str | Path, *, tokenizer=None) -> Path:
    """Write an HF folder (safetensors, config, tokenizer if given) that plain
    `AutoModelForCausalLM.from_pretrained` loads; it replaces `folder` whole, atomically."""
    with replace_dir_atomic(Path(folder)) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
    return Path(folder)


def load_hf(
    folder: str | Path, *, attention: str = "auto", dtype: torch.dtype = torch.float32
) -> LlamaForCausalLM:
    """Load an HF folder written by `save_hf` (or any Llama checkpoint) for training or eval."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{folder}: not an HF model folder (no config.json)")
    model = LlamaForCausalLM.from_pretrained(
        folder, attn_implementation=hf_attention(resolve_attention(attention)), dtype=dtype
    )
    return _with_fa4_guard(model)


def safetensors_problem(folder: Path) -> str | None:
    """What is wrong with an HF folder's safetensors weights (none, a shard its index names is
    missing, a file truncated or corrupt), from the headers alone; None when they are whole."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return f"{folder}: no *.safetensors weights"
    index = Path(folder) / "model.safetensors.index.json"
    if index.is_file():
        named = set(json.loads(index.read_text())["weight_map"].values())
        missing = sorted(named - {f.name for f in files})
        if missing:
            return f"{index}: shards {missing} are missing"
    for path in files:
        try:
            with safe_open(path, framework="pt") as weights:
                weights.keys()
        except (SafetensorError, OSError) as err:
            return f"{path}: unreadable safetensors ({err}); the file is truncated or corrupt"
    return None
