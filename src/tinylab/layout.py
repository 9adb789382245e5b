"""The run folder: where every file of a run lives, and the records written there.

One owner for the layout of `outputs/runs/<run-id>/`, so no other module joins path strings:

    RUN/manifest.json            the pipeline's record (params, provenance, step status)
    RUN/notebooks/               executed notebooks, one per step
    RUN/data/                    tokenizer/, shards, index.json, data_card.md
    RUN/stages/<stage>/          resolved.yaml, metrics.jsonl, checkpoints/, hf/, adapter/,
                                 result.json, tensorboard/, profile/ (--profile-steps), .lock,
                                 .previous/ (a fresh start)
    RUN/eval/<name>.json         scores; <name>.samples.jsonl, one line per scored example
    RUN/figures/, RUN/report.html, RUN/cluster/

Torch-free and import-light: the trainer, the evaluator, the analysis and the CLI all read and
write through it. The records it owns are the stage result (`result.json`) and the metrics
lines (`metrics.jsonl`, read whole or from the tail); their writers live with their owners.

    RunLayout("outputs/runs/demo").stage("base").metrics
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tinylab.files import write_json_atomic

MANIFEST_FILE, INDEX_FILE, METRICS_FILE = "manifest.json", "index.json", "metrics.jsonl"
RESULT_FILE, RESOLVED_FILE = "result.json", "resolved.yaml"


@dataclass(frozen=True)
class StageLayout:
    """The folder of one trained stage: RUN/stages/<name>/."""

    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def run(self) -> RunLayout:
        return RunLayout(self.root.parent.parent)

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def hf(self) -> Path:
        return self.root / "hf"

    @property
    def adapter(self) -> Path:
        return self.root / "adapter"

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def result(self) -> Path:
        return self.root / RESULT_FILE

    @property
    def resolved(self) -> Path:
        return self.root / RESOLVED_FILE

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def profile(self) -> Path:
        """summary.json and trace.json.gz of the steps `--profile-steps` profiled."""
        return self.root / "profile"

    @property
    def lock(self) -> Path:
        """Held (flock) by the one process training this stage; records who it is."""
        return self.root / ".lock"

    def launch_config(self, pid: int) -> Path:
        """The resolved params a launcher process `pid` hands to its torchrun ranks: a temporary
        resolved.yaml (files.remove_orphans clears it when that process is gone)."""
        return self.root / f".{RESOLVED_FILE}.tmp-{pid}"

    @property
    def previous(self) -> Path:
        """A fresh start's old outputs, kept until the new run has its first checkpoint."""
        return self.root / ".previous"

    @property
    def outputs(self) -> tuple[Path, ...]:
        """Everything a training of the stage writes (what a fresh start moves aside)."""
        return (self.checkpoints, self.metrics, self.result, self.resolved, self.hf,
                self.adapter, self.tensorboard, self.profile)  # fmt: skip


@dataclass(frozen=True)
class RunLayout:
    """The folder of one run: RUN/ (see the module docstring)."""

    root: Path

    def __init__(self, root: Path | str):
        object.__setattr__(self, "root", Path(root))

    @classmethod
    def of_hf_dir(cls, hf_dir: Path) -> RunLayout | None:
        """The run holding `hf_dir` when it is a stage's export (RUN/stages/<s>/hf), else None."""
        hf_dir = Path(hf_dir)
        if hf_dir.name == "hf" and hf_dir.parent.parent.name == "stages":
            return cls(hf_dir.parent.parent.parent)
        return None

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST_FILE

    @property
    def manifest_lock(self) -> Path:
        return self.root / ".manifest.lock"

    @property
    def run_lock(self) -> Path:
        """Held (flock) by the one `tinylab run` working in this folder; records who it is."""
        return self.root / ".run.lock"

    @property
    def notebooks(self) -> Path:
        return self.root / "notebooks"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def data_index(self) -> Path:
        return self.data / INDEX_FILE

    @property
    def stages(self) -> Path:
        return self.root / "stages"

    def stage(self, name: str) -> StageLayout:
        return StageLayout(self.stages / name)

    def trained_stages(self) -> list[StageLayout]:
        """Stages that wrote metrics, by name."""
        return [StageLayout(p.parent) for p in sorted(self.stages.glob(f"*/{METRICS_FILE}"))]

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    def eval_json(self, name: str) -> Path:
        return self.eval / f"{name}.json"

    def eval_samples(self, name: str) -> Path:
        return self.eval / f"{name}.samples.jsonl"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def cluster(self) -> Path:
        return self.root / "cluster"


# --------------------------------------------------------------------------------------------
# Records


@dataclass
class StageResult:
    """What a finished stage left on disk (result.json), and its headline numbers."""

    stage: str
    stage_dir: Path
    step: int
    tokens: int
    stage_tokens: int
    final_loss: float | None
    wall_s: float  # seconds of the processes whose training the stage kept (across resumes)
    checkpoint: Path | None
    hf_dir: Path | None
    trainable_params: int | None = None  # None: a result written before these were recorded
    total_params: int | None = None
    # changes made on purpose on resume (--accept-change): [{"step", "changes": {key: [old, new]}}]
    recipe_changes: list[dict[str, Any]] | None = None

    @property
    def metrics_path(self) -> Path:
        return StageLayout(self.stage_dir).metrics

    def write(self) -> None:
        """Write result.json atomically into the stage folder."""
        record = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
        write_json_atomic(StageLayout(self.stage_dir).result, record, indent=None)

    @classmethod
    def read(cls, stage_dir: Path) -> StageResult:
        data = json.loads(StageLayout(Path(stage_dir)).result.read_text())
        for key in ("stage_dir", "checkpoint", "hf_dir"):
            data[key] = Path(data[key]) if data[key] is not None else None
        return cls(**data)


def read_metrics(path: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """Records of a stage's metrics.jsonl (a stage folder or the file), optionally of one kind."""
    path = Path(path)
    path = path / METRICS_FILE if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"no metrics at {path}")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if kind is None or r["kind"] == kind]


def last_metric(path: Path, kind: str = "train", *, window: int = 1 << 18) -> dict | None:
    """The newest whole record of `kind` in a metrics.jsonl that may be growing (read from its
    last `window` bytes, so a live multi-GB log costs one seek); None when there is none yet."""
    if not Path(path).is_file():
        return None
    with Path(path).open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(max(0, handle.tell() - window))
        lines = handle.read().decode("utf-8", "replace").splitlines()
    for line in reversed(lines):
        with contextlib.suppress(json.JSONDecodeError):
            record = json.loads(line)
            if isinstance(record, dict) and record.get("kind") == kind:
                return record
    return None
