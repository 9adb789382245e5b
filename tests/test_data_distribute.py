"""Preparation scaled out on datatrove (tinylab.data.pack + tinylab.data.distribute): shards do
not depend on the number of worker processes, a failed run resumes to the same bytes redoing only
the unit that failed, and a finished run is not redone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _hub_mirrors import make_mirrors
from test_data_hub_mirrors import mirrored_config

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
