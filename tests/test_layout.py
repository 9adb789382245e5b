"""The run folder's owner: paths, stage results, metrics records, atomic folder writes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tinylab.files import json_digest, replace_dir_atomic, write_atomic
from tinylab.layout import RunLayout, StageResult, last_metric, read_metrics


def test_paths_of_a_run_and_a_stage(tmp_path):
    run = RunLayout(tmp_path)
    stage = run.stage("base")
    assert stage.checkpoints == tmp_path / "stages" / "base" / "checkpoints"
    assert stage.run == run and stage.name == "base"
    assert run.eval_json("base") == tmp_path / "eval" / "base.json"
    assert RunLayout.of_hf_dir(stage.hf) == run
    assert RunLayout.of_hf_dir(tmp_path / "somewhere" / "hf") is None


def test_stage_result_round_trip(tmp_path):
    stage_dir = RunLayout(tmp_path).stage("base").root
    stage_dir.mkdir(parents=True)
    result = StageResult("base", stage_dir, 3, 300, 300, 2.5, 1.0, stage_dir / "c", None, 10, 20)
    result.write()
    assert StageResult.read(stage_dir) == result


def test_metrics_whole_and_tail(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"kind": "train", "step": i} for i in range(3)] + [{"kind": "val", "step": 2}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert [r["step"] for r in read_metrics(tmp_path, "val")] == [2]
    with path.open("a") as handle:
        handle.write('{"kind": "tra')  # a line being written: the tail reader skips it
    assert last_metric(path) == {"kind": "train", "step": 2}
    assert last_metric(tmp_path / "missing.jsonl") is None


def test_json_digest_ignores_key_order():
    assert json_digest({"a": 1, "b": [1, 2]}) == json_digest({"b": [1, 2], "a": 1})
    assert json_digest({"a": 1}) != json_digest({"a": 2})


def test_replace_dir_atomic_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "hf"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), replace_dir_atomic(target) as staging:
        (staging / "new.txt").write_text("new")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]
    assert (target / "old.txt").read_text() == "old"
    with replace_dir_atomic(target) as staging:
        (staging / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]


def test_orphans_of_dead_processes_are_cleaned(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    (tmp_path / f".hf.tmp-{dead}").mkdir()
    (tmp_path / f".hf.old-{dead}").mkdir()  # killed between the renames: the old copy returns
    (tmp_path / f".hf.tmp-{os.getpid()}x").mkdir()  # not ours to judge: kept
    with replace_dir_atomic(tmp_path / "hf") as staging:
        assert not (tmp_path / "hf").exists() or (tmp_path / "hf").is_dir()
        (staging / "f").write_text("x")
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == [f".hf.tmp-{os.getpid()}x", "hf"]


def test_a_failed_atomic_write_names_its_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    (tmp_path / "a.json").write_text("old")
    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space left") as failure:
        write_atomic(tmp_path / "a.json", b"new")
    assert failure.value.filename == str(tmp_path / "a.json") and failure.value.errno == 28
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
    assert (tmp_path / "a.json").read_text() == "old"
