"""The schema of params/eval/: lm-eval tasks, offline suites, HumanEval and perplexity."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

from tinylab.config.loader import Schema


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

    params_kind: ClassVar[str] = "eval"

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
