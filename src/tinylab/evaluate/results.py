"""Evaluation results on disk: one JSON per checkpoint, per-sample JSONL, and reuse of both.

`<out>/<name>.json` holds one row per task: task, metric, value, stderr, n, shots, chance, all
metrics, the settings that produced it (harness version, BOS, limit, ...), the code that scored it
(a digest of tinylab.evaluate's source with its tinylab imports, and the versions of torch,
transformers and lm-eval) and the model identity (sha256 of the safetensors).
`<out>/<name>.samples.jsonl` holds one line per scored example. A row is reused when the model
hash, the settings and the code match, so re-running a suite only computes what is new; a
different checkpoint under the same name starts afresh. Writes are atomic
(temporary file + rename), so an interrupted run leaves the previous files intact.

    tinylab eval HF_DIR --params params/eval/demo.yaml --out outputs/runs/demo/eval
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tinylab.evaluate.errors import EvalError
from tinylab.files import json_digest, write_atomic, write_json_atomic
from tinylab.provenance import SOURCE_DIR, SourceTree, package_versions


def model_identity(hf_dir: Path) -> dict[str, str]:
    """The model's identity: sha256 over its safetensors files (names and bytes, sorted)."""
    files = sorted(Path(hf_dir).glob("*.safetensors"))
    if not files:
        raise EvalError(
            f"{hf_dir}: no *.safetensors files; evaluation needs a safetensors HF export"
        )
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return {"path": str(Path(hf_dir).resolve()), "sha256": digest.hexdigest()}


def scoring_code(source_dir: Path = SOURCE_DIR) -> dict[str, Any]:
    """The code that scores: a digest of tinylab.evaluate's files and the tinylab modules they
    import (provenance.SourceTree), and the versions of the harness packages they import."""
    record = SourceTree(source_dir).record(["tinylab.evaluate"])
    return {"digest": json_digest(record["files"])[:16], "versions": record["versions"]}


class ResultStore:
    """The results of one checkpoint under a name, as stored in out_dir."""

    def __init__(self, out_dir: Path, name: str, model: dict[str, str]):
        self.json_path = Path(out_dir) / f"{name}.json"
        self.samples_path = Path(out_dir) / f"{name}.samples.jsonl"
        self.name, self.model = name, model
        self.code = scoring_code()
        self.rows: dict[str, dict] = {}
        self.samples: dict[str, list[dict]] = {}
        self._load()

    def _load(self) -> None:
        if not self.json_path.is_file():
            return
        stored = json.loads(self.json_path.read_text())
        if stored.get("model", {}).get("sha256") != self.model["sha256"]:
            return  # another checkpoint was stored under this name: nothing is reusable
        self.rows = {row["task"]: row for row in stored.get("results", [])}
        if self.samples_path.is_file():
            for line in self.samples_path.read_text().splitlines():
                record = json.loads(line)
                self.samples.setdefault(record["task"], []).append(record)

    def cached(self, task: str, settings: dict[str, Any]) -> dict | None:
        """The stored row of a task when it was computed with exactly these settings and this
        code."""
        row = self.rows.get(task)
        if row is None or row.get("settings") != settings or row.get("code") != self.code:
            return None
        return row

    def put(self, row: dict, samples: Iterable[dict] = ()) -> None:
        """Add (or replace) one task's row, stamped with the scoring code, and its samples; call
        write() to store them."""
        row = {**row, "code": self.code}
        self.rows[row["task"]] = row
        self.samples[row["task"]] = [{"task": row["task"], **s} for s in samples]

    def write(self, tasks: Iterable[str] | None = None) -> dict:
        """Write the JSON and the samples: rows of `tasks` first, in that order, then the other
        stored rows of this checkpoint (an evaluation with other params keeps them)."""
        first = [name for name in tasks or () if name in self.rows]
        names = first + [name for name in self.rows if name not in first]
        document = {
            "checkpoint": self.name,
            "model": self.model,
            "tinylab": package_versions(("tinylab",))["tinylab"],
            "results": [self.rows[name] for name in names],
        }
        write_json_atomic(self.json_path, document, indent=2)
        lines = [
            json.dumps(record, ensure_ascii=False)
            for name in names
            for record in self.samples.get(name, [])
        ]
        write_atomic(self.samples_path, "".join(line + "\n" for line in lines).encode("utf-8"))
        return document


def load_results(path: Path) -> dict:
    """Read a results JSON written by ResultStore."""
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"{path}: no evaluation results (run `tinylab eval` first)")
    return json.loads(path.read_text())
