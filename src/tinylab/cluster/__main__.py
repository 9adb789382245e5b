"""`python -m tinylab.cluster run-step`: what each SLURM job runs, and each slot of
`tinylab run --jobs N` (`--local`: no job record; `--error-file`: where the step's failure
message goes). Exit 0 when the step is done, 2 with one line on a user error (a changed step, an
unknown step), 1 with the traceback when the step fails."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from tinylab.cluster.job import run_step_in_job
from tinylab.errors import UserError
from tinylab.files import write_atomic
from tinylab.notebook import NOTEBOOKS_DIR
from tinylab.pipeline import StepFailed


def main(argv: list[str] | None = None) -> int:
    """Run one pipeline step inside a SLURM job."""
    parser = argparse.ArgumentParser(prog="python -m tinylab.cluster")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run-step", help="run one pipeline step (what a job does)")
    run.add_argument("--pipeline", type=Path, required=True)
    run.add_argument("--run-dir", type=Path, required=True)
    run.add_argument("--step", required=True)
    run.add_argument("--fingerprint", help="refuse to run if the step changed since submission")
    run.add_argument("--notebooks-dir", type=Path, default=NOTEBOOKS_DIR)
    run.add_argument("--set", dest="overrides", action="append", default=[])
    run.add_argument("--launcher", help="torchrun command prefix (multi-process training)")
    run.add_argument("--local", action="store_true", help="a slot of tinylab run --jobs, no job")
    run.add_argument("--error-file", type=Path, help="write a failed step's message here")
    args = parser.parse_args(argv)
    try:
        run_step_in_job(
            args.pipeline,
            args.run_dir,
            args.step,
            fingerprint=args.fingerprint,
            overrides=args.overrides,
            notebooks_dir=args.notebooks_dir,
            launcher=shlex.split(args.launcher) if args.launcher else None,
            record_job=not args.local,
        )
    except StepFailed as err:
        if not args.error_file:
            raise
        write_atomic(args.error_file, str(err).encode())  # `tinylab run --jobs` reports it
        return 1
    except KeyboardInterrupt:  # recorded as failed; a slot stopped by tinylab run --jobs
        if not args.local:
            raise
        return 130
    except UserError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
