"""Preparation scaled out on datatrove (tinylab.data.pack + tinylab.data.distribute): shards do
not depend on the number of worker processes, a failed run resumes to the same bytes redoing only
the unit that failed, and a finished run is not redone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _hub_mirrors import make_mirrors, mirrored_config, mirrored_overrides

from tinylab.config.loader import PARAMS_DIR, PROJECT_ROOT
from tinylab.data import pack, prepare
from tinylab.files import sha256_file


@pytest.fixture(scope="module")
def mirrors(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mirrors(tmp_path_factory.mktemp("hub"))


def digests(data_dir: Path) -> dict[str, str]:
    """sha256 of every file of a data folder (shards, index, card, tokenizer), but the reader's
    marker of what it verified (.verified.json: file times)."""
    files = [p for p in sorted(data_dir.rglob("*")) if p.is_file() and p.name != ".verified.json"]
    return {str(p.relative_to(data_dir)): sha256_file(p) for p in files}


@pytest.fixture(scope="module")
def one_worker(mirrors: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    data_dir = tmp_path_factory.mktemp("one")
    prepare(mirrored_config(mirrors), data_dir, progress=False, workers=1)
    return digests(data_dir)


def test_one_and_two_workers_write_identical_shards(
    mirrors: Path, one_worker: dict[str, str], tmp_path: Path
) -> None:
    prepare(mirrored_config(mirrors), tmp_path, progress=False, workers=2, tasks=4)
    assert digests(tmp_path) == one_worker
    shards = [name for name in one_worker if name.startswith("shards/")]
    assert len(shards) >= 9  # every hub file is its own unit with its own shards
    index = json.loads((tmp_path / "index.json").read_text())
    splits = [split for entry in index["sources"].values() for split in entry["splits"].values()]
    listed = {shard["sha256"] for split in splits for shard in split["shards"]}
    assert listed == {one_worker[name] for name in shards}  # the one index holds each checksum
    assert not (tmp_path / "work").exists()


def test_a_failed_run_resumes_redoing_only_the_failed_unit(
    mirrors: Path, one_worker: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = pack.unit_documents
    opened: list[str] = []

    def dies_in_arxiv(source, unit, *, name):
        opened.append(Path(unit).name)
        for number, doc in enumerate(real(source, unit, name=name)):
            if "arXiv" in unit and number == 30:  # after some of its shards were written
                raise RuntimeError("killed")
            yield doc

    monkeypatch.setattr(pack, "unit_documents", dies_in_arxiv)
    cfg = mirrored_config(mirrors)
    with pytest.raises(RuntimeError, match="killed"):
        prepare(cfg, tmp_path, progress=False, workers=1)
    assert not (tmp_path / "index.json").exists()
    done = sorted(p.name for p in (tmp_path / "work" / "units").glob("*.json"))
    assert len(done) == 5  # the units dealt before the failing one (tasks run in rank order)

    opened.clear()

    def counts(source, unit, *, name):
        opened.append(Path(unit).name)
        return real(source, unit, name=name)

    monkeypatch.setattr(pack, "unit_documents", counts)
    prepare(cfg, tmp_path, progress=False, workers=1)
    assert digests(tmp_path) == one_worker
    assert (
        "arXiv_000.jsonl.zst" in opened and len(opened) == 4
    )  # the failed unit and those after it

    opened.clear()
    prepare(cfg, tmp_path, progress=False, workers=2)  # idempotent: nothing is read again
    assert opened == [] and digests(tmp_path) == one_worker


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_shards(tmp_path: Path) -> None:
    """`tinylab prepare` with 2 workers killed (SIGKILL, the whole process group) after its first
    unit finished; the same command again ends with the bytes of an undisturbed 1-worker run."""
    mirrors = make_mirrors(tmp_path / "hub", docs=1500)
    params = str(PARAMS_DIR / "data" / "tinyllama.yaml")
    base = [sys.executable, "-m", "tinylab.cli", "prepare", params, "--no-progress"]
    for line in mirrored_overrides(mirrors):
        base += ["--set", line]
    command = [*base, "--workers", "2"]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "src")}
    killed = tmp_path / "killed"
    run = subprocess.Popen([*command, "--out", str(killed)], env=env, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while not list((killed / "work" / "units").glob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    assert not (killed / "index.json").exists(), "the run ended before it was killed"
    assert list((killed / "work" / "units").glob("*.json"))
    subprocess.run([*command, "--out", str(killed)], env=env, check=True, capture_output=True)
    clean = tmp_path / "clean"
    subprocess.run([*base, "--out", str(clean)], env=env, check=True, capture_output=True)
    assert digests(killed) == digests(clean)


FAKE_SBATCH = """#!/bin/sh
# records each submission (its arguments and script) and answers as sbatch does
n=$(ls "$SBATCH_LOG" | wc -l)
{ echo "$@"; cat "$(eval echo \\${$#})"; } > "$SBATCH_LOG/$n.txt"
echo "Submitted batch job $((100 + n))"
"""


def test_slurm_array_then_the_index_job(
    mirrors: Path, one_worker: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`submit_prepare` through datatrove's SLURM executor against a fake sbatch: a job array of
    the tasks and the index job after it (afterok); running each pickled task as its array
    index would, then the index job, gives the bytes of a local run."""
    import dill

    bin_dir, log = tmp_path / "bin", tmp_path / "sbatch"
    bin_dir.mkdir()
    log.mkdir()
    for name, script in (("sbatch", FAKE_SBATCH), ("scontrol", "#!/bin/sh\necho node1\n")):
        (bin_dir / name).write_text(script)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("SBATCH_LOG", str(log))
    data_dir = tmp_path / "data"
    job = pack.submit_prepare(
        mirrored_config(mirrors), data_dir, tasks=3, partition="cpu", time="1:00:00"
    )
    scripts = [(log / f"{n}.txt").read_text() for n in range(len(list(log.iterdir())))]
    runs = [s for s in scripts if "launch_pickled_pipeline" in s]  # (also: datatrove's stats jobs)
    arrays = [s for s in runs if "#SBATCH --array=0-2" in s]
    index_jobs = [s for s in runs if "tinylab-prepare-index" in s]
    assert len(arrays) == 1 and "#SBATCH --partition=cpu" in arrays[0]
    assert len(index_jobs) == 1 and "--dependency=afterok:100" in index_jobs[0]
    assert not (data_dir / "index.json").exists()  # nothing ran yet

    monkeypatch.setenv("SLURM_NODELIST", "node1")
    for folder, ranks in ((job.logs / "tasks", range(3)), (job.logs / "index", range(1))):
        for rank in ranks:  # what launch_pickled_pipeline does in array task `rank`
            monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(rank))
            executor = dill.loads((folder / "executor.pik").read_bytes())
            executor.run()
    built = digests(data_dir)
    assert {k: v for k, v in built.items() if not k.startswith("work/")} == one_worker
