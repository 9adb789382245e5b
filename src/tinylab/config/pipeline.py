"""The schema of params/pipelines/: the notebook steps of a run, in dependency order."""

from __future__ import annotations

from typing import Any, ClassVar

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


class PipelineConfig(Schema):
    """Steps of a run, in dependency order."""

    params_kind: ClassVar[str] = "pipelines"

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
