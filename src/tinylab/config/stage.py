"""The schema of params/stages/: one training stage (model and data by reference, mixture,
budget, batch, optimizer, schedule, parent, adapter, checkpoints, validation, parallelism)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal, get_args

from pydantic import (
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from tinylab.config.data import DataConfig, RampConfig
from tinylab.config.loader import ConfigError, Schema
from tinylab.config.model import ModelConfig


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
    cooldown: Literal["linear", "cosine"] | None = Field(
        None,
        description="a learning-rate cooldown within this stage: from the schedule's LR at the "
        "stage's start down to min_lr at its last token, linear or a half cosine in the stage's "
        "tokens (tinylab.train.schedule.stage_lr); null = the warmup and cosine alone",
    )

    @field_validator("decay_tokens")
    @classmethod
    def _decay_after_warmup(cls, decay: int, info: ValidationInfo) -> int:
        warmup = info.data.get("warmup_tokens")
        if warmup is not None and decay <= warmup:
            raise ValueError(f"must exceed warmup_tokens ({warmup})")
        return decay

    @model_serializer(mode="wrap")
    def _no_null_cooldown(self, handler: Any) -> Any:
        """Leave out a null cooldown: a stage without one dumps (and fingerprints) as before the
        field existed."""
        return _without_nulls(handler(self), "cooldown")


class InitFrom(Schema):
    """Where a stage starts: a parent stage in the same run, or a released checkpoint (a hub
    id at a revision, a local HF folder, or the offline stand-in; tinylab.release), and what it
    carries over."""

    stage: str | None = Field(None, description="name of the parent stage in the same run")
    release: str | None = Field(
        None,
        description="a released Llama instead of a parent stage: hub id (owner/name), local HF "
        "folder, or smollm2-135m-instruct (the offline stand-in); its architecture and tokenizer "
        "are the stage's",
    )
    revision: str | None = Field(None, description="hub revision (git ref) of `release`")
    tokens: NonNegativeInt = Field(
        0,
        description="schedule position of `release`: tokens it has seen (e.g. 1.5e12 for "
        "TinyLlama_v1.1's base), so the stage continues the cosine from there",
    )
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

    @model_validator(mode="before")
    @classmethod
    def _release_carries_no_optimizer(cls, value: Any) -> Any:
        """A release has no AdamW state: its default carry is [weights, schedule]."""
        if isinstance(value, dict) and value.get("release") is not None:
            value = {"carry": ["weights", "schedule"], **value}
        return value

    @model_validator(mode="after")
    def _one_origin(self) -> InitFrom:
        if (self.stage is None) == (self.release is None):
            raise ValueError("give exactly one of stage (a parent stage) or release")
        if self.release is None and (self.revision is not None or self.tokens):
            raise ValueError("revision and tokens belong to a release, not a parent stage")
        if self.release is not None and "optimizer" in self.carry:
            raise ValueError(
                f"release {self.release!r} has no optimizer state to carry; carry [weights, "
                "schedule] or [weights]"
            )
        return self


class CheckpointConfig(Schema):
    """Checkpoint cadence, retention, and whether training waits for the write."""

    every_steps: PositiveInt | None = Field(
        100, description="save every N optimizer steps; null = off (only at the end, see at_end)"
    )
    keep_last: PositiveInt = Field(2, description="keep the newest K checkpoints")
    at_end: bool = Field(True, description="save when the stage ends (off only for benchmarks)")
    mode: Literal["async", "sync"] = Field(
        "async",
        description="async: a save copies the state into CPU memory (pinned on a GPU) and a "
        "background thread writes it while training goes on (host memory: one more copy of "
        "this rank's state); sync: training waits until the checkpoint is written",
    )

    @model_serializer(mode="wrap")
    def _no_default_mode(self, handler: Any) -> Any:
        """Leave out mode at its default (async): what a stage trains is the same in both modes
        (tests: bitwise), so its fingerprint stays the one from before the field existed."""
        dumped = handler(self)
        if isinstance(dumped, dict) and dumped.get("mode") == "async":
            dumped = {k: v for k, v in dumped.items() if k != "mode"}
        return dumped


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

# The Linear layers of a decoder block that `parallel.fused_projections` computes as one matmul.
FusedGroup = Literal["qkv", "gate_up"]
FUSED_PROJECTIONS: dict[str, tuple[str, ...]] = {
    "qkv": ("q_proj", "k_proj", "v_proj"),
    "gate_up": ("gate_proj", "up_proj"),
}


# `parallel.fp8.bf16_inputs` where it is left out (tensorwise; less the layers keep_bf16 names).
BF16_INPUTS_DEFAULT: tuple[str, ...] = ("down_proj",)


def _derived_bf16_inputs(recipe: str, keep_bf16: Sequence[str]) -> list[str]:
    if recipe != "tensorwise":
        return []
    return [name for name in BF16_INPUTS_DEFAULT if not _named_in(name, keep_bf16)]


def _named_in(name: str, names: Sequence[str]) -> bool:
    """Whether `names` (layer names or name suffixes: down_proj, mlp.down_proj) names `name`
    or a suffix of it, either way round."""
    return any(k == name or k.endswith("." + name) or name.endswith("." + k) for k in names)


class Float8Config(Schema):
    """torchao float8 training of the decoder's Linear layers (`parallel.precision: fp8`)."""

    recipe: Literal["tensorwise", "rowwise", "rowwise_with_gw_hp"] = Field(
        "tensorwise",
        description="torchao's scaling recipe: tensorwise (one scale per tensor, cuBLAS), "
        "rowwise (one per row, CUTLASS), rowwise_with_gw_hp (rowwise, weight gradient in bf16)",
    )
    keep_bf16: list[str] = Field(
        ["lm_head"],
        description="Linear layers left in bf16, by name or name suffix (lm_head, k_proj, ...); "
        "the rest of the model's Linear layers compute their matmuls in float8 (`bf16_inputs`' "
        "only one of three)",
    )
    bf16_inputs: list[str] = Field(
        list(BF16_INPUTS_DEFAULT),
        description="Linear layers, by name or name suffix, whose input is never cast to "
        "float8: their forward and weight-gradient matmuls stay in bf16 and only the "
        "input-gradient matmul (output gradient x weight) runs in float8, tensorwise. Default "
        "[down_proj] under the tensorwise recipe (none if keep_bf16 names it; none under the "
        "rowwise recipes, where down_proj is in float8 unless kept): its input, SwiGLU's "
        "output, is what float8 scales worst; with down_proj in float8 the 1.1B's loss left "
        "the spread of two bf16 runs after ~100 steps, with this it stayed within, at "
        "1.18-1.23x bf16's speed where keeping down_proj whole in bf16 gave 1.15-1.16x "
        "(bench/RESULTS.md, 2026-12-02)",
    )
    all_gather: bool = Field(
        False,
        description="FSDP2 all-gathers the float8 layers' weights in float8 (tensorwise only): "
        "half the bytes of bf16 on several GPUs; one GPU gathers nothing",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_bf16_inputs(cls, data: Any) -> Any:
        """bf16_inputs left out: [down_proj] under the tensorwise recipe, less any layer
        keep_bf16 keeps whole; none under the rowwise recipes. Dumps always write the key, so a
        resolved.yaml says what ran; one written before 2026-12-02 without the key, whose
        keep_bf16 left down_proj in float8, now loads with down_proj's input in bf16."""
        if isinstance(data, dict) and "bf16_inputs" not in data:
            fields = cls.model_fields
            data = {**data, "bf16_inputs": _derived_bf16_inputs(
                data.get("recipe", fields["recipe"].default),
                data.get("keep_bf16", fields["keep_bf16"].default),
            )}  # fmt: skip
        return data

    @model_validator(mode="after")
    def _options_need_tensorwise(self) -> Float8Config:
        tensorwise_only = {
            "all_gather": "torchao gathers float8 weights with one scale per tensor",
            "bf16_inputs": "their input-gradient matmul is tensorwise",
        }
        for option, why in tensorwise_only.items():
            value = getattr(self, option)
            if value and self.recipe != "tensorwise":
                shown = "true" if value is True else value
                raise ValueError(
                    f"{option}: {shown} needs recipe: tensorwise ({why}), not {self.recipe}"
                )
        both = [name for name in self.bf16_inputs if _named_in(name, self.keep_bf16)]
        if both:
            raise ValueError(
                f"{both} in both keep_bf16 ({self.keep_bf16}) and bf16_inputs "
                f"({self.bf16_inputs}): a layer is kept wholly in bf16 or has its input "
                "gradient in float8, not both; take it out of one of them"
            )
        return self


class ParallelConfig(Schema):
    """FSDP2 and kernel options."""

    precision: Literal["fp32", "bf16", "fp8"] = Field(
        "bf16",
        description="compute precision: fp32, bf16, or fp8 = bf16 with the decoder's Linear "
        "matmuls in float8 (torchao float8 training, parallel.fp8; a CUDA GPU of compute "
        "capability 8.9 or later: H100, H200, L40S, RTX 4090)",
    )
    fp8: Float8Config | None = Field(
        None, description="precision: fp8's options; null = their defaults (only with fp8)"
    )
    replicate_nodes: PositiveInt = Field(
        1, description="HSDP replica groups (usually the node count); 1 = plain FSDP"
    )
    reshard_after_forward: bool = Field(True, description="FSDP2 reshard_after_forward")
    reshard_after_backward: bool = Field(
        True,
        description="FSDP2: reshard the bf16 parameters after every micro-batch's backward; "
        "false keeps them gathered from one micro-batch to the next within a step (no "
        "all-gather per micro-batch; resharded after the step's last, before the optimizer "
        "step; with reshard_after_forward: false it raises no peak memory)",
    )
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
    fused_projections: list[FusedGroup] = Field(
        [],
        description="training: each decoder layer computes these groups of projections with one "
        "matmul over their concatenated weights (qkv: q_proj, k_proj, v_proj; gate_up: "
        "gate_proj, up_proj); the parameters, checkpoints and export stay as they are; not with "
        "precision: fp8 or a LoRA adapter on those layers (tinylab.train.fused); [] = off",
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

    @model_validator(mode="after")
    def _fp8_options_with_fp8(self) -> ParallelConfig:
        if self.precision == "fp8" and self.fp8 is None:
            self.fp8 = Float8Config()
        elif self.precision != "fp8" and self.fp8 is not None:
            raise ValueError(
                f"fp8: options are set but precision is {self.precision}; set precision: fp8 "
                "or remove the fp8 block"
            )
        return self

    @model_serializer(mode="wrap")
    def _no_unused_options(self, handler: Any) -> Any:
        """Leave out a null fp8 block and empty fused_projections: a stage without them dumps
        (and fingerprints) as before those keys existed."""
        dumped = _without_nulls(handler(self), "fp8")
        if isinstance(dumped, dict) and dumped.get("fused_projections") == []:
            del dumped["fused_projections"]
        return dumped

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

    @field_validator("fused_projections")
    @classmethod
    def _fused_once_without_fp8(cls, groups: list[str], info: ValidationInfo) -> list[str]:
        if len(set(groups)) != len(groups):
            raise ValueError("each group may appear once")
        if groups and info.data.get("precision") == "fp8":
            raise ValueError(
                "cannot run with precision: fp8: torchao's Float8Linear computes each Linear "
                "layer's matmul in float8, and one matmul over their concatenated weights would "
                "bypass it; use fused_projections: [] with fp8"
            )
        return groups


# The Linear layers of a Llama decoder block: what a LoRA adapter can target.
LLAMA_BLOCK_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


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

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        """`adapter: lora` is short for `{type: lora}` (and `--set adapter.rank=8` on it works,
        see tinylab.config.loader)."""
        if isinstance(value, str):
            if value != "lora":
                raise ValueError("expected 'lora' or a mapping {type: lora, rank, alpha, ...}")
            return {"type": value}
        return value

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


class Counterfactual(Schema):
    """The stage that this one is the counterfactual of: the same stage but for one change, so a
    report can pair the two (tinylab.analysis.variants). Both start from the same parent, train
    the same tokens and read the same data order (tinylab.data.mixture.stage_seed); the pipeline
    checks that the stage named exists (check_counterfactuals)."""

    of: str = Field(min_length=1, description="the stage changed, in the same pipeline")
    changes: str = Field(min_length=1, description="what differs, in a few words")


class StageConfig(Schema):
    """One training stage: model, data mixture, budget, batch, schedule and parent."""

    params_kind: ClassVar[str] = "stages"

    name: str = Field(description="stage name, unique within a pipeline")
    model: ModelConfig | None = Field(
        None,
        description="a models preset name, a .yaml path, or inline; null only with "
        "init_from.release (the architecture is the release's, tinylab.release.resolve_stage)",
    )
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
    init_from: InitFrom | None = Field(
        None, description="parent stage or released checkpoint; null = from scratch"
    )
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
    counterfactual: Counterfactual | None = Field(
        None, description="the stage this one is the counterfactual of; null = none"
    )

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

    @field_validator("parallel")
    @classmethod
    def _fused_layers_without_adapter(
        cls, parallel: ParallelConfig, info: ValidationInfo
    ) -> ParallelConfig:
        adapter = info.data.get("adapter")
        fused = [n for g in parallel.fused_projections for n in FUSED_PROJECTIONS[g]]
        wrapped = [n for n in fused if adapter is not None and n in adapter.target_modules]
        if wrapped:
            raise ValueError(
                f"fused_projections = {parallel.fused_projections} computes {', '.join(fused)} "
                f"as one matmul over their weights, which would skip the LoRA adapter on "
                f"{', '.join(wrapped)} (adapter.target_modules); remove those layers from "
                "target_modules or use fused_projections: []"
            )
        return parallel

    @model_validator(mode="after")
    def _ramp_fits_stage(self) -> StageConfig:
        if self.ramp is not None and self.ramp.tokens > self.max_tokens:
            raise ValueError(
                f"ramp.tokens ({self.ramp.tokens}) exceeds max_tokens ({self.max_tokens}): "
                "the ramp must end within the stage"
            )
        if self.model is None and (self.init_from is None or self.init_from.release is None):
            raise ValueError("model is required (only a stage from a release takes its model)")
        if self.model is not None and self.data.seq_len > self.model.max_position_embeddings:
            raise ValueError(
                f"data.seq_len ({self.data.seq_len}) exceeds model.max_position_embeddings "
                f"({self.model.max_position_embeddings})"
            )
        return self

    @model_validator(mode="after")
    def _counterfactual_of_another(self) -> StageConfig:
        if self.counterfactual is not None and self.counterfactual.of == self.name:
            raise ValueError(f"counterfactual.of = {self.name!r}: a stage cannot be its own")
        return self

    @model_serializer(mode="wrap")
    def _no_null_counterfactual(self, handler: Any) -> Any:
        """Leave out a null counterfactual (as ScheduleConfig's cooldown)."""
        return _without_nulls(handler(self), "counterfactual")

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


def _without_nulls(dumped: Any, *names: str) -> Any:
    """A dump without the named keys where they are null (a dict; else as it is)."""
    if isinstance(dumped, dict):
        return {k: v for k, v in dumped.items() if not (k in names and v is None)}
    return dumped


def check_counterfactuals(stages: dict[str, StageConfig], *, pipeline: str) -> None:
    """Each counterfactual among a pipeline's stages (by params file) names a stage of the same
    pipeline and starts and trains as it does (same init_from, same max_tokens); else one
    ConfigError naming the file, the key and the value."""
    by_name = {stage.name: stage for stage in stages.values()}
    for path, stage in stages.items():
        if stage.counterfactual is None:
            continue
        of = stage.counterfactual.of
        original = by_name.get(of)
        if original is None:
            raise ConfigError(
                f"{path}: counterfactual.of = {of!r}: no stage {of!r} in pipeline {pipeline}; "
                f"its stages: {', '.join(by_name)}"
            )
        for key in ("init_from", "max_tokens"):
            if getattr(stage, key) != getattr(original, key):
                raise ConfigError(
                    f"{path}: {key} = {_show(getattr(stage, key))}, but {of!r} (counterfactual.of) "
                    f"has {_show(getattr(original, key))}: a counterfactual starts where its "
                    "original starts and trains the same tokens"
                )


def _show(value: Any) -> str:
    return repr(value.model_dump() if isinstance(value, Schema) else value)
