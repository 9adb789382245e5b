"""The schema of params/pipelines/: the notebook steps of a run, in dependency order, and why
the run departs from the paper where it does (tinylab.analysis.deviations)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from tinylab.config.loader import Schema


class PipelineStep(Schema):
    """One notebook run by papermill."""

    name: str = Field(description="unique step name")
    notebook: str = Field(description="notebook file name under notebooks/")
    params: dict[str, Any] = Field(default_factory=dict, description="papermill parameters")
    after: list[str] = Field(default_factory=list, description="steps that must finish first")
    html: str | None = Field(
        None, description="also render the executed notebook (code hidden) to this file in the run"
    )


class DeviationReason(Schema):
    """Why a run differs from a paper fact."""

    kind: Literal["scale-down", "hardware", "choice"] = Field(
        description="scale-down: a smaller run (the demo); hardware: what the machines allow or "
        "run fastest; choice: a decision of this project"
    )
    note: str = Field(min_length=1, description="the reason in a few words")


class PipelineConfig(Schema):
    """Steps of a run, in dependency order."""

    params_kind: ClassVar[str] = "pipelines"

    name: str
    description: str = ""
    steps: list[PipelineStep] = Field(min_length=1)
    deviations: dict[str, DeviationReason] = Field(
        default_factory=dict,
        description="why the run differs from the paper, by fact name (optim.lr), group (model, "
        "eval.commonsense) or stage (stage.<name>, for a stage the paper lacks); the longest "
        "matching name gives a deviation its reason",
    )

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
