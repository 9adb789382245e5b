"""The schema of params/eval/: benchmark tasks and who scores them (lm-eval, or InstructEval's
rules for MMLU, BBH and DROP), offline suites, HumanEval, perplexity and the weights' dtype."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

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


CODEX_STOP = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]
# What each HumanEval protocol fixes; a key given in the params overrides it (and the results
# record the values that ran). instructeval, the paper's: InstructEval's
# (declare-lab/instruct-eval, human_eval/main.py and modeling.py; docs/PAPER.md "Evaluation
# protocol"): one sample at T=0.1 with transformers' default top_k of 50, 512 new tokens, BOS
# added (its Llama tokenizer adds one), cut at the first blank line. codex: Chen et al. (2021)'s
# sampling and stop sequences, 10 samples per problem with top-p 0.95; BOS as the eval's
# add_bos_token.
HUMANEVAL_PROTOCOLS: dict[str, dict] = {
    "instructeval": {
        "num_samples": 1,
        "temperature": 0.1,
        "top_p": 1.0,
        "top_k": 50,
        "max_new_tokens": 512,
        "stop": [],
        "ks": [1],
        "add_bos_token": True,
    },
    "codex": {
        "num_samples": 10,
        "temperature": 0.1,
        "top_p": 0.95,
        "top_k": 50,
        "max_new_tokens": 384,
        "stop": CODEX_STOP,
        "ks": [1, 10],
        "add_bos_token": None,
    },
}


class HumanEvalConfig(Schema):
    """HumanEval generation and sandboxed execution; the generation keys not given come from the
    protocol (`HUMANEVAL_PROTOCOLS`)."""

    protocol: Literal["instructeval", "codex"] = Field(
        "instructeval",
        description="instructeval (the paper's): InstructEval's prompt, sampling and cut; "
        "codex: Chen et al.'s",
    )
    num_samples: PositiveInt = Field(description="completions per problem (n)")
    temperature: NonNegativeFloat = Field(description="0 = greedy")
    top_p: float = Field(gt=0, le=1, description="nucleus sampling mass (sampling only)")
    top_k: NonNegativeInt = Field(description="sample among the k likeliest tokens; 0 = all")
    max_new_tokens: PositiveInt = Field(description="longest completion in tokens")
    stop: list[str] = Field(
        description="codex: a completion ends before the first of these; instructeval: none "
        "(it cuts at the first blank line)"
    )
    ks: list[PositiveInt] = Field(min_length=1, description="report pass@k for these k")
    add_bos_token: bool | None = Field(description="prepend BOS; null = the eval's add_bos_token")
    timeout_s: PositiveFloat = Field(3.0, description="wall-clock limit per program")
    limit: PositiveInt | None = Field(None, description="first N problems only")
    batch_size: PositiveInt = Field(16, description="prompts generated together")
    num_workers: PositiveInt | None = Field(
        None, description="programs run at once; default min(16, cores)"
    )
    seed: int = Field(0, description="sampling seed")

    @model_validator(mode="before")
    @classmethod
    def _protocol_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        preset = HUMANEVAL_PROTOCOLS.get(data.get("protocol", "instructeval"), {})
        return {**preset, **data}

    @model_validator(mode="after")
    def _stop_is_codex_only(self) -> HumanEvalConfig:
        if self.protocol == "instructeval" and self.stop:
            raise ValueError(
                "stop: protocol instructeval cuts at the first blank line; use protocol codex"
            )
        return self

    def bos(self, eval_add_bos_token: bool) -> bool:
        """Whether prompts start with BOS: this block's setting, else the eval's."""
        return eval_add_bos_token if self.add_bos_token is None else self.add_bos_token


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
        64, description="held-out windows per domain for perplexity (as a stage's validation)"
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
