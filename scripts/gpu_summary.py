"""The GPU pipeline's summary (issue 20; bench/RESULTS.md): each step's status and seconds from
the run's manifest, and the training stages' tokens/s beside bench/throughput.py's `default`.

    python scripts/gpu_summary.py outputs/runs/gpu [bench.jsonl]

Tokens/s of a stage = its tokens over its steps' seconds (the same per-step `step_s` that
bench/throughput.py sums), leaving out each stage's first steps (compilation and warm-up: 5; 2
for a stage of 4 to 9 steps, 1 for fewer), as the bench leaves out its first --skip steps.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tinylab.layout import RunLayout, read_metrics


def stage_speed(records: list[dict]) -> tuple[int, float, float] | None:
    """(timed steps, tokens/s, mean MFU) of one stage's train records after its warm-up; None
    when the stage has no step after it."""
    timed = records[5 if len(records) >= 10 else 2 if len(records) >= 4 else 1 :]
    if not timed:
        return None
    tokens = sum(r["tokens_per_s"] * r["step_s"] for r in timed)
    seconds = sum(r["step_s"] for r in timed)
    mfu = sum(r["mfu"] or 0.0 for r in timed) / len(timed)
    return len(timed), tokens / seconds, mfu


def main(run_dir: Path, bench: Path | None) -> None:
    run = RunLayout(run_dir)
    manifest = json.loads(run.manifest.read_text())
    print("| step | status | seconds |\n|---|---|---|")
    total = 0.0
    for name, record in manifest["steps"].items():
        total += record.get("seconds") or 0.0
        print(f"| {name} | {record.get('status')} | {record.get('seconds')} |")
    print(f"| **total** | | {total:.1f} |\n")
    print("| training | steps timed | tokens/s | MFU |\n|---|---|---|---|")
    for name in manifest["steps"]:
        metrics = run.stage(name).metrics
        if metrics.is_file():
            speed = stage_speed(read_metrics(metrics, "train"))
            if speed is None:
                print(f"| pipeline stage {name} | 0 | - | - |")
                continue
            steps, speed, mfu = speed
            print(f"| pipeline stage {name} | {steps} | {speed:,.0f} | {mfu:.1%} |")
    if bench and bench.is_file():
        for line in bench.read_text().splitlines():
            result = json.loads(line)
            if "tokens_per_s" in result:
                name = result["variant"]["name"]
                print(f"| bench/throughput.py {name} | | {result['tokens_per_s']:,.0f} | |")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None)
