"""`python -m tinylab.train`: run one stage from a resolved params file; what torchrun launches.

Parses, builds, runs, exits: 0 when the stage finished, 2 on a UserError (bad params or input,
the stage folder in use, a divergence, a full disk: one readable line), 1 on any other failure
(traceback).

    torchrun --standalone --nproc-per-node 2 -m tinylab.train \
        --config RUN/stages/base/resolved.yaml --run-dir RUN
    python -m tinylab.train --config params/stages/demo/base.yaml --run-dir RUN --set optim.lr=1e-3
    python -m tinylab.train --config STAGE.yaml --run-dir RUN --profile-steps 6-7
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tinylab.config.loader import load_config
from tinylab.config.stage import StageConfig
from tinylab.errors import UserError
from tinylab.train.batching import RandomWindows
from tinylab.train.loop import run_stage
from tinylab.train.profiling import PROFILE_STEPS_HELP, StepRange


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tinylab.train", description=__doc__)
    parser.add_argument("--config", type=Path, required=True, help="stage params (resolved)")
    parser.add_argument("--run-dir", type=Path, required=True, help="run folder")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        help="override a key: --set optim.lr=3e-4 (repeatable)",
    )
    parser.add_argument(
        "--no-resume",
        action="store_true",
        help="start over; the old outputs are set aside until the first checkpoint",
    )
    parser.add_argument(
        "--discard", action="store_true", help="with --no-resume: delete the old outputs at once"
    )
    parser.add_argument(
        "--accept-change",
        dest="accept",
        action="append",
        default=[],
        help="resume although this params field changed (optim, schedule, mixture, ramp); "
        "recorded in the checkpoints and metrics (repeatable)",
    )
    parser.add_argument("--progress", action="store_true", help="show a tqdm bar (rank 0)")
    parser.add_argument(
        "--synthetic",
        nargs="?",
        const="uniform",
        choices=RandomWindows.PATTERNS,
        help="synthetic tokens instead of <run>/data (benchmarks): uniform (the default) or "
        "zipf-copy (learnable)",
    )
    parser.add_argument(
        "--profile-steps",
        metavar="FIRST-LAST",
        help=PROFILE_STEPS_HELP,
    )
    args = parser.parse_args(argv)
    try:
        profile = StepRange.parse(args.profile_steps) if args.profile_steps else None
        stage = load_config(args.config, StageConfig, overrides=args.overrides)
        source = None
        if args.synthetic:
            source = RandomWindows(
                vocab_size=stage.model.vocab_size,
                seq_len=stage.data.seq_len,
                seed=stage.seed,
                pattern=args.synthetic,
            )
        run_stage(
            stage, args.run_dir, resume=not args.no_resume, discard=args.discard,
            accept=args.accept, progress=args.progress, source=source, profile=profile,
        )  # fmt: skip
    except UserError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
