"""The schema of params/eval/: benchmark tasks and who scores them (lm-eval, or InstructEval's
rules for MMLU, BBH and DROP), offline suites, HumanEval, perplexity and the weights' dtype."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import (
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from tinylab.config.loader import Schema

# The tasks InstructEval (declare-lab/instruct-eval) scores by generation: its task names.
INSTRUCTEVAL_TASKS = ("mmlu", "bbh", "drop")


class EvalTask(Schema):
    """One benchmark task, the protocol that scores it, and its headline metric."""

    name: str = Field(description="lm-eval task name, or mmlu/bbh/drop for protocol instructeval")
    protocol: Literal["lm_eval", "instructeval"] = Field(
        "lm_eval",
        description="lm_eval: the lm-eval task as it is; instructeval: InstructEval's prompts, "
        "greedy generation and prefix match (mmlu, bbh, drop; tinylab.evaluate.instructeval)",
    )
    num_fewshot: NonNegativeInt = Field(0, description="in-context examples")
    metric: str = Field("acc", description="headline metric (the paper's: acc_norm or acc)")
    chance: float | None = Field(
        None, ge=0, le=1, description="score of random guessing; null = from the samples"
    )

    @model_validator(mode="after")
    def _instructeval_task(self) -> EvalTask:
        if self.protocol == "instructeval" and self.name not in INSTRUCTEVAL_TASKS:
            raise ValueError(
                f"protocol instructeval scores {', '.join(INSTRUCTEVAL_TASKS)} only, not "
                f"{self.name!r}; use protocol lm_eval for other tasks"
            )
        if self.protocol == "instructeval" and self.metric != "acc":
            raise ValueError(
                f"protocol instructeval reports acc (the share of answers matched), not "
                f"{self.metric!r}"
            )
        return self


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

    params_kind: ClassVar[str] = "eval"

    tasks: list[EvalTask] = Field(default_factory=list, description="benchmark tasks to run")
    suites: list[Literal["bigbench", "chinese"]] = Field(
        default_factory=list,
        description="offline task suites built from real data into the cache (tinylab.evaluate)",
    )
    include_path: str | None = Field(
        None, description="extra folder of lm-eval task YAML (relative to the project root)"
    )
    add_bos_token: bool = Field(
        False,
        description="prepend BOS in lm_eval tasks (the paper's harness did not); instructeval "
        "tasks always do, as InstructEval's Llama tokenizer did",
    )
    batch_size: PositiveInt = Field(16, description="lm-eval batch size; instructeval's prompts")
    limit: PositiveInt | None = Field(None, description="first N examples per task")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = cuda if present")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="weights' dtype for every task; auto = bfloat16 on cuda, float32 on cpu "
        "(the reference EVAL.md ran lm-eval in float32, InstructEval loads float32 weights)",
    )
    humaneval: HumanEvalConfig | None = Field(None, description="null = skip HumanEval")
    perplexity: bool = Field(True, description="per-domain perplexity on held-out data")
    perplexity_max_windows: PositiveInt = Field(
        64, description="held-out windows per source for perplexity"
    )

    @field_validator("tasks")
    @classmethod
    def _one_row_per_task(cls, tasks: list[EvalTask]) -> list[EvalTask]:
        names = [task.name for task in tasks]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(
                f"tasks {twice} appear more than once; a results file holds one row per task name"
            )
        return tasks
