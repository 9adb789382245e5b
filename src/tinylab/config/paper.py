"""The schema of params/paper/: the paper as data. Each fact has its value, where it comes from
(a section of docs/PAPER.md and the primary source that section cites) and whether the sources
state it or this project assumes it (then why). tinylab.analysis.deviations compares a resolved
run with these facts.

Facts come in blocks that share their source and status, so a file reads source by source. A fact
about training is named by where a stage keeps it: a dotted path into a resolved stage
(`optim.lr`, `model.hidden_size`, `schedule.decay_tokens`), or one of DERIVED_FACTS, which a
stage's settings determine without holding them in one key. An evaluation fact is one of
EVAL_FACTS of a group of tasks.

    tinylab params check params/paper/tinyllama-v1.1.yaml
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from tinylab.config.loader import Schema
from tinylab.config.stage import StageConfig

# Facts a stage determines without holding them in one key; `<domain>` is a source's domain.
DERIVED_FACTS = {
    "mixture": "sampling share of each domain (%), from the mixture and the sources' domains",
    "parallelism": "how the weights are sharded over the processes (nproc, replicate_nodes)",
    "dataset.<domain>": "the dataset (hub id or demo corpus) a domain's documents come from",
    "exclude.<domain>": "documents dropped from a domain's dataset (field: values)",
}
_DERIVED_PREFIXES = ("dataset.", "exclude.")

# What the paper says about how a group of tasks was scored.
EVAL_FACTS = {
    "protocol": "who scores the tasks, as an eval params file names it (lm_eval, instructeval)",
    "harness": "the harness (and version) that scored the tasks",
    "shots": "in-context examples (a mapping gives each task its own)",
    "metric": "headline metric (a mapping gives each task its own)",
    "bos": "whether BOS was prepended",
    "dtype": "the weights' dtype in evaluation",
    "sampling": "generation settings (generative tasks)",
}


@dataclass(frozen=True)
class Fact:
    """One fact: its value, its source and whether the sources state it."""

    name: str
    value: Any
    section: str
    cites: str
    status: Literal["stated", "assumed"]
    why: str | None


class FactBlock(Schema):
    """Facts that share a source and a status."""

    section: str = Field(min_length=1, description="the docs/PAPER.md section holding them")
    cites: str = Field(min_length=1, description="the primary source that section cites")
    status: Literal["stated", "assumed"] = Field(
        description="stated by a source, or assumed by this project (then `why` says why)"
    )
    why: str | None = Field(None, description="why the assumption; required when assumed")
    facts: dict[str, Any] = Field(min_length=1, description="fact name -> the paper's value")

    @model_validator(mode="after")
    def _assumption_says_why(self) -> FactBlock:
        if self.status == "assumed" and not self.why:
            raise ValueError("an assumed block needs `why`: what the sources leave open")
        return self

    def items(self) -> Iterable[Fact]:
        for name, value in self.facts.items():
            yield Fact(name, value, self.section, self.cites, self.status, self.why)


class StageBlock(FactBlock):
    """Facts that several of the paper's stages share."""

    stages: list[str] = Field(min_length=1, description="the paper stages these facts are about")


class EvalGroup(Schema):
    """Tasks the paper scores the same way, and how (facts named as in EVAL_FACTS)."""

    tasks: list[str] = Field(min_length=1, description="task names as an eval params file has them")
    facts: list[FactBlock] = Field(min_length=1)

    @field_validator("facts")
    @classmethod
    def _eval_fact_names(cls, blocks: list[FactBlock]) -> list[FactBlock]:
        unknown = [name for block in blocks for name in block.facts if name not in EVAL_FACTS]
        if unknown:
            raise ValueError(f"unknown fact name(s) {unknown}; allowed: {', '.join(EVAL_FACTS)}")
        _unique(blocks)
        return blocks

    def by_name(self) -> dict[str, Fact]:
        return {fact.name: fact for block in self.facts for fact in block.items()}


class PaperFacts(Schema):
    """The facts of one paper pipeline."""

    params_kind: ClassVar[str] = "paper"

    name: str = Field(description="the pipeline the facts describe")
    description: str = ""
    training: list[FactBlock] = Field(
        min_length=1, description="facts of every stage: dotted stage paths or DERIVED_FACTS"
    )
    stages: list[StageBlock] = Field(min_length=1, description="facts of some of the stages")
    evaluation: dict[str, EvalGroup] = Field(default_factory=dict, description="by task group")

    @field_validator("training")
    @classmethod
    def _training_names(cls, blocks: list[FactBlock]) -> list[FactBlock]:
        _check_names(blocks)
        _unique(blocks)
        return blocks

    @field_validator("stages")
    @classmethod
    def _stage_names(cls, blocks: list[StageBlock]) -> list[StageBlock]:
        _check_names(blocks)
        for stage in dict.fromkeys(s for block in blocks for s in block.stages):
            _unique([b for b in blocks if stage in b.stages], where=f"stage {stage!r}: ")
        return blocks

    @model_validator(mode="after")
    def _parents_and_tasks(self) -> PaperFacts:
        names = self.stage_names()
        for stage in names:
            parent = self.stage_facts(stage).get("init_from.stage")
            if parent is not None and parent.value not in names:
                raise ValueError(
                    f"stage {stage!r}: init_from.stage = {parent.value!r} is not a stage; "
                    f"stages: {', '.join(names)}"
                )
        tasks = [task for group in self.evaluation.values() for task in group.tasks]
        twice = sorted({task for task in tasks if tasks.count(task) > 1})
        if twice:
            raise ValueError(f"evaluation: task(s) {twice} in more than one group")
        return self

    def training_facts(self) -> dict[str, Fact]:
        """Facts of every stage, by name."""
        return {fact.name: fact for block in self.training for fact in block.items()}

    def stage_names(self) -> list[str]:
        """The paper's stages, in the order the file names them."""
        return list(dict.fromkeys(stage for block in self.stages for stage in block.stages))

    def stage_facts(self, stage: str) -> dict[str, Fact]:
        """Facts of one paper stage, by name; empty for a stage the paper does not have."""
        facts = {}
        for block in self.stages:
            if stage in block.stages:
                facts.update((fact.name, fact) for fact in block.items())
        return facts

    def group_of(self, task: str) -> str | None:
        """The evaluation group scoring `task`; None when the paper does not report it."""
        return next((name for name, g in self.evaluation.items() if task in g.tasks), None)


def _check_names(blocks: Iterable[FactBlock]) -> None:
    unknown = [name for block in blocks for name in block.facts if not is_fact_name(name)]
    if unknown:
        raise ValueError(
            f"unknown fact name(s) {unknown}: a dotted path into a stage (optim.lr, "
            f"model.hidden_size, ...) or one of {', '.join(DERIVED_FACTS)}"
        )


def _unique(blocks: Iterable[FactBlock], *, where: str = "") -> None:
    names = [name for block in blocks for name in block.facts]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ValueError(f"{where}fact(s) {twice} given in more than one block")


def is_fact_name(name: str) -> bool:
    """A dotted path into StageConfig's fields, or a derived fact."""
    if name in DERIVED_FACTS or (name.startswith(_DERIVED_PREFIXES) and name.count(".") == 1):
        return True
    schema: Any = StageConfig
    for part in name.split("."):
        fields = getattr(schema, "model_fields", None)
        if fields is None or part not in fields:
            return False
        schema = _schema_of(fields[part].annotation)
    return True


def _schema_of(annotation: Any) -> Any:
    """The schema inside `X` or `X | None`, else None (a leaf)."""
    if isinstance(annotation, type) and issubclass(annotation, Schema):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        if isinstance(arg, type) and issubclass(arg, Schema):
            return arg
    return None
