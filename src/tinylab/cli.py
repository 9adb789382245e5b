"""The `tinylab` command: thin wrappers over the library, one readable error and exit code 2 on
bad input (`--debug` shows the traceback).

    tinylab params check params/**/*.yaml
    tinylab model info tinyllama-1.1b --json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from tinylab import config as cfg

app = typer.Typer(
    help="tinylab: reproduce and extend TinyLlama's three-stage pretraining.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
params_app = typer.Typer(help="Validate and show params files.", no_args_is_help=True)
model_app = typer.Typer(help="Model presets: sizes and cost.", no_args_is_help=True)
app.add_typer(params_app, name="params")
app.add_typer(model_app, name="model")

_state = {"debug": False}

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a key: --set optim.lr=3e-4 (repeatable)."),
]
KindOption = Annotated[
    str | None,
    typer.Option(
        "--kind", help=f"Params kind when not under params/<kind>/: {sorted(cfg.SCHEMAS)}"
    ),
]


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    """tinylab: reproduce and extend TinyLlama's three-stage pretraining."""
    _state["debug"] = debug


def fail(message: str, code: int = 2) -> None:
    """Print one error message and exit non-zero."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _schema(kind: str | None) -> type[cfg.Schema] | None:
    if kind is None:
        return None
    if kind not in cfg.SCHEMAS:
        raise cfg.ConfigError(f"--kind {kind!r}: allowed: {', '.join(sorted(cfg.SCHEMAS))}")
    return cfg.SCHEMAS[kind]


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
            cfg.load_config(path, _schema(kind), overrides=overrides or [])
            typer.echo(f"ok  {path}")
        except cfg.ConfigError as err:
            if _state["debug"]:
                raise
            errors.append(str(err))
    if errors:
        fail("\n".join(errors))


@params_app.command("show")
def params_show(
    file: Annotated[Path, typer.Argument(help="Params file to resolve.")],
    kind: KindOption = None,
    overrides: SetOption = None,
) -> None:
    """Print the fully resolved params (extends, references and overrides applied) as YAML."""
    loaded = cfg.load_config(file, _schema(kind), overrides=overrides or [])
    typer.echo(cfg.dump_config(loaded), nl=False)


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
) -> None:
    """Run a pipeline's notebooks with Papermill into outputs/runs/<run-id>/, skipping steps that
    finished with unchanged params."""
    from tinylab.pipeline import StepFailed, run_pipeline

    try:
        manifest = run_pipeline(
            pipeline, run_id=run_id, from_step=from_step, overrides=overrides or []
        )
    except StepFailed as err:
        fail(str(err), code=1)
    seconds = sum(s.get("seconds", 0) for s in manifest["steps"].values())
    typer.echo(
        f"run {manifest['run_id']}: {len(manifest['steps'])} steps done ({seconds:.0f} s of steps)"
    )


def run() -> None:
    """Entry point: turn ConfigError into one message and exit code 2."""
    try:
        app()
    except cfg.ConfigError as err:
        if _state["debug"]:
            raise
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":
    run()
