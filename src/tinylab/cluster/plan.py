"""Planning a submission without SLURM: the cluster profile, which steps must run, what each
job asks for (its own entry, else the profile's train or other resources), the checks of
multi-process training steps, and each job's rendered script.

    run_dir, jobs = plan_jobs("params/pipelines/tinyllama-v1.1.yaml", load_profile("2x8-h100"))
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tinylab.cluster.render import needs_launcher, placeholder, render_script
from tinylab.config.cluster import ClusterConfig, JobResources
from tinylab.config.kinds import kind_of
from tinylab.config.loader import (
    PARAMS_DIR,
    PROJECT_ROOT,
    ConfigError,
    load_config,
    project_path,
    resolve_reference,
)
from tinylab.config.pipeline import PipelineConfig
from tinylab.notebook import NOTEBOOKS_DIR
from tinylab.pipeline import PlannedStep, plan_steps, read_manifest, steps_to_run


@dataclass
class StepJob:
    """One step's batch job: what it asks for and the script that runs it."""

    name: str
    resources: JobResources
    training: bool
    script: str
    depends_on: list[str] = field(default_factory=list)  # steps whose jobs must end OK first
    job_id: str | None = None
    problems: list[str] = field(default_factory=list)  # block submission
    notes: list[str] = field(default_factory=list)  # shown, do not block


def load_profile(name_or_path: str) -> ClusterConfig:
    """A profile by name (params/clusters/<name>.yaml) or by .yaml path."""
    try:
        path = resolve_reference(name_or_path, kind="clusters", referrer=Path.cwd() / "-")
    except FileNotFoundError as err:
        known = sorted(p.stem for p in (PARAMS_DIR / "clusters").glob("*.yaml"))
        raise ConfigError(
            f"--cluster {name_or_path!r}: no such profile ({err.args[0]}); profiles: "
            f"{', '.join(known)}"
        ) from None
    return load_config(path, ClusterConfig)


def run_dir_for(profile: ClusterConfig, run_id: str) -> Path:
    """The run folder under the profile's shared run root."""
    return (project_path(profile.run_root) / run_id).resolve()


def is_training(planned: PlannedStep) -> bool:
    """A step trains when one of its params names a params/stages/ file."""
    return bool(stage_params(planned))


def stage_params(planned: PlannedStep) -> list[str]:
    """Names of the step's params that hold a params/stages/ file."""
    params = planned.step.params
    return [key for key in planned.resolved if _kind(PROJECT_ROOT / params[key]) == "stages"]


def _kind(path: Path) -> str | None:
    try:
        return kind_of(path)
    except ConfigError:
        return None


def resources_for(profile: ClusterConfig, planned: PlannedStep) -> JobResources:
    """The step's own entry, else train or other; several nodes only for training."""
    training = is_training(planned)
    name = planned.step.name
    resources = profile.steps.get(name) or (profile.train if training else profile.other)
    if resources.nodes > 1 and not training:
        raise ConfigError(
            f"cluster {profile.name}: step {name!r} asks for {resources.nodes} nodes but trains no "
            "stage; only training steps run across nodes"
        )
    return resources


def launch_checks(planned: PlannedStep, resources: JobResources) -> tuple[list[str], list[str]]:
    """(problems that block submission, notes) of a training step on this many processes."""
    name, problems, notes = planned.step.name, [], []
    if "launcher" not in notebook_parameters(planned.notebook):
        message = (
            f"step {name!r}: notebook {planned.notebook.name} has no `launcher` parameter, so it "
            "cannot hand the srun + torchrun command to the trainer; add `launcher: list = []` "
            "to its parameters cell and pass it on to train_stage"
        )
        if resources.nodes > 1:
            problems.append(message)
        else:
            notes.append(message + "; on one node it launches with its own nproc parameter")
    for key in stage_params(planned):
        parallel = yaml.safe_load(planned.resolved[key])["parallel"]
        replicas = parallel["replicate_nodes"]
        if resources.nodes > 1 and replicas != resources.nodes:
            notes.append(
                f"step {name!r}: {planned.step.params[key]} has parallel.replicate_nodes = "
                f"{replicas} on {resources.nodes} nodes, so FSDP shards across nodes; for HSDP "
                f"(shard within a node, replicate across) add --set "
                f"{name}.parallel.replicate_nodes={resources.nodes}"
            )
    return problems, notes


def notebook_parameters(notebook: Path) -> set[str]:
    """Names assigned in a notebook's `parameters` cell (parsed, not executed)."""
    import nbformat  # slow to import; only multi-process training steps need it

    nb = nbformat.read(notebook, as_version=4)
    names: set[str] = set()
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            for node in ast.parse(cell.source).body:
                targets = (
                    node.targets
                    if isinstance(node, ast.Assign)
                    else [getattr(node, "target", None)]
                )
                names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def plan_jobs(
    pipeline_path: Path | str,
    profile: ClusterConfig,
    *,
    run_id: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    notebooks_dir: Path = NOTEBOOKS_DIR,
) -> tuple[Path, list[StepJob]]:
    """The run folder and the jobs of the steps that must run, rendered, not submitted; a job
    depends on the jobs of the steps it runs after, whose ids are filled in at submission."""
    pipeline_path = Path(pipeline_path)
    pipeline = load_config(pipeline_path, PipelineConfig)
    run_dir = run_dir_for(profile, run_id or pipeline.name)
    plan = plan_steps(pipeline, run_dir, overrides=overrides, notebooks_dir=notebooks_dir)
    jobs: list[StepJob] = []
    for name in steps_to_run(plan, read_manifest(run_dir)):
        planned = plan[name]
        resources, training = resources_for(profile, planned), is_training(planned)
        after = [dep for dep in planned.step.after if dep in {job.name for job in jobs}]
        job = StepJob(name, resources, training, "", depends_on=after)
        if needs_launcher(resources, training):
            job.problems, job.notes = launch_checks(planned, resources)
        job.script = render_script(
            planned,
            run_dir=run_dir,
            profile=profile,
            resources=resources,
            training=training,
            pipeline_path=pipeline_path,
            overrides=overrides,
            notebooks_dir=notebooks_dir,
            dependencies=[placeholder(dep) for dep in after],
        )
        jobs.append(job)
    return run_dir, jobs
