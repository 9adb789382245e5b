"""tinylab.data.sources: hub repositories (their files read directly; here from a local folder
through `hub_root`, the one redirect), local txt/jsonl/parquet files, caps and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tinylab.config.data import DataConfig, HubSource, LocalSource
from tinylab.data import DataError, iter_documents, prepare
from tinylab.data.sources import hub_repo_url, source_units

SLIMPAJAMA = [  # the record layout of cerebras/SlimPajama-627B
    {"text": "An essay on kings.", "meta": {"redpajama_set_name": "RedPajamaCommonCrawl"}},
    {"text": "def f(): pass", "meta": {"redpajama_set_name": "RedPajamaGithub"}},
    {"text": "A book about castles.", "meta": {"redpajama_set_name": "RedPajamaBook"}},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def slimpajama_source(tmp_path: Path, **changes) -> HubSource:
    write_jsonl(tmp_path / "cerebras" / "SlimPajama-627B" / "train" / "a.jsonl", SLIMPAJAMA)
    raw = {
        "kind": "hub",
        "domain": "english",
        "path": "cerebras/SlimPajama-627B",
        "data_files": ["train/*.jsonl"],
        "hub_root": str(tmp_path),
        "exclude": {"meta.redpajama_set_name": ["RedPajamaGithub"]},
    }
    return HubSource.model_validate({**raw, **changes})


def test_hub_source_drops_the_excluded_subset(tmp_path: Path) -> None:
    docs = list(iter_documents(slimpajama_source(tmp_path)))
    assert docs == ["An essay on kings.", "A book about castles."]


def test_hub_files_are_units_unless_capped(tmp_path: Path) -> None:
    source = slimpajama_source(tmp_path, data_files=["train/*.jsonl", "extra/*.jsonl"])
    write_jsonl(tmp_path / "cerebras" / "SlimPajama-627B" / "extra" / "b.jsonl", SLIMPAJAMA[:1])
    units = source_units(source, name="slim")
    assert [Path(u).relative_to(tmp_path).as_posix() for u in units] == [
        "cerebras/SlimPajama-627B/extra/b.jsonl",  # sorted by path in the repository
        "cerebras/SlimPajama-627B/train/a.jsonl",
    ]
    source.exclude_files = ["extra/*"]
    assert len(source_units(source, name="slim")) == 1
    source.max_documents = 1
    assert source_units(source, name="slim") == [None]  # a capped source is read as a whole


def test_the_hub_is_the_default_root() -> None:
    source = HubSource(kind="hub", domain="x", path="a/b", data_files=["*.jsonl"], revision="v1")
    assert hub_repo_url(source) == "hf://datasets/a/b@v1"


def test_hub_source_with_another_text_field(tmp_path: Path) -> None:
    rows = [{"content": "print(1)", "max_stars_repo_name": "a/b"}]  # bigcode/starcoderdata
    folder = tmp_path / "bigcode" / "starcoderdata" / "python"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "train-00000-of-00001.parquet")
    source = HubSource(
        kind="hub",
        domain="code",
        path="bigcode/starcoderdata",
        data_files=["*/train-*.parquet"],
        hub_root=str(tmp_path),
        text_field="content",
    )
    assert list(iter_documents(source)) == ["print(1)"]


def test_hub_errors_name_the_record_and_field(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"record 0: text_field 'body' missing.*\['meta', 'text'\]"):
        list(iter_documents(slimpajama_source(tmp_path, text_field="body"), name="slimpajama"))
    with pytest.raises(DataError, match="exclude field 'meta.set' not found"):
        list(iter_documents(slimpajama_source(tmp_path, exclude={"meta.set": ["x"]})))


def test_unreachable_hub_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    import fsspec

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach huggingface.co")

    monkeypatch.setattr(fsspec.core, "url_to_fs", offline)
    source = HubSource(
        kind="hub", domain="english", path="cerebras/SlimPajama-627B", data_files=["*.jsonl"]
    )
    with pytest.raises(
        DataError,
        match=r"sources.slimpajama \(cerebras/SlimPajama-627B\): cannot read "
        r"hf://datasets/cerebras/SlimPajama-627B: ConnectionError.*set hub_root",
    ):
        list(iter_documents(source, name="slimpajama"))


def test_prepare_packs_a_hub_source(tmp_path: Path) -> None:
    source = slimpajama_source(tmp_path).model_dump()
    cfg = DataConfig.model_validate(
        {
            "tokenizer": {"kind": "train", "vocab_size": 300},
            "sources": {"slimpajama": source},
            "seq_len": 4,
            "validation_fraction": 0.01,
            "num_workers": 1,
        }
    )
    data = prepare(cfg, tmp_path / "data", progress=False)
    index = data.index["sources"]["slimpajama"]
    assert index["splits"]["train"]["documents"] + index["splits"]["val"]["documents"] == 2


def test_local_parquet_with_a_text_field(tmp_path: Path) -> None:
    table = pa.table({"body": ["first doc", "", "second doc"], "id": [1, 2, 3]})
    pq.write_table(table, tmp_path / "part-0.parquet")
    source = LocalSource(
        kind="local", domain="x", paths=[f"{tmp_path}/*.parquet"], text_field="body"
    )
    assert list(iter_documents(source)) == ["first doc", "second doc"]  # empty ones skipped
    source.text_field = "text"
    with pytest.raises(DataError, match=r"part-0.parquet: text_field 'text' is not a column.*body"):
        list(iter_documents(source))


def test_local_txt_globs_sorted_and_capped(tmp_path: Path) -> None:
    for name in ("b.txt", "a.txt", "c.txt"):
        (tmp_path / name).write_text(f"text of {name}")
    source = LocalSource(kind="local", domain="x", paths=[f"{tmp_path}/*.txt"])
    assert list(iter_documents(source)) == ["text of a.txt", "text of b.txt", "text of c.txt"]
    source.max_documents = 2
    assert len(list(iter_documents(source))) == 2
    source.max_documents, source.max_bytes = None, 14
    assert list(iter_documents(source)) == ["text of a.txt", "text of b.txt"]


def test_relative_paths_resolve_against_the_project_root() -> None:
    source = LocalSource(kind="local", domain="x", paths=["params/data/demo.yaml"], format="txt")
    assert "tokenizer:" in next(iter_documents(source))


def test_bad_local_input_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"sources.web.paths: '/nope/\*.txt' matches no file"):
        list(
            iter_documents(LocalSource(kind="local", domain="x", paths=["/nope/*.txt"]), name="web")
        )
    (tmp_path / "a.csv").write_text("x")
    with pytest.raises(DataError, match="cannot tell the format from '.csv'"):
        list(iter_documents(LocalSource(kind="local", domain="x", paths=[str(tmp_path / "a.csv")])))
    (tmp_path / "a.jsonl").write_text('{"text": "ok"}\nnot json\n')
    source = LocalSource(kind="local", domain="x", paths=[str(tmp_path / "a.jsonl")])
    with pytest.raises(DataError, match=r"a.jsonl:2: not JSON"):
        list(iter_documents(source))


def test_unknown_source_object() -> None:
    with pytest.raises(DataError, match="unknown source kind 'ftp'"):
        iter_documents(type("Ftp", (), {"kind": "ftp"})(), name="mirror")


def test_prepare_names_the_local_source_whose_paths_match_nothing(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("some text")
    raw = {
        "tokenizer": {"kind": "train", "vocab_size": 300},
        "sources": {
            "books": {"kind": "local", "domain": "english", "paths": [str(tmp_path / "a.txt")]},
            "wiki": {"kind": "local", "domain": "english", "paths": [str(tmp_path / "w/*.txt")]},
        },
        "seq_len": 8,
        "num_workers": 1,
    }
    with pytest.raises(DataError, match=r"^sources\.wiki\.paths: '.*w/\*\.txt' matches no file"):
        prepare(DataConfig.model_validate(raw), tmp_path / "data", progress=False)


def test_zstd_files_of_several_frames_read_whole(tmp_path: Path) -> None:
    import zstandard

    rows = [json.dumps({"text": f"document {i}"}) + "\n" for i in range(5)]
    compress = zstandard.ZstdCompressor().compress
    frames = [compress("".join(part).encode()) for part in (rows[:2], rows[2:])]
    path = tmp_path / "a" / "b" / "data" / "part.jsonl.zst"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"".join(frames))
    source = HubSource(
        kind="hub", domain="x", path="a/b", data_files=["data/*.jsonl.zst"], hub_root=str(tmp_path)
    )
    assert list(iter_documents(source)) == [f"document {i}" for i in range(5)]
