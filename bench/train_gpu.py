"""Training throughput of a model preset on 1 GPU and with FSDP2 on 2 and 4 GPUs.

Each configuration runs the real trainer (`torchrun -m tinylab.train --synthetic`) on the paper's
base stage (params/stages/tinyllama-v1.1/base.yaml: bf16, AdamW, clipping) for `--steps`
optimizer steps of one micro-batch per GPU (global batch = micro x seq_len x GPUs, weak
scaling), on random tokens so no data or network is needed, with no checkpoint or export. It
reports the median over the steps after `--skip` of tokens/s per GPU and MFU (989 TFLOP/s bf16
per H100, FLOPs/token from tinylab.model.flops_per_token), and rank 0's peak allocated memory.
Trade-off: synthetic tokens leave out the data loader, which is a memory-mapped read per window.

    python bench/train_gpu.py                                  # tinyllama-1.1b on 1, 2, 4 GPUs
    python bench/train_gpu.py --nproc 1 2 --steps 60 --set parallel.activation_checkpointing=full
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from tinylab.config import PARAMS_DIR, StageConfig, apply_overrides, dump_config, load_config
from tinylab.model import load_preset

BASE_STAGE = PARAMS_DIR / "stages" / "tinyllama-v1.1" / "base.yaml"


def bench_stage(model: str, *, nproc: int, steps: int, micro: int, overrides: list[str]):
    """The base stage resized for a throughput run on `nproc` GPUs."""
    stage = load_config(BASE_STAGE, StageConfig)
    data = stage.model_dump(mode="json")
    data["model"] = load_preset(model).model_dump(mode="json")
    tokens = micro * stage.data.seq_len * nproc
    data = apply_overrides(data, [
        "name=bench", f"micro_batch_size={micro}", f"global_batch_tokens={tokens}",
        f"max_tokens={tokens * steps}", "checkpoint.every_steps=1000000000",
        "checkpoint.at_end=false", "export_hf=false", "validation.every_steps=1000000000",
        *overrides,
    ])  # fmt: skip
    return StageConfig.model_validate(data)


def run_one(stage: StageConfig, nproc: int, workdir: Path) -> list[dict]:
    """Train `stage` under torchrun; the training records of metrics.jsonl."""
    run_dir = workdir / f"gpus-{nproc}"
    run_dir.mkdir(parents=True)
    config = run_dir / "stage.yaml"
    config.write_text(dump_config(stage))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={nproc}", "-m", "tinylab.train", "--config", str(config),
        "--run-dir", str(run_dir), "--synthetic",
    ]  # fmt: skip
    log = run_dir / "log.txt"
    with log.open("w") as out:
        code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode
    if code != 0:
        tail = "\n".join(log.read_text().splitlines()[-40:])
        raise RuntimeError(f"{nproc} GPU run failed (exit {code}):\n{tail}")
    lines = (run_dir / "stages" / stage.name / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "train"]


def summarize(records: list[dict], *, nproc: int, skip: int) -> dict:
    timed = records[skip:] or records
    mfus = [r["mfu"] for r in timed if r["mfu"] is not None]
    return {
        "gpus": nproc,
        "steps": len(records),
        "tokens_per_s_per_gpu": statistics.median(r["tokens_per_s"] for r in timed) / nproc,
        "mfu": statistics.median(mfus) if mfus else None,
        "peak_mem_gib": max(r["peak_mem_bytes"] for r in records) / 2**30,
        "final_loss": records[-1]["loss"],
    }


def table(rows: list[dict], *, model: str, stage: StageConfig) -> str:
    card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    head = (
        f"{datetime.date.today()} | {card} | torch {torch.__version__} | {model}, micro-batch "
        f"{stage.micro_batch_size} x {stage.data.seq_len} per GPU, {stage.parallel.precision}, "
        f"activation checkpointing {stage.parallel.activation_checkpointing}, compile "
        f"{stage.parallel.compile}, FSDP2 for > 1 GPU\n\n"
        "| GPUs | steps | tokens/s per GPU | MFU | peak memory (GiB) | final loss |\n"
        "|---|---|---|---|---|---|\n"
    )
    body = ""
    for r in rows:
        mfu = "n/a" if r["mfu"] is None else f"{r['mfu']:.1%}"
        body += (
            f"| {r['gpus']} | {r['steps']} | {r['tokens_per_s_per_gpu']:,.0f} | {mfu} | "
            f"{r['peak_mem_gib']:.1f} | {r['final_loss']:.3f} |\n"
        )
    return head + body


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tinyllama-1.1b", help="preset under params/models/")
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2, 4], help="GPU counts")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per run")
    parser.add_argument("--skip", type=int, default=10, help="warm-up steps left out of medians")
    parser.add_argument("--micro-batch", type=int, default=8, help="sequences per GPU per step")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="stage override, e.g. parallel.compile=true (repeatable)")  # fmt: skip
    parser.add_argument("--workdir", type=Path, default=None, help="keep run folders here")
    args = parser.parse_args()
    available = torch.cuda.device_count()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tinylab-bench-"))
    rows, stage = [], None
    for nproc in args.nproc:
        if nproc > max(available, 1) or (nproc > 1 and available == 0):
            print(f"skipping {nproc} GPUs: {available} visible", flush=True)
            continue
        stage = bench_stage(args.model, nproc=nproc, steps=args.steps, micro=args.micro_batch,
                            overrides=args.overrides)  # fmt: skip
        print(f"running {args.model} on {nproc} GPU(s), {args.steps} steps ...", flush=True)
        rows.append(summarize(run_one(stage, nproc, workdir), nproc=nproc, skip=args.skip))
        print(json.dumps(rows[-1]), flush=True)
    if not rows:
        return 1
    print("\n" + table(rows, model=args.model, stage=stage))
    print(f"run folders and logs: {workdir}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    sys.exit(main())
