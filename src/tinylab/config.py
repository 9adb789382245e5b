"""Params files: typed schemas, YAML loading, `extends:` merging, references and overrides.

Every params file under params/ is one of a few kinds (models, data, stages, pipelines, eval),
each a pydantic schema with extra keys forbidden. Loading a file:

1. reads YAML with a loader that fixes YAML 1.1 traps (`1e-4` and `1.5e12` are floats, `yes`/`no`/
   `on`/`off` stay strings, duplicate keys are errors);
2. merges the chain of `extends:` parents (mappings merge key by key, everything else replaces);
3. replaces references to other params files (a stage's `model: demo`) by their loaded content;
4. applies dotted overrides (`optim.lr=3e-4`), the same syntax for the CLI's `--set` and papermill;
5. validates, turning any failure into one `ConfigError` naming the file, key path, value and
   what is allowed.

    tinylab params check params/stages/demo/base.yaml
    tinylab params show params/stages/demo/base.yaml --set optim.lr=1e-3
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tinylab.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PARAMS_DIR = PROJECT_ROOT / "params"


def project_path(path: str | Path) -> Path:
    """A path from params or notebook parameters: relative ones are relative to the project root,
    so notebooks behave the same whether the kernel runs in the root or in notebooks/."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


class ConfigError(UserError):
    """A params file (or override) is invalid; the message names file, key, value and rule."""


# --------------------------------------------------------------------------------------------
# YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader without YAML 1.1's traps: see the module docstring."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    mapping: dict = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in mapping:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        mapping[key] = loader.construct_object(value_node, deep=deep)
    return mapping


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_yaml(text: str, *, source: str = "<string>") -> Any:
    """Parse YAML text with tinylab's loader; raise ConfigError on malformed input."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader derives from SafeLoader
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: malformed YAML: {err}") from None


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """Read one YAML file that must hold a non-empty mapping."""
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    data = parse_yaml(path.read_text(encoding="utf-8"), source=str(path))
    if data is None:
        raise ConfigError(f"{path}: file is empty; expected a mapping of params")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping of params at the top, got {type(data).__name__}"
        )
    return data


# --------------------------------------------------------------------------------------------
# Schemas


class Schema(BaseModel):
    """Base of every params schema: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Schema):
    """A Llama architecture, in HF LlamaConfig's names (TinyLlama: docs/PAPER.md, 'Model')."""

    vocab_size: PositiveInt = Field(description="tokenizer vocabulary size")
    hidden_size: PositiveInt = Field(description="model width d")
    intermediate_size: PositiveInt = Field(description="SwiGLU inner width")
    num_hidden_layers: PositiveInt = Field(description="decoder blocks L")
    num_attention_heads: PositiveInt = Field(description="query heads")
    num_key_value_heads: PositiveInt = Field(description="key/value heads (GQA)")
    max_position_embeddings: PositiveInt = Field(description="context length the model supports")
    rms_norm_eps: PositiveFloat = Field(1e-5, description="RMSNorm epsilon")
    rope_theta: PositiveFloat = Field(10000.0, description="RoPE base")
    tie_word_embeddings: bool = Field(False, description="share embedding and lm_head weights")
    bos_token_id: NonNegativeInt = Field(1, description="beginning-of-sequence id")
    eos_token_id: NonNegativeInt = Field(2, description="end-of-sequence id")
    init_std: PositiveFloat | None = Field(
        None, description="std of embeddings and linears; default sqrt(2 / (5 d))"
    )
    init_std_residual: PositiveFloat | None = Field(
        None, description="std of o_proj and down_proj; default 1 / (sqrt(d) * L)"
    )
    attention: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto",
        description="attention kernel; auto = flash_attention_2 if flash-attn is installed and a "
        "CUDA GPU is present, else sdpa, decided once when a stage starts and written into its "
        "resolved.yaml",
    )

    @field_validator("num_attention_heads")
    @classmethod
    def _heads_divide_width(cls, heads: int, info: ValidationInfo) -> int:
        hidden = info.data.get("hidden_size")
        if hidden is not None and hidden % heads:
            raise ValueError(f"must divide hidden_size ({hidden})")
        return heads

    @field_validator("num_key_value_heads")
    @classmethod
    def _kv_heads_divide_heads(cls, kv_heads: int, info: ValidationInfo) -> int:
        heads = info.data.get("num_attention_heads")
        if heads is not None and heads % kv_heads:
            raise ValueError(f"must divide num_attention_heads ({heads})")
        return kv_heads

    @field_validator("bos_token_id", "eos_token_id")
    @classmethod
    def _token_in_vocab(cls, token_id: int, info: ValidationInfo) -> int:
        vocab = info.data.get("vocab_size")
        if vocab is not None and token_id >= vocab:
            raise ValueError(f"must be below vocab_size ({vocab})")
        return token_id

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def resolved_init_std(self) -> float:
        return self.init_std or math.sqrt(2 / (5 * self.hidden_size))

    @property
    def resolved_init_std_residual(self) -> float:
        return self.init_std_residual or 1 / (math.sqrt(self.hidden_size) * self.num_hidden_layers)


class TokenizerConfig(Schema):
    """Where the tokenizer comes from."""

    kind: Literal["hub", "path", "train"] = Field(
        description="hub: AutoTokenizer from a hub id; path: a local folder; train: byte-fallback "
        "BPE trained on the stage corpora"
    )
    name_or_path: str | None = Field(None, description="hub id or folder (hub and path kinds)")
    vocab_size: PositiveInt | None = Field(None, description="vocabulary size (train kind)")
    train_bytes_per_source: PositiveInt = Field(
        4_000_000, description="text bytes per source (training split) the BPE is trained on"
    )

    @model_validator(mode="after")
    def _fields_for_kind(self) -> TokenizerConfig:
        if self.kind in ("hub", "path") and not self.name_or_path:
            raise ValueError(f"tokenizer kind {self.kind!r} needs name_or_path")
        if self.kind == "train" and self.vocab_size is None:
            raise ValueError("tokenizer kind 'train' needs vocab_size")
        if self.kind == "train" and self.vocab_size is not None and self.vocab_size < 260:
            raise ValueError(
                "vocab_size must be at least 260 for a byte-fallback BPE (256 bytes + specials)"
            )
        return self


class HubSource(Schema):
    """A Hugging Face hub dataset, read with `datasets.load_dataset`."""

    kind: Literal["hub"]
    domain: str = Field(description="domain label used for per-domain validation and plots")
    path: str = Field(description="dataset id, e.g. cerebras/SlimPajama-627B")
    name: str | None = Field(None, description="dataset configuration name")
    data_dir: str | None = Field(None, description="subfolder of the dataset repository")
    data_files: list[str] | None = Field(
        None, description="files of a packaged builder (path: json, parquet, text), as datasets"
    )
    revision: str | None = Field(None, description="dataset revision (git ref) to pin")
    split: str = Field("train", description="split to read")
    text_field: str = Field("text", description="field holding the document text")
    streaming: bool = Field(True, description="stream instead of downloading the whole set")
    exclude: dict[str, list[str]] = Field(
        default_factory=dict,
        description="drop documents whose (dotted) field has one of these values",
    )
    max_documents: PositiveInt | None = Field(None, description="read at most this many documents")
    max_bytes: PositiveInt | None = Field(
        None, description="stop after the document that reaches this many UTF-8 bytes"
    )


class LocalSource(Schema):
    """Local files (txt, jsonl, parquet), one or more glob patterns."""

    kind: Literal["local"]
    domain: str = Field(description="domain label used for per-domain validation and plots")
    paths: list[str] = Field(
        min_length=1, description="files or glob patterns; relative to the project root"
    )
    format: Literal["auto", "txt", "jsonl", "parquet"] = Field(
        "auto", description="file format; auto = from the extension"
    )
    text_field: str = Field("text", description="field holding the text (jsonl, parquet)")
    max_documents: PositiveInt | None = Field(None, description="read at most this many documents")
    max_bytes: PositiveInt | None = Field(
        None, description="stop after the document that reaches this many UTF-8 bytes"
    )


class DemoSource(Schema):
    """One of tinylab's built-in demo corpora, fetched from package registries into a cache."""

    kind: Literal["demo"]
    domain: str = Field(description="domain label used for per-domain validation and plots")
    corpus: str = Field(description="name of a built-in demo corpus")
    max_documents: PositiveInt | None = Field(None, description="read at most this many documents")
    max_bytes: PositiveInt | None = Field(
        None, description="stop after the document that reaches this many UTF-8 bytes"
    )


Source = Annotated[HubSource | LocalSource | DemoSource, Field(discriminator="kind")]


class DataConfig(Schema):
    """The corpora of a pipeline, its tokenizer and how documents are packed into windows."""

    tokenizer: TokenizerConfig
    sources: dict[str, Source] = Field(min_length=1, description="named sources")
    seq_len: PositiveInt = Field(
        description="tokens per training sequence (windows hold seq_len + 1)"
    )
    add_bos: bool = Field(True, description="prepend BOS to every document")
    add_eos: bool = Field(True, description="append EOS to every document")
    validation_fraction: float = Field(
        0.01, gt=0, lt=0.5, description="share of each source's documents held out for validation"
    )
    shard_tokens: PositiveInt = Field(
        2**26, description="tokens per binary shard file (rounded down to whole windows)"
    )
    num_workers: PositiveInt | None = Field(
        None, description="tokenizer processes; default all cores"
    )
    seed: int = Field(3407, description="seed of the train/validation split")


class OptimConfig(Schema):
    """AdamW and clipping (docs/PAPER.md, 'Training hyperparameters')."""

    lr: PositiveFloat = Field(description="peak learning rate")
    min_lr: NonNegativeFloat = Field(description="learning rate at the end of the cosine")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas")
    eps: PositiveFloat = Field(1e-8, description="AdamW epsilon")
    weight_decay: NonNegativeFloat = Field(0.1, description="AdamW decoupled weight decay")
    grad_clip: PositiveFloat | None = Field(1.0, description="max global grad norm; null = off")

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in betas):
            raise ValueError("both betas must be in [0, 1)")
        return betas

    @field_validator("min_lr")
    @classmethod
    def _min_below_peak(cls, min_lr: float, info: ValidationInfo) -> float:
        lr = info.data.get("lr")
        if lr is not None and min_lr > lr:
            raise ValueError(f"must not exceed lr ({lr})")
        return min_lr


class ScheduleConfig(Schema):
    """Linear warmup then cosine decay, as a function of tokens seen since the first stage."""

    warmup_tokens: NonNegativeInt = Field(description="tokens of linear warmup")
    decay_tokens: PositiveInt = Field(
        description="token count at which the cosine reaches min_lr (end of the whole pipeline)"
    )

    @field_validator("decay_tokens")
    @classmethod
    def _decay_after_warmup(cls, decay: int, info: ValidationInfo) -> int:
        warmup = info.data.get("warmup_tokens")
        if warmup is not None and decay <= warmup:
            raise ValueError(f"must exceed warmup_tokens ({warmup})")
        return decay


class RampConfig(Schema):
    """Mixture weights that move linearly from `start` to the stage's mixture."""

    tokens: PositiveInt = Field(description="tokens (from the stage start) over which weights ramp")
    start: dict[str, NonNegativeFloat] = Field(
        description="weights at the stage start; sources not named start at 0"
    )


class InitFrom(Schema):
    """Which parent stage a stage starts from, and what it carries over."""

    stage: str = Field(description="name of the parent stage in the same run")
    carry: list[Literal["weights", "optimizer", "schedule"]] = Field(
        ["weights", "optimizer", "schedule"],
        description="weights; optimizer state; schedule position (step and tokens seen)",
    )

    @field_validator("carry")
    @classmethod
    def _optimizer_needs_weights(cls, carry: list[str]) -> list[str]:
        if "optimizer" in carry and "weights" not in carry:
            raise ValueError("carrying 'optimizer' state without 'weights' is meaningless")
        return carry


class CheckpointConfig(Schema):
    """Checkpoint cadence and retention."""

    every_steps: PositiveInt | None = Field(
        100, description="save every N optimizer steps; null = off (only at the end, see at_end)"
    )
    keep_last: PositiveInt = Field(2, description="keep the newest K checkpoints")
    at_end: bool = Field(True, description="save when the stage ends (off only for benchmarks)")


class EvalEveryConfig(Schema):
    """Periodic per-domain validation during training."""

    every_steps: PositiveInt | None = Field(
        50,
        description="validate every N optimizer steps; null = off (only at the stage's start "
        "and end)",
    )
    max_windows: PositiveInt = Field(64, description="validation windows per domain")


# Liger-Kernel ops that `parallel.liger` can pick; `loss` is its fused linear cross-entropy.
LigerOp = Literal["rms_norm", "rope", "swiglu", "loss"]
LIGER_OPS: tuple[str, ...] = get_args(LigerOp)


class ParallelConfig(Schema):
    """FSDP2 and kernel options."""

    precision: Literal["fp32", "bf16"] = Field("bf16", description="compute precision")
    replicate_nodes: PositiveInt = Field(
        1, description="HSDP replica groups (usually the node count); 1 = plain FSDP"
    )
    reshard_after_forward: bool = Field(True, description="FSDP2 reshard_after_forward")
    single_process: Literal["plain", "fsdp"] = Field(
        "plain",
        description="how ONE process trains (several processes always use FSDP2): plain = the "
        "module itself, bf16 as autocast over fp32 weights (no process group: notebooks, CPU, "
        "the demo); fsdp = FSDP2 over a one-device mesh exactly as several processes train, bf16 "
        "parameters in compute with fp32 master weights (the paper stages: 6.6% faster at "
        "micro-batch 16 on one H100, bench/RESULTS.md)",
    )
    activation_checkpointing: Literal["off", "selective", "full"] = Field("off")
    compile: Literal["off", "layers", "model"] = Field(
        "off",
        description="torch.compile each decoder layer (layers; true = layers), or the whole "
        "model (model; only without FSDP2: one process with single_process: plain)",
    )
    liger: list[LigerOp] = Field(
        [],
        description="Liger-Kernel's fused ops, when installed: rms_norm, rope, swiglu (fused "
        "RMSNorm, RoPE, SwiGLU) and loss (fused linear cross-entropy); [] = off",
    )
    sdpa_backend: Literal["auto", "flash", "cudnn", "efficient", "math"] = Field(
        "auto",
        description="kernel behind attention: sdpa (auto = PyTorch's choice; flash = its "
        "FlashAttention-2, cudnn = cuDNN's fused attention)",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto = cuda when a GPU is present, else cpu"
    )
    peak_flops: PositiveFloat | None = Field(
        None,
        description="peak FLOP/s per device for MFU; null = 989e12 on H100/H200 in bf16, "
        "else MFU is not reported",
    )

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_from_bool(cls, value: object) -> object:
        """compile: true/false means layers/off."""
        return ("layers" if value else "off") if isinstance(value, bool) else value

    @field_validator("liger", mode="before")
    @classmethod
    def _liger_is_a_list(cls, value: object) -> object:
        if not isinstance(value, list | tuple):
            raise ValueError(
                "expected a list of ops, e.g. [loss] or [rms_norm, swiglu, loss] ([] = off), "
                "from " + ", ".join(LIGER_OPS)
            )
        return value

    @field_validator("liger")
    @classmethod
    def _liger_ops_once(cls, ops: list[str]) -> list[str]:
        if len(set(ops)) != len(ops):
            raise ValueError("each op may appear once")
        return ops


# The Linear layers of a Llama decoder block: what a LoRA adapter can target.
LLAMA_BLOCK_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# Keys whose string value is a shorthand naming their mapping's type (adapter: lora); an
# override inside one (--set adapter.rank=8) keeps that type.
TYPE_SHORTHANDS = frozenset({"adapter"})


class AdapterConfig(Schema):
    """A LoRA adapter (peft) trained on frozen parent weights instead of all weights."""

    type: Literal["lora"] = Field("lora", description="adapter kind (peft LoRA)")
    rank: PositiveInt = Field(16, description="LoRA rank r")
    alpha: PositiveFloat = Field(32.0, description="LoRA alpha; the update is scaled by alpha / r")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the LoRA input")
    target_modules: list[str] = Field(
        list(LLAMA_BLOCK_LINEARS),
        min_length=1,
        description="Linear layers of each decoder block that get an adapter",
    )

    @field_validator("target_modules")
    @classmethod
    def _known_unique_modules(cls, names: list[str]) -> list[str]:
        unknown = [n for n in names if n not in LLAMA_BLOCK_LINEARS]
        if unknown:
            raise ValueError(
                f"no module named {', '.join(map(repr, unknown))} in a Llama block; "
                f"allowed: {', '.join(LLAMA_BLOCK_LINEARS)}"
            )
        if len(set(names)) != len(names):
            raise ValueError("each module may appear once")
        return names


class StageConfig(Schema):
    """One training stage: model, data mixture, budget, batch, schedule and parent."""

    name: str = Field(description="stage name, unique within a pipeline")
    model: ModelConfig = Field(description="a models preset name, a .yaml path, or inline")
    data: DataConfig = Field(description="a data params name, a .yaml path, or inline")
    mixture: dict[str, NonNegativeFloat] = Field(
        min_length=1, description="sampling weights by source name (normalised)"
    )
    ramp: RampConfig | None = Field(None, description="linear ramp of the mixture weights")
    max_tokens: PositiveInt = Field(description="tokens this stage trains on")
    micro_batch_size: PositiveInt = Field(description="sequences per device per micro-step")
    global_batch_tokens: PositiveInt = Field(
        description="tokens per optimizer step, all devices; multiple of micro_batch_size x seq_len"
    )
    optim: OptimConfig
    schedule: ScheduleConfig
    init_from: InitFrom | None = Field(None, description="parent stage; null = from scratch")
    adapter: AdapterConfig | None = Field(
        None, description="null = train all weights; lora (or a mapping) = a LoRA adapter only"
    )
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    validation: EvalEveryConfig = Field(default_factory=EvalEveryConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    seed: int = Field(3407, description="seed of init and data order")
    log_every_steps: PositiveInt = Field(1, description="metrics line every N steps")
    export_hf: bool = Field(True, description="write an HF folder (hf/) when the stage ends")
    tensorboard: bool = Field(False, description="also write TensorBoard events (if installed)")

    @field_validator("mixture")
    @classmethod
    def _mixture_sources_exist(cls, mixture: dict[str, float], info: ValidationInfo) -> dict:
        _check_weights(mixture, info.data.get("data"))
        return mixture

    @field_validator("ramp")
    @classmethod
    def _ramp_sources_exist(
        cls, ramp: RampConfig | None, info: ValidationInfo
    ) -> RampConfig | None:
        if ramp is not None:
            _check_weights(ramp.start, info.data.get("data"))
        return ramp

    @field_validator("global_batch_tokens")
    @classmethod
    def _batch_divisible(cls, batch: int, info: ValidationInfo) -> int:
        data, micro = info.data.get("data"), info.data.get("micro_batch_size")
        if data is not None and micro is not None and batch % (micro * data.seq_len):
            raise ValueError(
                f"must be a multiple of micro_batch_size x seq_len ({micro} x {data.seq_len} = "
                f"{micro * data.seq_len})"
            )
        return batch

    @field_validator("adapter", mode="before")
    @classmethod
    def _adapter_shorthand(cls, adapter: Any) -> Any:
        if isinstance(adapter, str):
            if adapter != "lora":
                raise ValueError("expected 'lora' or a mapping {type: lora, rank, alpha, ...}")
            return {"type": "lora"}
        return adapter

    @field_validator("adapter")
    @classmethod
    def _adapter_on_parent_weights(
        cls, adapter: AdapterConfig | None, info: ValidationInfo
    ) -> AdapterConfig | None:
        if adapter is None or "name" not in info.data:  # name missing: other errors first
            return adapter
        init_from = info.data.get("init_from")
        carry = [] if init_from is None else init_from.carry
        if "weights" not in carry:
            raise ValueError(
                f"a {adapter.type} adapter trains on a parent's weights, but init_from is "
                f"{None if init_from is None else init_from.model_dump()}; set init_from: "
                "{stage: <parent>, carry: [weights, schedule]} (an adapter on random weights is "
                "almost certainly a mistake)"
            )
        if "optimizer" in carry:
            raise ValueError(
                f"a {adapter.type} adapter cannot carry the parent's 'optimizer' (init_from.carry "
                f"= {carry}): that AdamW state belongs to other parameters; carry [weights] or "
                "[weights, schedule]"
            )
        return adapter

    @model_validator(mode="after")
    def _ramp_fits_stage(self) -> StageConfig:
        if self.ramp is not None and self.ramp.tokens > self.max_tokens:
            raise ValueError(
                f"ramp.tokens ({self.ramp.tokens}) exceeds max_tokens ({self.max_tokens}): "
                "the ramp must end within the stage"
            )
        if self.data.seq_len > self.model.max_position_embeddings:
            raise ValueError(
                f"data.seq_len ({self.data.seq_len}) exceeds model.max_position_embeddings "
                f"({self.model.max_position_embeddings})"
            )
        return self

    @property
    def micro_steps_per_step(self) -> int:
        """Micro-batches per optimizer step over all devices (divide by world size per device)."""
        return self.global_batch_tokens // (self.micro_batch_size * self.data.seq_len)


def _check_weights(weights: dict[str, float], data: DataConfig | None) -> None:
    if data is not None:
        unknown = sorted(set(weights) - set(data.sources))
        if unknown:
            raise ValueError(
                f"unknown source(s) {unknown}; data.sources has {sorted(data.sources)}"
            )
    if weights and sum(weights.values()) <= 0:
        raise ValueError("weights must not all be zero")


class EvalTask(Schema):
    """One lm-eval task and how it is scored."""

    name: str = Field(description="lm-eval task name")
    num_fewshot: NonNegativeInt = Field(0, description="in-context examples")
    metric: str = Field("acc", description="headline metric (the paper's: acc_norm or acc)")
    chance: float | None = Field(
        None, ge=0, le=1, description="score of random guessing; null = from the samples"
    )


class HumanEvalConfig(Schema):
    """HumanEval generation and sandboxed execution."""

    num_samples: PositiveInt = Field(1, description="completions per problem (n)")
    temperature: NonNegativeFloat = Field(0.0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass (sampling only)")
    max_new_tokens: PositiveInt = Field(384, description="longest completion in tokens")
    stop: list[str] = Field(
        ["\nclass", "\ndef", "\n#", "\nif", "\nprint"],
        description="a completion ends before the first of these (the Codex paper's)",
    )
    ks: list[PositiveInt] = Field([1], min_length=1, description="report pass@k for these k")
    timeout_s: PositiveFloat = Field(3.0, description="wall-clock limit per program")
    limit: PositiveInt | None = Field(None, description="first N problems only")
    batch_size: PositiveInt = Field(16, description="prompts generated together")
    num_workers: PositiveInt | None = Field(
        None, description="programs run at once; default min(16, cores)"
    )
    seed: int = Field(0, description="sampling seed")


class EvalConfig(Schema):
    """A suite of evaluations run on a checkpoint."""

    tasks: list[EvalTask] = Field(default_factory=list, description="lm-eval tasks to run")
    suites: list[Literal["bigbench", "chinese"]] = Field(
        default_factory=list,
        description="offline task suites built from real data into the cache (tinylab.evaluate)",
    )
    include_path: str | None = Field(
        None, description="extra folder of lm-eval task YAML (relative to the project root)"
    )
    add_bos_token: bool = Field(False, description="prepend BOS (the paper's harness did not)")
    batch_size: PositiveInt = Field(16, description="lm-eval batch size")
    limit: PositiveInt | None = Field(None, description="first N examples per task")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = cuda if present")
    humaneval: HumanEvalConfig | None = Field(None, description="null = skip HumanEval")
    perplexity: bool = Field(True, description="per-domain perplexity on held-out data")
    perplexity_max_windows: PositiveInt = Field(
        64, description="held-out windows per source for perplexity"
    )


class PipelineStep(Schema):
    """One notebook run by papermill."""

    name: str = Field(description="unique step name")
    notebook: str = Field(description="notebook file name under notebooks/")
    params: dict[str, Any] = Field(default_factory=dict, description="papermill parameters")
    after: list[str] = Field(default_factory=list, description="steps that must finish first")
    html: str | None = Field(
        None, description="also render the executed notebook (code hidden) to this file in the run"
    )


class PipelineConfig(Schema):
    """Steps of a run, in dependency order."""

    name: str
    description: str = ""
    steps: list[PipelineStep] = Field(min_length=1)

    @field_validator("steps")
    @classmethod
    def _steps_form_a_dag(cls, steps: list[PipelineStep]) -> list[PipelineStep]:
        seen: set[str] = set()
        for step in steps:
            if step.name in seen:
                raise ValueError(f"step name {step.name!r} appears twice")
            missing = [dep for dep in step.after if dep not in seen]
            if missing:
                raise ValueError(
                    f"step {step.name!r} runs after {missing}, which are not earlier steps"
                )
            seen.add(step.name)
        return steps


_SLURM_TIME = re.compile(r"^(?:\d+-\d{1,2}(?::\d{2}){0,2}|\d+(?::\d{2}){0,2})$")


class JobResources(Schema):
    """What one SLURM job of a pipeline step asks for (sbatch options)."""

    nodes: PositiveInt = Field(1, description="nodes (--nodes); above 1 only for training steps")
    gpus_per_node: NonNegativeInt = Field(0, description="GPUs per node (--gpus-per-node)")
    procs_per_node: PositiveInt | None = Field(
        None, description="training processes per node; default: gpus_per_node, or 1 without GPUs"
    )
    cpus_per_node: PositiveInt = Field(
        4, description="CPU cores per node (--cpus-per-task of the one task per node)"
    )
    mem: str | None = Field(
        None, description="memory per node (--mem), e.g. 64G; '0' = all; null = partition default"
    )
    time: str = Field("01:00:00", description="time limit (--time): MM, HH:MM:SS or D-HH:MM:SS")

    @field_validator("time")
    @classmethod
    def _slurm_time(cls, time: str) -> str:
        if not _SLURM_TIME.match(time):
            raise ValueError("expected a SLURM time: MM, HH:MM:SS or D-HH[:MM[:SS]]")
        return time

    @property
    def procs(self) -> int:
        """Processes per node a training step launches."""
        return self.procs_per_node or max(self.gpus_per_node, 1)

    @property
    def seconds(self) -> int:
        """The time limit in seconds (SLURM: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS)."""
        days, _, clock = self.time.rpartition("-")
        parts = [int(x) for x in clock.split(":")]
        if days or len(parts) == 3:
            hours, minutes, secs = (parts + [0, 0])[:3]
            return ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + secs
        minutes, secs = (parts + [0])[:2]
        return minutes * 60 + secs
        minutes_seconds = {1: (parts + [0])[:2], 2: parts}.get(len(parts))
        if minutes_seconds is not None:  # MM or MM:SS
            return minutes_seconds[0] * 60 + minutes_seconds[1]
        return parts[0] * 3600 + parts[1] * 60 + parts[2]


class ClusterConfig(Schema):
    """A SLURM cluster profile: where and how `tinylab submit` runs each pipeline step."""

    name: str = Field(description="profile name")
    description: str = ""
    partition: str | None = Field(None, description="--partition; null = the cluster's default")
    account: str | None = Field(None, description="--account to charge")
    qos: str | None = Field(None, description="--qos")
    run_root: str = Field(
        "outputs/runs",
        description="folder of run folders on storage every node sees (relative = to the project)",
    )
    setup: list[str] = Field(
        default_factory=list,
        description="shell lines each job runs first in the project folder (module loads, venv)",
    )
    train: JobResources = Field(
        default_factory=JobResources,
        description="steps that train a stage (a step param naming a params/stages/ file)",
    )
    other: JobResources = Field(default_factory=JobResources, description="every other step")
    steps: dict[str, JobResources] = Field(
        default_factory=dict, description="resources of named steps, replacing train/other"
    )
    requeue: bool = Field(
        True, description="--requeue: preempted or timed-out jobs go back to the queue"
    )
    max_requeues: NonNegativeInt = Field(
        3, description="times a job requeues itself when its time limit nears"
    )
    grace_s: PositiveInt = Field(
        300, description="--signal=B:USR1@grace_s: seconds before the limit the job is warned"
    )
    rdzv_port: int = Field(
        29500,
        ge=1024,
        le=65535,
        description="base rendezvous port; a job uses base + (job id mod up to 10000, staying "
        "below 65536), so jobs that share a node do not collide",
    )
    sbatch_options: list[str] = Field(
        default_factory=list, description="extra sbatch options, e.g. --exclusive"
    )

    @field_validator("other")
    @classmethod
    def _other_on_one_node(cls, other: JobResources) -> JobResources:
        if other.nodes != 1:
            raise ValueError("only training steps run on several nodes; set other.nodes to 1")
        return other

    @model_validator(mode="after")
    def _grace_within_limits(self) -> ClusterConfig:
        blocks = {"train": self.train, "other": self.other, **self.steps}
        short = [f"{k} ({r.time})" for k, r in blocks.items() if r.seconds <= self.grace_s]
        if self.requeue and short:
            raise ValueError(
                f"grace_s ({self.grace_s} s) must be shorter than every time limit; not: "
                + ", ".join(short)
            )
        return self

    @field_validator("sbatch_options")
    @classmethod
    def _options_are_options(cls, options: list[str]) -> list[str]:
        bad = [o for o in options if not o.startswith("-") or "\n" in o]
        if bad:
            raise ValueError(f"{bad}: each must be one sbatch option such as --exclusive")
        return options


SCHEMAS: dict[str, type[Schema]] = {
    "models": ModelConfig,
    "data": DataConfig,
    "stages": StageConfig,
    "pipelines": PipelineConfig,
    "eval": EvalConfig,
    "clusters": ClusterConfig,
}

# Fields holding a reference to another params file, and the params folder of that kind.
REFERENCES: dict[type[Schema], dict[str, str]] = {
    StageConfig: {"model": "models", "data": "data"},
}

S = TypeVar("S", bound=Schema)


# --------------------------------------------------------------------------------------------
# Loading


def kind_of(path: Path) -> str:
    """The params kind of a file, from the folder it sits in under params/."""
    for part in reversed(path.resolve().parts[:-1]):
        if part in SCHEMAS:
            return part
    raise ConfigError(
        f"{path}: cannot tell what kind of params file this is; put it under params/<kind>/ "
        f"with kind one of {sorted(SCHEMAS)}, or pass --kind"
    )


def load_raw(
    path: Path | str, schema: type[Schema] | None = None, *, _chain: tuple[Path, ...] = ()
) -> dict[str, Any]:
    """Read a params file and merge its `extends:` chain (no validation). References to other
    params files become absolute paths, resolved against the file that wrote them."""
    path = Path(path).resolve()
    if path in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path))
        raise ConfigError(f"{_chain[-1]}: extends: cycle: {cycle}")
    data = _absolute_references(read_yaml_mapping(path), schema, path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: extends = {parent!r}: must be a path to a .yaml file")
    parent_path = (path.parent / parent).resolve()
    if not parent_path.is_file():
        raise ConfigError(f"{path}: extends = {parent!r}: file not found ({parent_path})")
    return deep_merge(load_raw(parent_path, schema, _chain=(*_chain, path)), data)


def _absolute_references(data: dict[str, Any], schema: type[Schema] | None, path: Path) -> dict:
    for field, kind in REFERENCES.get(schema, {}).items():  # type: ignore[arg-type]
        value = data.get(field)
        if isinstance(value, str):
            try:
                data[field] = str(resolve_reference(value, kind=kind, referrer=path))
            except FileNotFoundError as err:
                raise ConfigError(
                    f"{path}: {field} = {value!r}: referenced file not found ({err.args[0]}); give "
                    f"a name under params/{kind}/ or a .yaml path relative to this file"
                ) from None
    return data


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Merge `update` into a copy of `base`: mappings key by key, all else replaced."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def resolve_reference(value: str, *, kind: str, referrer: Path) -> Path:
    """A reference is a .yaml path (relative to the referring file) or a preset name."""
    if value.endswith((".yaml", ".yml")):
        path = (referrer.parent / value).resolve()
    else:
        path = _params_root(referrer) / kind / f"{value}.yaml"
    if not path.is_file():
        raise FileNotFoundError(path)
    return path


def _params_root(referrer: Path) -> Path:
    for parent in referrer.resolve().parents:
        if parent.name == "params":
            return parent
    return PARAMS_DIR


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> list[tuple[str, Any]]:
    """Parse `key.path=value` strings; values are YAML (`3e-4`, `[0.9, 0.95]`, `true`)."""
    parsed = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set {item!r}: expected key.path=value, e.g. optim.lr=3e-4")
        parsed.append((key, parse_yaml(raw, source=f"--set {item!r}")))
    return parsed


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Return a copy of `data` with dotted overrides applied."""
    result = deep_merge(data, {})
    for key, value in parse_overrides(overrides):
        node = result
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif isinstance(child, str) and part in TYPE_SHORTHANDS:
                child = node[part] = {"type": child}
            elif not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {part!r} holds {child!r}, not a mapping")
            else:
                child = node[part] = dict(child)
            node = child
        node[leaf] = value
    return result


def load_config(
    path: Path | str,
    schema: type[S] | None = None,
    *,
    overrides: list[str] | tuple[str, ...] = (),
) -> S:
    """Load, merge, resolve, override and validate one params file."""
    path = Path(path)
    schema = schema or SCHEMAS[kind_of(path)]  # type: ignore[assignment]
    data = _resolve_references(load_raw(path, schema), schema)
    source = str(path)
    if overrides:
        data = apply_overrides(data, overrides)
        source += " (with --set " + " ".join(overrides) + ")"
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def _resolve_references(data: dict[str, Any], schema: type[Schema]) -> dict[str, Any]:
    for field, kind in REFERENCES.get(schema, {}).items():
        ref_path = data.get(field)
        if isinstance(ref_path, str):
            load_config(ref_path, SCHEMAS[kind])  # the referenced file must be valid on its own
            data = {**data, field: load_raw(ref_path, SCHEMAS[kind])}
    return data


def format_validation_error(err: ValidationError, source: str) -> str:
    """One readable message: file, then one line per problem: key path, value, what is allowed."""
    lines = [f"{source}: {err.error_count()} invalid value(s)"]
    for item in err.errors():
        loc = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"  {loc}: unknown key; {_allowed_keys(err, item['loc'])}")
        elif item["type"] == "missing":
            lines.append(f"  {loc}: required key is missing")
        else:
            message = item["msg"].removeprefix("Value error, ")
            lines.append(f"  {loc} = {_short(item.get('input'))}: {message}")
    return "\n".join(lines)


def _allowed_keys(err: ValidationError, loc: tuple) -> str:
    model = next((s for s in SCHEMAS.values() if s.__name__ == err.title), None)
    for part in loc[:-1]:
        if model is None:
            break
        field = model.model_fields.get(str(part))
        if field is not None:
            model = _model_in(field.annotation)
        # a part that is no field is a dict key or a union tag: stay on the current model
    if model is None:
        return "check the spelling against the schema (tinylab params show)"
    return "allowed keys: " + ", ".join(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The schema class inside an annotation such as `X`, `X | None` or `dict[str, X]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def dump_config(config: Schema) -> str:
    """The resolved config as YAML (what `params show` prints and runs save)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
