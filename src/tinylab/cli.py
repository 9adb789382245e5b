"""The `tinylab` command: thin wrappers over the library. A `UserError` (a bad params file, a
missing run folder, ...) is one line and exit code 2, and so is a full disk or a folder that
cannot be written (an OSError of `ENVIRONMENT_ERRNOS`, named with its path); anything else is a
bug and raises with its traceback (exit 1). `--debug` shows the traceback of those too.

    tinylab params check params/**/*.yaml
    tinylab model info tinyllama-1.1b --json
"""

from __future__ import annotations

import errno
import json
import traceback
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from tinylab.config.data import DataConfig
from tinylab.config.eval import EvalConfig
from tinylab.config.kinds import SCHEMAS, kind_of
from tinylab.config.loader import ConfigError, Schema, dump_config, load_config
from tinylab.errors import UserError
from tinylab.layout import RunLayout

_state = {"debug": False}


NO_SPACE = "free space there (or write elsewhere) and rerun; finished work is kept"
NOT_WRITABLE = "make it writable (or write elsewhere) and rerun"
ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: NO_SPACE,
    errno.EDQUOT: NO_SPACE,
    errno.EROFS: NOT_WRITABLE,
    errno.EACCES: NOT_WRITABLE,
    errno.EPERM: NOT_WRITABLE,
}


class _Commands(TyperGroup):
    """The command group: a UserError, a full disk or an unwritable folder raised by any command
    is one line and exit code 2 (with --debug, its traceback too); every other exception keeps
    its traceback. Here rather than around `app()`, so typer's CliRunner sees the same."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as err:
            _exit_with(str(err))
        except OSError as err:
            if err.errno not in ENVIRONMENT_ERRNOS:
                raise
            where = f"{err.filename}: " if err.filename else ""
            _exit_with(f"{where}{err.strerror}; {ENVIRONMENT_ERRNOS[err.errno]}")


def _exit_with(message: str) -> None:
    if _state["debug"]:
        traceback.print_exc()
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


app = typer.Typer(
    cls=_Commands,
    help="tinylab: reproduce and extend TinyLlama's three-stage pretraining.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
params_app = typer.Typer(help="Validate and show params files.", no_args_is_help=True)
model_app = typer.Typer(help="Model presets: sizes and cost.", no_args_is_help=True)
app.add_typer(params_app, name="params")
app.add_typer(model_app, name="model")

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a key: --set optim.lr=3e-4 (repeatable)."),
]
KindOption = Annotated[
    str | None,
    typer.Option("--kind", help=f"Params kind when not under params/<kind>/: {sorted(SCHEMAS)}"),
]


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    """tinylab: reproduce and extend TinyLlama's three-stage pretraining."""
    _state["debug"] = debug


def _schema(path: Path, kind: str | None) -> type[Schema]:
    """The schema of `--kind`, else of the folder the file sits in."""
    if kind is None:
        return SCHEMAS[kind_of(path)]
    if kind not in SCHEMAS:
        raise ConfigError(f"--kind {kind!r}: allowed: {', '.join(sorted(SCHEMAS))}")
    return SCHEMAS[kind]


@params_app.command("check")
def params_check(
    files: Annotated[list[Path], typer.Argument(help="Params files to validate.")],
    kind: KindOption = None,
    overrides: SetOption = None,
) -> None:
    """Validate params files; exit 0 when all are valid, 2 otherwise."""
    errors = []
    for path in files:
        try:
            load_config(path, _schema(path, kind), overrides=overrides or [])
            typer.echo(f"ok  {path}")
        except ConfigError as err:
            if _state["debug"]:
                raise
            errors.append(str(err))
    if errors:
        raise ConfigError("\n".join(errors))


@params_app.command("show")
def params_show(
    file: Annotated[Path, typer.Argument(help="Params file to resolve.")],
    kind: KindOption = None,
    overrides: SetOption = None,
) -> None:
    """Print the fully resolved params (extends, references and overrides applied) as YAML."""
    loaded = load_config(file, _schema(file, kind), overrides=overrides or [])
    typer.echo(dump_config(loaded), nl=False)


@model_app.command("info")
def model_info(
    preset: Annotated[
        str, typer.Argument(help="Preset name under params/models/ or a .yaml path.")
    ],
    seq_len: Annotated[int | None, typer.Option(help="Sequence length T for FLOPs.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Parameter counts and training FLOPs per token of a preset (built on the meta device)."""
    from tinylab.model import load_preset
    from tinylab.model import model_info as compute_info

    info = compute_info(load_preset(preset), seq_len=seq_len)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    typer.echo(f"preset            {preset}")
    typer.echo(f"parameters        {info['params']:,}")
    typer.echo(f"  embedding       {info['embedding']:,}")
    typer.echo(f"  lm_head         {info['lm_head']:,}")
    typer.echo(f"  non-embedding   {info['non_embedding']:,}")
    typer.echo(f"FLOPs/token       {info['flops_per_token']:.4g} (T={info['seq_len']}; 6N + 12LdT)")


@app.command("run")
def run_command(
    pipeline: Annotated[Path, typer.Argument(help="Pipeline params file (params/pipelines/).")],
    run_id: Annotated[
        str | None, typer.Option(help="Run folder name; default: the pipeline's name.")
    ] = None,
    from_step: Annotated[
        str | None, typer.Option("--from", help="Re-run from this step on.")
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="STEP.key=value, or *.key=value for every step (repeatable)."),
    ] = None,
    keep_stale: Annotated[
        bool,
        typer.Option(
            "--keep-stale",
            help="Keep the results of steps whose only change is the library code (or torch, "
            "transformers, lm-eval versions); they are marked stale in the manifest.",
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print the plan (steps, token budgets, schedule positions, the paper row beside "
            "each evaluation); run nothing.",
        ),
    ] = False,
    sweep: Annotated[
        list[str] | None,
        typer.Option(
            "--sweep",
            help="STEP.key=v1,v2,...: one run per value under outputs/runs/<run-id or "
            "pipeline-sweep>/<point>/ (repeatable: the grid is the product), steps that are the "
            "same at several points run once and shared, then a comparison report; with "
            "--dry-run, the points and what each shares.",
        ),
    ] = None,
    jobs: Annotated[
        int,
        typer.Option(
            "--jobs",
            min=1,
            help="Run up to N steps at once on this machine, each once its after: steps are done "
            "(e.g. an evaluation beside the next stage's training on one GPU).",
        ),
    ] = 1,
) -> None:
    """Run a pipeline's notebooks with Papermill into outputs/runs/<run-id>/, skipping steps that
    finished with the same notebook, params and library code."""
    from tinylab.pipeline import run_pipeline

    if sweep and jobs > 1:
        raise UserError("--jobs runs the steps of one run at once; a --sweep's points run one "
                        "after another: leave out --jobs or --sweep")  # fmt: skip
    if sweep:
        from tinylab.sweep import plan_sweep, run_sweep

        planned = plan_sweep(pipeline, sweep, run_id=run_id, overrides=overrides or [])
        typer.echo(planned.describe() if dry_run else run_sweep(
            planned, from_step=from_step, keep_stale=keep_stale).summary())  # fmt: skip
        return
    if dry_run:
        from tinylab.analysis.plan import pipeline_plan

        typer.echo(pipeline_plan(pipeline).to_string(index=False))
        return
    if jobs > 1:
        from tinylab.cluster.local import run_parallel

        parallel = run_parallel(
            pipeline,
            jobs=jobs,
            run_id=run_id,
            from_step=from_step,
            overrides=overrides or [],
            keep_stale=keep_stale,
        )
        typer.echo(parallel.summary())
        return

    done = run_pipeline(
        pipeline,
        run_id=run_id,
        from_step=from_step,
        overrides=overrides or [],
        keep_stale=keep_stale,
    )
    typer.echo(done.summary())


@app.command("plan")
def plan_command(
    pipeline: Annotated[Path, typer.Argument(help="Pipeline params file (params/pipelines/).")],
    gpus: Annotated[int, typer.Option("--gpus", help="GPUs training each stage together.")],
    gpu: Annotated[str, typer.Option("--gpu", help="GPU kind: a file under params/hardware/.")],
    tokens_per_s: Annotated[
        float | None,
        typer.Option(
            "--tokens-per-s-per-gpu", help="Training tokens/s per GPU instead of the kind's rows."
        ),
    ] = None,
) -> None:
    """Cost of a pipeline before it runs: per stage tokens, steps, micro-batch and accumulation,
    GPU-hours, wall time, whether it fits the card, checkpoint disk and evaluation hours."""
    from tinylab.analysis.cost import cost_plan, format_cost_plan

    typer.echo(format_cost_plan(cost_plan(pipeline, gpus=gpus, gpu=gpu, tokens_per_s=tokens_per_s)))


@app.command("eval")
def eval_command(
    model: Annotated[
        str,
        typer.Argument(
            help="An HF model folder (stages/<stage>/hf, or a downloaded release), a hub id "
            "(owner/name), or smollm2-135m-instruct (the offline stand-in)."
        ),
    ],
    params: Annotated[Path, typer.Option("--params", help="Eval params (params/eval/).")] = Path(
        "params/eval/paper.yaml"
    ),
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Folder for <name>.json and samples; default outputs/eval."),
    ] = None,
    revision: Annotated[
        str | None, typer.Option(help="Hub revision of a hub id (default main).")
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(help="Checkpoint name; default: the stage folder's or the release's name."),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Prepared data for perplexity; default: <run>/data when it exists."),
    ] = None,
    overrides: SetOption = None,
) -> None:
    """Evaluate a checkpoint or a released model (benchmarks, HumanEval, perplexity) with the
    paper's suite by default; for a release the paper reports, its row beside ours. Reuses
    results on disk."""
    from tinylab.analysis.reference import RELEASE_ROWS, beside_ours
    from tinylab.evaluate import evaluate_checkpoint, scores_table
    from tinylab.release import is_release_ref, local_folder

    eval_cfg = load_config(params, EvalConfig, overrides=overrides or [])
    if is_release_ref(model):
        hf_dir, default_name = local_folder(model, revision), model.replace("/", "__")
    else:
        hf_dir = Path(model).resolve()
        if not (hf_dir / "config.json").is_file():
            raise UserError(f"{hf_dir}: not an HF model folder (no config.json)")
        default_name = hf_dir.parent.name
    run = RunLayout.of_hf_dir(hf_dir)
    if data_dir is None and run is not None and run.data_index.is_file():
        data_dir = run.data
    name = name or default_name
    results = evaluate_checkpoint(
        hf_dir, eval_cfg, out or Path("outputs/eval"), name=name, data_dir=data_dir
    )
    table = scores_table(results)
    typer.echo(table.drop(columns=["kind"]).to_string(index=False, float_format="%.4f"))
    row = RELEASE_ROWS.get((model, revision or "main"))
    if row is not None:
        typer.echo(f"\nbeside the paper's row {row!r} (docs/PAPER.md, 'Reported results'), %:")
        beside = beside_ours(table.assign(stage=name), {name: row}).drop(columns="stage")
        typer.echo(beside.to_string(index=False, float_format="%.2f"))
    elif is_release_ref(model):
        known = ", ".join(f"{m}@{r}" for m, r in RELEASE_ROWS)
        typer.echo(f"\nthe paper reports no row for {model}@{revision or 'main'} (rows: {known})")


@app.command("report")
def report_command(
    run_dir: Annotated[Path, typer.Argument(help="Run folder, e.g. outputs/runs/demo.")],
) -> None:
    """Execute notebooks/04_report.ipynb on a run and write RUN/report.html (code hidden,
    images embedded)."""
    from tinylab.analysis.publish import render_report

    typer.echo(f"wrote {render_report(run_dir)}")


@app.command("compare")
def compare_command(
    runs: Annotated[
        list[Path], typer.Argument(help="Two or more run folders; the first is the baseline.")
    ],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Report folder; default outputs/compare/<run>-vs-<run>."),
    ] = None,
) -> None:
    """Execute notebooks/06_compare.ipynb on several runs and write OUT/compare.html: curves
    overlaid, final scores with differences from the first run, the params that differ, wall
    time and tokens/s."""
    from tinylab.analysis.compare import default_out_dir, write_comparison

    typer.echo(f"wrote {write_comparison(runs, out or default_out_dir(runs))}")


@app.command("deviations")
def deviations_command(
    target: Annotated[
        Path, typer.Argument(help="A pipeline params file (nothing runs) or a run folder.")
    ],
) -> None:
    """Print where a pipeline or a run departs from the paper's facts (params/paper/): each
    deviation with the paper's value, the run's, stated or assumed, and why."""
    from tinylab.analysis.deviations import (
        deviation_table,
        format_table,
        pipeline_settings,
        run_settings,
    )
    from tinylab.analysis.runs import load_run

    settings = run_settings(load_run(target)) if target.is_dir() else pipeline_settings(target)
    typer.echo(format_table(deviation_table(settings)))


@app.command("train")
def train_command(
    stage: Annotated[Path, typer.Argument(help="Stage params file (params/stages/).")],
    run_dir: Annotated[Path, typer.Option("--run-dir", help="Run folder (holds data/).")],
    nproc: Annotated[int, typer.Option(help="Processes on this node (torchrun when > 1).")] = 1,
    fresh: Annotated[
        bool,
        typer.Option(
            "--fresh",
            help="Start the stage over; its old outputs are set aside in .previous/ until the "
            "new run saves its first checkpoint.",
        ),
    ] = False,
    discard: Annotated[
        bool, typer.Option("--discard", help="With --fresh: delete the old outputs at once.")
    ] = False,
    accept: Annotated[
        list[str] | None,
        typer.Option(
            "--accept-change",
            help="Resume although this params field changed (optim, schedule, mixture, ramp), "
            "e.g. a lower optim.lr after a divergence; recorded in checkpoints, metrics and "
            "result.json (repeatable).",
        ),
    ] = None,
    overrides: SetOption = None,
    profile_steps: Annotated[
        str | None,
        typer.Option(
            "--profile-steps",
            metavar="FIRST-LAST",
            # tinylab.train.profiling.PROFILE_STEPS_HELP's text: tinylab.train loads torch
            help="Profile these stage steps (torch.profiler, rank 0) into "
            "RUN/stages/<stage>/profile/: summary.json (kernel time by kind, top kernels, ATen "
            "ops with their input shapes, kernel and wall time per step, the GPU's idle time by "
            "the host ops it waited for, the copy / cast kernels by the host ops that launched "
            "them) and trace.json.gz.",
        ),
    ] = None,
) -> None:
    """Train one stage into RUN/stages/<stage>/ (resumes from its newest whole checkpoint)."""
    from tinylab.train import train_stage
    from tinylab.train.profiling import StepRange

    if discard and not fresh:
        raise UserError("--discard deletes the old outputs of a fresh start: use it with --fresh")
    profile = StepRange.parse(profile_steps) if profile_steps else None
    result = train_stage(
        stage.resolve(), run_dir.resolve(), nproc=nproc, overrides=overrides or [],
        resume=not fresh, discard=discard, accept=accept or [], profile=profile,
    )  # fmt: skip
    typer.echo(
        f"stage {result.stage}: step {result.step}, {result.tokens:,} tokens, final loss "
        f"{result.final_loss}, {result.wall_s:.0f} s; hf: {result.hf_dir}"
    )


@app.command("submit")
def submit_command(
    pipeline: Annotated[Path, typer.Argument(help="Pipeline params file (params/pipelines/).")],
    cluster: Annotated[
        str, typer.Option("--cluster", help="Profile under params/clusters/, or a .yaml path.")
    ],
    run_id: Annotated[
        str | None, typer.Option(help="Run folder name; default: the pipeline's name.")
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="STEP.key=value, or *.key=value for every step (repeatable)."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the sbatch scripts; submit nothing.")
    ] = False,
) -> None:
    """Submit a pipeline to SLURM: one sbatch job per step that must run, chained afterok, into
    the profile's shared run folder (tinylab status RUN follows it)."""
    from tinylab.cluster.plan import load_profile, plan_jobs
    from tinylab.cluster.render import script_path
    from tinylab.cluster.slurm import submit

    profile = load_profile(cluster)
    send = plan_jobs if dry_run else submit
    run_dir, jobs = send(pipeline, profile, run_id=run_id, overrides=overrides or [])
    for message in [m for job in jobs for m in (*job.problems, *job.notes)]:
        typer.secho(f"warning: {message}", fg=typer.colors.YELLOW, err=True)
    if not jobs:
        typer.echo(f"run {run_dir}: every step is done with the same params; nothing to submit")
    for job in jobs:
        if dry_run:
            typer.echo(f"# ===== {script_path(run_dir, job.name)} =====")
            typer.echo(job.script)
        else:
            after = f" after {', '.join(job.depends_on)}" if job.depends_on else ""
            typer.echo(f"submitted {job.name}: job {job.job_id}{after}")
    if jobs and not dry_run:
        typer.echo(f"follow it with: tinylab status {run_dir}")


@app.command("status")
def status_command(
    run_dir: Annotated[Path, typer.Argument(help="Run folder, e.g. outputs/runs/demo.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Steps of a run, their SLURM jobs (live states) and each stage's last metrics line."""
    from tinylab.cluster.status import format_status, run_status

    status = run_status(run_dir.resolve())
    typer.echo(json.dumps(status, indent=2) if as_json else format_status(status))


@app.command("prepare")
def prepare_command(
    data_yaml: Annotated[Path, typer.Argument(help="Data params, e.g. params/data/demo.yaml.")],
    out: Annotated[Path, typer.Option("--out", help="Data folder to write (<run>/data).")],
    overrides: SetOption = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    workers: Annotated[
        int, typer.Option(min=1, help="Local processes packing units at once (1: this one).")
    ] = 1,
    tasks: Annotated[
        int | None,
        typer.Option(min=1, help="Tasks the units (hub files) are dealt to; default one each."),
    ] = None,
    slurm_partition: Annotated[
        str | None,
        typer.Option(help="Submit the tasks as a SLURM job array on this partition instead."),
    ] = None,
    slurm_time: Annotated[str, typer.Option(help="Time limit of each SLURM task.")] = "24:00:00",
    slurm_cpus: Annotated[
        int, typer.Option(min=1, help="CPUs of each SLURM task (its tokenizer processes).")
    ] = 1,
    env_command: Annotated[
        str | None, typer.Option(help="Shell line that activates tinylab's environment on nodes.")
    ] = None,
) -> None:
    """Fetch, tokenize and pack a data params file into OUT (idempotent; a rerun redoes only the
    units that did not finish); print token counts, or submit it to SLURM."""
    from tinylab.data import prepare
    from tinylab.data.pack import submit_prepare
    from tinylab.data.report import token_table

    data_cfg = load_config(data_yaml, DataConfig, overrides=overrides or [])
    if slurm_partition:
        job = submit_prepare(
            data_cfg,
            out,
            tasks=tasks,
            partition=slurm_partition,
            time=slurm_time,
            cpus_per_task=slurm_cpus,
            env_command=env_command,
        )
        typer.echo(f"submitted {len(job.units)} units as {job.tasks(tasks)} tasks; logs {job.logs}")
        return
    data = prepare(data_cfg, out, progress=progress, workers=workers, tasks=tasks)
    typer.echo(token_table(data).to_string(index=False))
    typer.echo(f"wrote {out}")


@app.command("prepare-plan")
def prepare_plan_command(
    data_yaml: Annotated[
        Path, typer.Argument(help="Data params, e.g. params/data/tinyllama.yaml.")
    ],
    cores: Annotated[int, typer.Option(min=1, help="Cores preparing at once.")] = 128,
    rate: Annotated[
        float, typer.Option(min=1, help="Measured tokens/s per core (bench/data_throughput.py).")
    ] = 750_000,
    overrides: SetOption = None,
) -> None:
    """Tokens per source, disk and wall time of `tinylab prepare` on CORES cores, before it runs."""
    from tinylab.data.plan import format_plan, preparation_plan

    data_cfg = load_config(data_yaml, DataConfig, overrides=overrides or [])
    frame = preparation_plan(data_cfg, cores=cores, tokens_per_core_s=rate)
    typer.echo(format_plan(frame, cores=cores, tokens_per_core_s=rate))


def run() -> None:
    """Entry point of the `tinylab` command."""
    app()


if __name__ == "__main__":
    run()
