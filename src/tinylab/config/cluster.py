"""The schema of params/clusters/: a SLURM profile and the resources of each job."""

from __future__ import annotations

import re
from typing import ClassVar

from pydantic import Field, NonNegativeInt, PositiveInt, field_validator, model_validator

from tinylab.config.loader import Schema

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


class ClusterConfig(Schema):
    """A SLURM cluster profile: where and how `tinylab submit` runs each pipeline step."""

    params_kind: ClassVar[str] = "clusters"

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
