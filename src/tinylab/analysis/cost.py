"""What a pipeline costs before it runs (`tinylab plan PIPELINE --gpus N --gpu KIND`), and what
each stage of a finished run cost at its own measured speed (the report's cost section).

Per training stage: tokens, optimizer steps, micro-batch and gradient accumulation on N GPUs,
GPU-hours and wall time, whether the micro-batch's peak memory fits the card, the checkpoint's
size and the disk the stage keeps, and the hours of the evaluation after it. Where each figure
comes from:
- throughput and peak memory: params/hardware/KIND.yaml, the row of the micro-batch at the
  largest GPU count <= N there (beyond it the per-GPU rate is assumed to hold, and FSDP2 only
  lowers the peak as it shards over more GPUs); a model other than the rows' is scaled by
  FLOPs per token (the same MFU assumed) and its peak memory is unknown. `tokens_per_s`
  replaces the rate.
- micro-batch: the stage's when it splits over N GPUs and fits the card, else the largest
  measured one that does (said in the notes); accumulation = the batch's sequences /
  (micro-batch x N), the rule of tinylab.train.batching.
- checkpoint: what tinylab.train.checkpoint saves per trainable parameter (a LoRA stage: the
  adapter's only): fp32 weights and AdamW's two fp32 moments, 12 bytes, and a tied embedding
  once more (DCP's framing adds about 2 kB per tensor, the RNG files and meta.json a few more);
  the stage keeps `keep_last` of them and its HF export (fp32 safetensors, 4 bytes per
  parameter); one more checkpoint exists while a save commits.
- evaluation: tinylab.analysis.eval_cost's tokens at the card's evaluation rate in the eval
  params' dtype (float32 = fp32, else bf16; scaled by FLOPs per token for another model), on
  one GPU (evaluation runs in one process).

    plan = cost_plan("params/pipelines/tinyllama-v1.1.yaml", gpus=16, gpu="a100-40g")
    print(format_cost_plan(plan))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from tinylab.analysis.eval_cost import evaluation_tokens
from tinylab.config.eval import EvalConfig
from tinylab.config.hardware import HardwareConfig, Throughput
from tinylab.config.kinds import kind_of
from tinylab.config.loader import PARAMS_DIR, ConfigError, load_config, project_path
from tinylab.config.model import ModelConfig
from tinylab.config.pipeline import PipelineConfig
from tinylab.config.stage import AdapterConfig, StageConfig
from tinylab.errors import UserError
from tinylab.layout import RunLayout
from tinylab.model import count_parameters, flops_per_token

if TYPE_CHECKING:
    from tinylab.analysis.runs import Run

HARDWARE_DIR = PARAMS_DIR / "hardware"
WEIGHT_BYTES = 4  # fp32: the weights and AdamW's moments in a checkpoint, the HF export
CHECKPOINT_BYTES_PER_PARAM = 3 * WEIGHT_BYTES  # weights, AdamW's exp_avg and exp_avg_sq
# Share of a card's memory the allocator's peak may reach; the CUDA context, NCCL's buffers and
# fragmentation take the rest (an assumption: 39.4 GiB measured is over a 40 GB card).
USABLE_MEMORY = 0.95
# The paper's own figures (docs/PAPER.md, "Throughput claims"): TinyLlama v1.0 on 16 A100-40G.
PAPER_RUN = {"card": "A100-40G", "gpus": 16, "tokens_per_s": 24_000, "tokens": 3e12, "days": 90,
             "gpu_hours_per_300b": 3456}  # fmt: skip
COLUMNS = ["stage", "tokens", "steps", "micro", "accum", "tok/s/GPU", "GPU-h", "wall h",
           "peak GiB", "fits", "ckpt GB", "disk GB", "eval h"]  # fmt: skip


class PlanError(UserError):
    """A bad input of the cost planner: an unknown GPU kind, a GPU count below 1, no pipeline."""


@dataclass
class CostPlan:
    """The plan of one pipeline on N GPUs of a kind: a row per stage and a total, and notes."""

    table: pd.DataFrame
    gpus: int
    card: HardwareConfig
    notes: dict[str, list[str]] = field(default_factory=dict)  # note -> the stages it is about
    beside_paper: list[str] = field(default_factory=list)


def load_hardware(kind: str) -> HardwareConfig:
    """params/hardware/KIND.yaml; PlanError naming the kinds there when there is none."""
    path = HARDWARE_DIR / f"{kind}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in HARDWARE_DIR.glob("*.yaml")))
        raise PlanError(f"--gpu {kind!r}: no params/hardware/{kind}.yaml; allowed: {known}")
    return load_config(path, HardwareConfig)


def load_pipeline(path: str | Path) -> PipelineConfig:
    """A pipeline params file; PlanError when the path is missing or another kind of file."""
    full = project_path(path)
    if not full.is_file():
        raise PlanError(f"{path}: no such file; give a pipeline, e.g. params/pipelines/demo.yaml")
    try:
        kind = kind_of(full)
    except ConfigError:
        kind = "pipelines"  # outside params/: read it as a pipeline
    if kind != "pipelines":
        raise PlanError(f"{path}: a params/{kind}/ file, not a pipeline (params/pipelines/)")
    return load_config(full, PipelineConfig)


def cost_plan(
    pipeline_path: str | Path, *, gpus: int, gpu: str, tokens_per_s: float | None = None
) -> CostPlan:
    """The plan of every training stage of a pipeline and the evaluation after it."""
    if gpus < 1:
        raise PlanError(f"--gpus {gpus}: the number of GPUs must be at least 1")
    if tokens_per_s is not None and tokens_per_s <= 0:
        raise PlanError(f"--tokens-per-s-per-gpu {tokens_per_s}: must be above 0")
    card, pipeline = load_hardware(gpu), load_pipeline(pipeline_path)
    plan = CostPlan(pd.DataFrame(columns=COLUMNS), gpus, card)
    rows: dict[str, dict] = {}
    stages: dict[str, StageConfig] = {}
    for step in pipeline.steps:
        if "stage_params" in step.params:
            stage = load_config(project_path(step.params["stage_params"]), StageConfig)
            stages[stage.name] = stage
            rows[stage.name] = stage_cost(stage, gpus, card, tokens_per_s, plan.notes)
        elif "eval_params" in step.params and step.params.get("stage") in rows:
            name = step.params["stage"]
            eval_cfg = load_config(project_path(step.params["eval_params"]), EvalConfig)
            rows[name]["eval h"] = eval_hours(eval_cfg, stages[name], card, plan.notes)
    table = pd.DataFrame(list(rows.values()), columns=COLUMNS)
    plan.table = pd.concat([table, total_row(table)], ignore_index=True)
    if (PARAMS_DIR / "paper" / f"{pipeline.name}.yaml").is_file():
        plan.beside_paper = beside_paper(plan, stages)
    return plan


def stage_cost(
    stage: StageConfig,
    gpus: int,
    card: HardwareConfig,
    tokens_per_s: float | None,
    notes: dict[str, list[str]],
) -> dict:
    """One stage's row; what it assumed goes into `notes`."""
    same_model = measured_model(card, stage)
    micro = choose_micro(stage, card, gpus, same_model, notes)
    row = throughput_row(card, micro, gpus)
    if tokens_per_s is None:
        scale = 1.0 if same_model else model_scale(card, stage)
        tokens_per_s = row.tokens_per_s * scale
        note(notes, stage, rate_note(card, row, gpus, scale))
        if stage.adapter is not None:
            note(notes, stage, "LoRA: the full-weights rate and peak assumed (not measured)")
    steps = math.ceil(stage.max_tokens / stage.global_batch_tokens)
    tokens = steps * stage.global_batch_tokens
    gpu_hours = tokens / tokens_per_s / 3600
    peak = row.peak_gib if same_model and row.micro_batch_size == micro else None
    checkpoint = checkpoint_bytes(stage)
    hf = WEIGHT_BYTES * total_params(stage.model) if stage.export_hf else 0
    return {
        "stage": stage.name, "tokens": tokens, "steps": steps, "micro": micro,
        "accum": accumulation(stage, micro, gpus), "tok/s/GPU": tokens_per_s,
        "GPU-h": gpu_hours, "wall h": gpu_hours / gpus, "peak GiB": peak,
        "fits": fits(peak, card), "ckpt GB": checkpoint / 1e9,
        "disk GB": (stage.checkpoint.keep_last * checkpoint + hf) / 1e9,
    }  # fmt: skip


def accumulation(stage: StageConfig, micro: int, gpus: int) -> int | None:
    """Micro-batches per GPU per step, or None when the batch does not split so."""
    sequences = stage.global_batch_tokens // stage.data.seq_len
    return None if sequences % (micro * gpus) else sequences // (micro * gpus)


def choose_micro(
    stage: StageConfig, card: HardwareConfig, gpus: int, same_model: bool, notes: dict
) -> int:
    """The stage's micro-batch when it splits and fits, else the largest measured one that does."""
    wanted = stage.micro_batch_size
    measured = sorted({r.micro_batch_size for r in card.throughput} - {wanted}, reverse=True)
    problem = micro_problem(stage, wanted, card, gpus, same_model)
    if problem is None:
        return wanted
    for micro in measured:
        if micro_problem(stage, micro, card, gpus, same_model) is None:
            note(notes, stage, f"micro-batch {wanted} -> {micro}: {problem}")
            return micro
    note(notes, stage, f"micro-batch {wanted}: {problem}; no measured micro-batch does")
    return wanted


def micro_problem(
    stage: StageConfig, micro: int, card: HardwareConfig, gpus: int, same_model: bool
) -> str | None:
    """Why `micro` does not do on N GPUs of this card (None: it does, or its memory is unknown)."""
    if accumulation(stage, micro, gpus) is None:
        sequences = stage.global_batch_tokens // stage.data.seq_len
        return f"{sequences} sequences per step do not split into {micro} x {gpus} GPUs"
    row = throughput_row(card, micro, gpus)
    peak = row.peak_gib if same_model and row.micro_batch_size == micro else None
    if fits(peak, card) is False:
        return f"peaks at {peak} GiB, over {USABLE_MEMORY * card.memory_gib:.1f} GiB usable"
    return None


def throughput_row(card: HardwareConfig, micro: int, gpus: int) -> Throughput:
    """The row of the nearest micro-batch at the largest GPU count <= gpus (else the smallest)."""
    nearest = min({r.micro_batch_size for r in card.throughput}, key=lambda m: (abs(m - micro), -m))
    rows = sorted(
        (r for r in card.throughput if r.micro_batch_size == nearest), key=lambda r: r.gpus
    )
    within = [r for r in rows if r.gpus <= gpus]
    return within[-1] if within else rows[0]


def fits(peak_gib: float | None, card: HardwareConfig) -> bool | None:
    return None if peak_gib is None else peak_gib <= USABLE_MEMORY * card.memory_gib


def note(notes: dict[str, list[str]], stage: StageConfig, text: str) -> None:
    notes.setdefault(text, []).append(stage.name)


def rate_note(card: HardwareConfig, row: Throughput, gpus: int, scale: float) -> str:
    """Where a stage's rate comes from, in one line."""
    where = f"{card.name} micro-batch {row.micro_batch_size} on {row.gpus} GPU(s)"
    beyond = f", the per-GPU rate assumed to hold on {gpus}" if gpus > row.gpus else ""
    scaled = "" if scale == 1 else f", x {scale:.3g} for the stage's FLOPs/token (same MFU)"
    return f"{row.tokens_per_s:,.0f} tokens/s per GPU, {row.status} ({where}: " \
           f"{row.source}){beyond}{scaled}"  # fmt: skip


@cache
def _card_model(name: str) -> ModelConfig:
    return load_config(PARAMS_DIR / "models" / f"{name}.yaml", ModelConfig)


def measured_model(card: HardwareConfig, stage: StageConfig) -> bool:
    """Whether the stage trains the model and sequence length the card's rows measured."""
    ignore = {"attention", "init_std", "init_std_residual"}
    same = stage.model is not None and stage.model.model_dump(exclude=ignore) == _card_model(
        card.model
    ).model_dump(exclude=ignore)
    return same and stage.data.seq_len == card.seq_len


def model_scale(card: HardwareConfig, stage: StageConfig) -> float:
    """Rate factor for another model: the rows' FLOPs per token over the stage's."""
    if stage.model is None:
        return 1.0
    measured = _flops(_card_model(card.model).model_dump_json(), card.seq_len)
    return measured / _flops(stage.model.model_dump_json(), stage.data.seq_len)


@cache
def _flops(model_json: str, seq_len: int) -> int:
    return flops_per_token(ModelConfig.model_validate_json(model_json), seq_len)


@cache
def _params(model_json: str) -> int:
    return count_parameters(ModelConfig.model_validate_json(model_json))["params"]


def total_params(model: ModelConfig | None) -> int:
    """All parameters (0 for a stage whose model is a release's, unknown before it is fetched)."""
    return 0 if model is None else _params(model.model_dump_json())


def trainable_params(stage: StageConfig) -> int:
    """Parameters the stage trains: all, or its LoRA adapter's."""
    if stage.adapter is None or stage.model is None:
        return total_params(stage.model)
    return lora_params(stage.model, stage.adapter)


def checkpoint_bytes(stage: StageConfig) -> int:
    """Bytes of one checkpoint's tensors: 12 per trainable parameter, and a tied embedding's
    4 bytes per weight once more (the model's state dict holds it as lm_head too)."""
    model = stage.model
    tied = model is not None and stage.adapter is None and model.tie_word_embeddings
    extra = WEIGHT_BYTES * model.vocab_size * model.hidden_size if tied else 0
    return CHECKPOINT_BYTES_PER_PARAM * trainable_params(stage) + extra


def lora_params(model: ModelConfig, adapter: AdapterConfig) -> int:
    """A LoRA adapter's parameters: rank x (in + out) per targeted Linear of every block."""
    d, inter = model.hidden_size, model.intermediate_size
    head = d // model.num_attention_heads
    q, kv = model.num_attention_heads * head, model.num_key_value_heads * head
    shapes = {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d),
              "gate_proj": (d, inter), "up_proj": (d, inter), "down_proj": (inter, d)}  # fmt: skip
    per_block = sum(adapter.rank * sum(shapes[name]) for name in adapter.target_modules)
    return per_block * model.num_hidden_layers


def eval_hours(
    eval_cfg: EvalConfig, stage: StageConfig, card: HardwareConfig, notes: dict
) -> float:
    """Hours of one evaluation of the stage on one GPU at the card's evaluation rate."""
    domains = len({source.domain for source in stage.data.sources.values()})
    tokens, uncounted = evaluation_tokens(eval_cfg, domains=domains, seq_len=stage.data.seq_len)
    dtype = "fp32" if eval_cfg.dtype == "float32" else "bf16"
    row = next((r for r in card.evaluation if r.dtype == dtype), card.evaluation[0])
    scale = 1.0 if measured_model(card, stage) else model_scale(card, stage)
    note(
        notes,
        stage,
        f"evaluation: {row.tokens_per_s:,.0f} tokens/s in {row.dtype}, "
        f"{row.status} ({row.source})" + ("" if scale == 1 else f" x {scale:.3g}"),
    )
    forward = row.tokens_per_s * scale
    if uncounted:
        note(
            notes,
            stage,
            "evaluation: not counted (not in eval_cost.TASK_SIZES): " + ", ".join(uncounted),
        )
    return tokens / forward / 3600


def total_row(table: pd.DataFrame) -> pd.DataFrame:
    """Sums of tokens, steps, GPU-hours, wall (stages one after another), disk and evaluation."""
    summed = ("tokens", "steps", "GPU-h", "wall h", "disk GB", "eval h")
    sums = {column: table[column].sum(min_count=1) for column in summed}
    return pd.DataFrame([{"stage": "total", **sums}], columns=COLUMNS)


def chain(stages: dict[str, StageConfig]) -> list[str]:
    """One variant's stages, first cooldown back to its root (base -> continual -> cooldown)."""
    last = next((name for name in stages if name.startswith("cooldown-")), None)
    names = []
    while last is not None and last in stages:
        names.insert(0, last)
        init = stages[last].init_from
        last = init.stage if init is not None else None
    return names


def beside_paper(plan: CostPlan, stages: dict[str, StageConfig]) -> list[str]:
    """The paper's own throughput and time beside this plan's (docs/PAPER.md, 'Throughput
    claims')."""
    paper, table = PAPER_RUN, plan.table.set_index("stage")
    lines = [
        f"the paper (docs/PAPER.md, 'Throughput claims'): {paper['tokens_per_s']:,} tokens/s per "
        f"{paper['card']}; TinyLlama v1.0's {paper['tokens'] / 1e12:.0f}T tokens on "
        f"{paper['gpus']} {paper['card']} in about {paper['days']} days; "
        f"{paper['gpu_hours_per_300b']:,} {paper['card']} GPU-hours per 300B tokens"
    ]
    names = chain(stages)
    if names:
        tokens, hours = table.loc[names, "tokens"].sum(), table.loc[names, "GPU-h"].sum()
        ours = hours / plan.gpus / 24
        theirs = tokens / (paper["tokens_per_s"] * paper["gpus"]) / 86400
        lines.append(
            f"{' -> '.join(names)} ({tokens / 1e12:.2f}T tokens): this plan {ours:.1f} days on "
            f"{plan.gpus} {plan.card.name}, {hours * 300e9 / tokens:,.0f} GPU-hours per 300B "
            f"tokens; at the paper's rate on its {paper['gpus']} {paper['card']}: {theirs:.1f} days"
        )
    return lines


def format_cost_plan(plan: CostPlan) -> str:
    """The plan as text: the table, then what it assumed, then the paper beside it."""
    card, total = plan.card, plan.table.iloc[-1]
    eval_hours_total = 0 if pd.isna(total["eval h"]) else total["eval h"]
    lines = [
        f"{plan.gpus} x {card.card} ({card.memory_gib} GiB, {card.peak_bf16_tflops:g} bf16 "
        f"TFLOP/s; params/hardware/{card.name}.yaml)",
        shown_table(plan.table).to_string(index=False),
        f"training wall time, stages one after another: {total['wall h'] / 24:,.1f} days (and "
        f"{eval_hours_total:,.1f} h of evaluation)",
        "",
        "notes:",
        "  eval h: one evaluation after the stage on one GPU, approximate tokens "
        "(tinylab.analysis.eval_cost) at the card's evaluation rate",
        "  peak GiB: measured at the rate's GPU count; more GPUs shard more and peak lower",
    ]
    every = set(plan.table["stage"][:-1])
    for text, names in plan.notes.items():
        lines.append(f"  {'every stage' if set(names) == every else ', '.join(names)}: {text}")
    if plan.beside_paper:
        lines += ["", "beside the paper:"] + [f"  {line}" for line in plan.beside_paper]
    return "\n".join(lines)


FORMATS = {"tokens": "{:,.0f}", "steps": "{:,.0f}", "micro": "{:.0f}", "accum": "{:.0f}",
           "tok/s/GPU": "{:,.0f}", "GPU-h": "{:,.0f}", "wall h": "{:,.1f}", "peak GiB": "{:.1f}",
           "ckpt GB": "{:.2f}", "disk GB": "{:,.1f}", "eval h": "{:.2f}"}  # fmt: skip


def shown_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table with thousands separators; blank where unknown, 'no split' for accumulation."""
    shown = table.astype(object).where(table.notna(), "")
    for column, spec in FORMATS.items():
        shown[column] = [spec.format(v) if v != "" else "" for v in shown[column]]
    shown["accum"] = [a or "no split" for a in shown["accum"][:-1]] + [""]
    shown["fits"] = [{True: "yes", False: "NO"}.get(v, "") for v in shown["fits"]]
    return shown


def run_cost_table(run: Run) -> pd.DataFrame:
    """Per trained stage of a finished run, the plan at the run's own measured rate (median
    tokens/s per device of its steps) beside what it measured: wall time, peak memory, the
    newest checkpoint's size on disk, and the seconds of the evaluation after it."""
    records = run.manifest.get("steps", {})
    rows = []
    for name, stage in run.stages.items():
        devices = int(records.get(name, {}).get("params", {}).get("nproc", 1))
        train = run.metrics[run.metrics["stage"] == name]
        rate = float(train["tokens_per_s"].median()) / devices
        steps = math.ceil(stage.max_tokens / stage.global_batch_tokens)
        micro = stage.micro_batch_size
        result = run.results.get(name)
        rows.append({
            "stage": name, "tokens": steps * stage.global_batch_tokens, "devices": devices,
            "micro x accum": f"{micro} x {accumulation(stage, micro, devices)}",
            "tok/s per device": rate,
            "wall s (plan)": steps * stage.global_batch_tokens / rate / devices,
            "wall s (measured)": None if result is None else result.wall_s,
            "peak GiB (measured)": train["peak_mem_bytes"].max() / 2**30,
            "ckpt MB (plan)": checkpoint_bytes(stage) / 1e6,
            "ckpt MB (on disk)": newest_checkpoint_mb(run.run_dir, name),
            "eval s (measured)": records.get(f"eval-{name}", {}).get("seconds"),
        })  # fmt: skip
    return pd.DataFrame(rows).round(2)


def newest_checkpoint_mb(run_dir: Path, stage: str) -> float | None:
    """Megabytes of the stage's newest checkpoint folder (None: none on disk)."""
    folders = sorted(RunLayout(run_dir).stage(stage).checkpoints.glob("step-*"))
    folders = [f for f in folders if f.is_dir() and not f.name.endswith(".tmp")]
    if not folders:
        return None
    return sum(f.stat().st_size for f in folders[-1].rglob("*") if f.is_file()) / 1e6
