"""The schema of params/hardware/: one kind of GPU as the cost planner (tinylab.analysis.cost)
sees it: its memory and peak FLOP rates (vendor datasheet), training throughput and peak memory
per micro-batch size and GPU count, and evaluation speed per dtype, each figure with its status
(measured here, derived from a measured card, or the paper's own) and its source.

    tinylab params check params/hardware/h100.yaml
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, PositiveFloat, PositiveInt, field_validator

from tinylab.config.loader import Schema


class Throughput(Schema):
    """Training speed and peak memory of one configuration on this card."""

    micro_batch_size: PositiveInt = Field(description="sequences per GPU per micro-step")
    gpus: PositiveInt = Field(description="GPUs training together (FSDP2 over all of them)")
    tokens_per_s: PositiveFloat = Field(description="training tokens per second per GPU")
    mfu: float | None = Field(None, ge=0, le=1, description="model FLOPs utilisation, if known")
    peak_gib: PositiveFloat | None = Field(
        None, description="peak allocated memory on GPU 0 (torch.cuda.max_memory_allocated), GiB"
    )
    status: Literal["measured", "derived", "paper"] = Field(
        description="measured on this card (bench/RESULTS.md); derived from a measured card "
        "(source says how); or the paper's own figure (docs/PAPER.md)"
    )
    source: str = Field(min_length=1, description="where the figure comes from, and how")


class EvalThroughput(Schema):
    """Forward-only speed of one GPU scoring as lm-eval does, in one dtype."""

    dtype: Literal["bf16", "fp32"] = Field(description="the weights' dtype (fp32: no TF32)")
    tokens_per_s: PositiveFloat = Field(description="tokens read per second on one GPU")
    status: Literal["measured", "derived"] = Field(description="as in Throughput")
    source: str = Field(min_length=1, description="where the figure comes from, and how")


class HardwareConfig(Schema):
    """One kind of GPU: memory, peak FLOP rates and training throughput by configuration."""

    params_kind: ClassVar[str] = "hardware"

    name: str = Field(description="the kind's name, as `tinylab plan --gpu` takes it")
    card: str = Field(description="the card in words")
    memory_gib: PositiveFloat = Field(description="GPU memory, GiB (as nvidia-smi reports it)")
    peak_bf16_tflops: PositiveFloat = Field(description="dense bf16 TFLOP/s (vendor datasheet)")
    peak_fp32_tflops: PositiveFloat = Field(
        description="fp32 TFLOP/s without TF32 (vendor datasheet): evaluation in float32"
    )
    datasheet: str = Field(min_length=1, description="the source of memory and peaks")
    model: str = Field(description="the model preset the throughput rows trained")
    seq_len: PositiveInt = Field(description="the sequence length of those rows")
    config: str = Field(description="the training settings of those rows, in words")
    throughput: list[Throughput] = Field(min_length=1)
    evaluation: list[EvalThroughput] = Field(
        min_length=1, description="evaluation speed of the same model, per dtype"
    )

    @field_validator("throughput")
    @classmethod
    def _one_row_per_configuration(cls, rows: list[Throughput]) -> list[Throughput]:
        keys = [(r.micro_batch_size, r.gpus) for r in rows]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise ValueError(f"(micro_batch_size, gpus) {twice} given more than once")
        return rows

    @field_validator("evaluation")
    @classmethod
    def _one_row_per_dtype(cls, rows: list[EvalThroughput]) -> list[EvalThroughput]:
        dtypes = [row.dtype for row in rows]
        if len(set(dtypes)) != len(dtypes):
            raise ValueError(f"a dtype given more than once: {dtypes}")
        return rows
