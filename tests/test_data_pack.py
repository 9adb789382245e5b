"""tinylab.data.pack: prepare() on local files, the index, idempotent reruns, bad input."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _data_fixtures import data_config, make_corpus

from tinylab.config.data import DataConfig
from tinylab.config.kinds import load_params
from tinylab.config.loader import ConfigError
from tinylab.data import DataError, PackedData, packed, prepare, token_dtype
from tinylab.data.pack import SHARDS_DIR, is_validation
from tinylab.data.tokenizer import load_fast
from tinylab.layout import INDEX_FILE


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DataConfig]:
    root = tmp_path_factory.mktemp("corpus")
    make_corpus(root)
    cfg = data_config(root)
    prepare(cfg, root / "data", progress=False)
    return root, cfg


def copy_data(prepared: tuple[Path, DataConfig], tmp_path: Path) -> Path:
    shutil.copytree(prepared[0] / "data", tmp_path / "data")
    return tmp_path / "data"


def test_windows_are_the_documents_tokens_in_order(prepared) -> None:
    root, cfg = prepared
    data = PackedData.open(root / "data", verify=True)
    tok = load_fast(data.tokenizer_dir)
    expected: list[int] = []
    for line in (root / "code.jsonl").read_text().splitlines():
        text = json.loads(line)["content"]
        if not is_validation(text, seed=cfg.seed, fraction=cfg.validation_fraction):
            expected += [1, *tok.encode(text, add_special_tokens=False).ids, 2]
    got = np.concatenate([data.window("code", i) for i in range(data.num_windows("code"))])
    assert data.window("code", 0).shape == (17,) and got.dtype == np.int64
    assert got.tolist() == expected[: len(got)]
    assert len(expected) - len(got) < 17  # only the tail that fills no window is dropped


def test_index_records_dtype_counts_tokenizer_and_checksums(prepared) -> None:
    root, _ = prepared
    index = json.loads((root / "data" / INDEX_FILE).read_text())
    assert index["dtype"] == "uint16" and index["window_tokens"] == 17
    assert len(index["tokenizer_sha256"]) == 64
    code = index["sources"]["code"]["splits"]
    assert code["train"]["documents"] + code["val"]["documents"] == 120
    assert code["val"]["documents"] > 0
    shards = code["train"]["shards"]
    assert len(shards) > 1 and all(len(s["sha256"]) == 64 for s in shards)
    assert (root / "data" / "data_card.md").read_text().count("| local files") == 2


def test_validation_documents_never_reach_training_windows(prepared) -> None:
    root, cfg = prepared
    data = PackedData.open(root / "data")
    tok = load_fast(data.tokenizer_dir)
    train = np.concatenate([data.window("prose", i) for i in range(data.num_windows("prose"))])
    train_text = tok.decode(train.tolist())
    docs = [p.read_text() for p in sorted((root / "prose").glob("*.txt"))]
    held_out = [
        d for d in docs if is_validation(d, seed=cfg.seed, fraction=cfg.validation_fraction)
    ]
    assert held_out and data.num_windows("prose", "val") > 0
    for doc in held_out:
        assert doc.split(":")[0] + ":" not in train_text  # "Doc 17:" marks each document
    assert 0.5 < data.bytes_per_token("english") < 20


def test_worker_count_does_not_change_the_shards(prepared, tmp_path: Path) -> None:
    root, cfg = prepared
    cfg2 = data_config(root, num_workers=2)
    prepare(cfg2, tmp_path / "data", progress=False)
    one = json.loads((root / "data" / INDEX_FILE).read_text())
    two = json.loads((tmp_path / "data" / INDEX_FILE).read_text())
    assert one["sources"]["code"]["splits"] == two["sources"]["code"]["splits"]


def test_rerun_reuses_valid_shards(prepared, tmp_path: Path) -> None:
    data_dir = copy_data(prepared, tmp_path)
    stamps = {p.name: p.stat().st_mtime_ns for p in (data_dir / SHARDS_DIR).iterdir()}
    prepare(prepared[1], data_dir, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in (data_dir / SHARDS_DIR).iterdir()} == stamps


def test_truncated_shard_is_named_then_rebuilt(prepared, tmp_path: Path) -> None:
    data_dir = copy_data(prepared, tmp_path)
    shard = sorted((data_dir / SHARDS_DIR).glob("code-train-*.bin"))[1]
    good = shard.read_bytes()
    shard.write_bytes(good[:-10])
    with pytest.raises(DataError, match=f"{shard.name}.*truncated"):
        PackedData.open(data_dir)
    other = sorted((data_dir / SHARDS_DIR).glob("code-train-*.bin"))[0]
    other_stamp = other.stat().st_mtime_ns
    prepare(prepared[1], data_dir, progress=False)
    assert shard.read_bytes() == good
    assert other.stat().st_mtime_ns == other_stamp  # valid shards are not rewritten
    PackedData.open(data_dir, verify=True)


def test_corrupt_shard_fails_verification_then_is_rebuilt(prepared, tmp_path: Path) -> None:
    data_dir = copy_data(prepared, tmp_path)
    PackedData.open(data_dir)  # verified, and remembered in the marker
    shard = sorted((data_dir / SHARDS_DIR).glob("prose-train-*.bin"))[0]
    good = shard.read_bytes()
    shard.write_bytes(bytes(len(good)))  # same size, wrong bytes: the size check passes
    for verify in (False, True):
        with pytest.raises(DataError, match=f"{shard.name}: sha256 differs.*tinylab prepare"):
            PackedData.open(data_dir, verify=verify)
    prepare(prepared[1], data_dir, progress=False)
    assert shard.read_bytes() == good


def test_each_shard_is_hashed_once_per_state_of_its_file(prepared, tmp_path, monkeypatch) -> None:
    data_dir = copy_data(prepared, tmp_path)
    hashed: list[str] = []
    real = packed.sha256_file
    monkeypatch.setattr(packed, "sha256_file", lambda path: hashed.append(path.name) or real(path))
    PackedData.open(data_dir)
    shards = sorted(p.name for p in (data_dir / SHARDS_DIR).iterdir())
    assert sorted(hashed) == shards  # a copied folder is checked once...
    packed._VERIFIED_HERE.clear()  # (as a new process would find it)
    PackedData.open(data_dir)
    assert sorted(hashed) == shards  # ...then trusted while its files are unchanged
    first = data_dir / SHARDS_DIR / shards[0]
    first.write_bytes(first.read_bytes())
    PackedData.open(data_dir)
    assert sorted(hashed) == sorted([*shards, shards[0]])  # a rewritten file is hashed again
    PackedData.open(data_dir, verify=True)
    assert len(hashed) == 2 * len(shards) + 1


def test_a_read_only_data_folder_is_checked_in_the_process(prepared, tmp_path, monkeypatch):
    data_dir = copy_data(prepared, tmp_path)
    (data_dir / packed.VERIFIED_FILE).unlink()
    monkeypatch.setattr(packed, "write_json_atomic", _refuse)
    hashed: list[str] = []
    real = packed.sha256_file
    monkeypatch.setattr(packed, "sha256_file", lambda path: hashed.append(path.name) or real(path))
    PackedData.open(data_dir)
    PackedData.open(data_dir)
    assert not (data_dir / packed.VERIFIED_FILE).exists()
    assert len(hashed) == len(list((data_dir / SHARDS_DIR).iterdir()))


def _refuse(*args, **kwargs) -> None:
    raise OSError(30, "Read-only file system")


def test_a_shard_changed_after_its_check_is_named_when_read(prepared, tmp_path: Path) -> None:
    data_dir = copy_data(prepared, tmp_path)
    data = PackedData.open(data_dir)
    shard = sorted((data_dir / SHARDS_DIR).glob("code-train-*.bin"))[0]
    with shard.open("r+b") as out:  # token ids past the vocabulary (320) in window 0
        out.write(np.full(4, 60_000, dtype=np.uint16).tobytes())
    with pytest.raises(DataError, match=f"{shard.name}: token id 60000 in window 0 of code/train"):
        data.window("code", 0)
    assert data.window("code", 1).max() < data.vocab_size


def test_prepare_clears_what_killed_runs_left(prepared, tmp_path: Path) -> None:
    data_dir = copy_data(prepared, tmp_path)
    dead = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True).stdout.strip()
    leftovers = [
        data_dir / f".tokenizer.tmp-{dead}",
        data_dir / f".index.json.tmp-{dead}",
        data_dir / SHARDS_DIR / f".code-train-x-00000.bin.tmp-{dead}",
    ]
    leftovers[0].mkdir()
    (leftovers[0] / "tokenizer.json").write_text("{}")
    for path in leftovers[1:]:
        path.write_bytes(b"partial")
    alive = data_dir / ".index.json.tmp-1"  # a live writer's file (pid 1 runs) is kept
    alive.write_bytes(b"in progress")
    prepare(prepared[1], data_dir, progress=False)
    assert [p for p in leftovers if p.exists()] == [] and alive.exists()


def test_prepare_into_a_folder_it_cannot_write_is_one_error(prepared, tmp_path, monkeypatch):
    data_dir = copy_data(prepared, tmp_path)
    before = {p: p.read_bytes() for p in data_dir.rglob("*") if p.is_file()}
    monkeypatch.setattr(Path, "touch", _refuse)
    with pytest.raises(DataError, match="cannot write the data folder.*another --out"):
        prepare(prepared[1], data_dir, progress=False)
    assert {p: p.read_bytes() for p in data_dir.rglob("*") if p.is_file()} == before


def test_missing_shard_is_named(prepared, tmp_path: Path) -> None:
    data_dir = copy_data(prepared, tmp_path)
    shard = sorted((data_dir / SHARDS_DIR).glob("code-val-*.bin"))[0]
    shard.unlink()
    with pytest.raises(DataError, match=f"{shard.name}.*missing"):
        PackedData.open(data_dir)


def test_index_that_does_not_match_the_tokenizer(prepared, tmp_path: Path) -> None:
    data_dir = copy_data(prepared, tmp_path)
    tokenizer_json = data_dir / "tokenizer" / "tokenizer.json"
    spec = json.loads(tokenizer_json.read_text())
    spec["model"]["vocab"]["<0x41>"], spec["model"]["vocab"]["<0x42>"] = 0x42 + 3, 0x41 + 3
    tokenizer_json.write_text(json.dumps(spec))
    with pytest.raises(DataError, match="index.json: tokenizer_sha256.*another tokenizer"):
        PackedData.open(data_dir)


def test_missing_index_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="tinylab prepare"):
        PackedData.open(tmp_path)


def test_reader_errors_name_the_source_and_range(prepared) -> None:
    data = PackedData.open(prepared[0] / "data")
    with pytest.raises(DataError, match="unknown source 'nope'"):
        data.num_windows("nope")
    with pytest.raises(IndexError, match="out of range"):
        data.window("code", data.num_windows("code"))
    with pytest.raises(DataError, match="domain 'klingon'"):
        data.bytes_per_token("klingon")


def test_missing_text_field_names_file_line_and_keys(tmp_path: Path) -> None:
    make_corpus(tmp_path)
    cfg = data_config(tmp_path)
    cfg.sources["code"].text_field = "body"
    with pytest.raises(DataError, match=r"code\.jsonl:1: text_field 'body' missing.*'content'"):
        prepare(cfg, tmp_path / "data", progress=False)


def test_empty_corpus_is_an_error_and_writes_no_index(tmp_path: Path) -> None:
    make_corpus(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("  \n\n")
    cfg = data_config(tmp_path)
    cfg.sources["code"].paths = [f"{tmp_path}/empty/*.txt"]
    cfg.sources["code"].format = "txt"
    with pytest.raises(DataError, match="sources.code: empty corpus"):
        prepare(cfg, tmp_path / "data", progress=False)
    assert not (tmp_path / "data" / INDEX_FILE).exists()


def test_failed_rerun_leaves_a_good_data_folder_intact(prepared, tmp_path: Path) -> None:
    data_dir = copy_data(prepared, tmp_path)
    before = (data_dir / INDEX_FILE).read_bytes()
    cfg = data_config(prepared[0])
    cfg.sources["code"].text_field = "missing"
    with pytest.raises(DataError):
        prepare(cfg, data_dir, progress=False)
    assert (data_dir / INDEX_FILE).read_bytes() == before
    PackedData.open(data_dir, verify=True)


def test_unknown_source_kind_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "params" / "data" / "bad.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(
        "tokenizer: {kind: train, vocab_size: 300}\n"
        "sources: {x: {kind: ftp, domain: english, paths: [a.txt]}}\nseq_len: 8\n"
    )
    with pytest.raises(ConfigError, match=r"sources\.x.*ftp"):
        load_params(path)


def test_vocab_too_large_for_uint16_switches_to_uint32(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"w{i}": i + 3 for i in range(70_000)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    ).save_pretrained(str(tmp_path / "big-tokenizer"))
    (tmp_path / "big.txt").write_text(" ".join(f"w{i}" for i in range(69_990, 70_000)) * 3)
    cfg = DataConfig.model_validate(
        {
            "tokenizer": {"kind": "path", "name_or_path": str(tmp_path / "big-tokenizer")},
            "sources": {"big": {"kind": "local", "domain": "x", "paths": [f"{tmp_path}/big.txt"]}},
            "seq_len": 8,
            "validation_fraction": 0.01,
            "num_workers": 1,
        }
    )
    data = prepare(cfg, tmp_path / "data", progress=False)
    assert token_dtype(65_536) == np.uint16 and token_dtype(65_537) == np.uint32
    assert data.dtype == np.uint32
    assert data.window("big", 0).tolist()[:3] == [1, 69_993, 69_994]


def test_failed_repack_with_a_new_tokenizer_keeps_the_old_folder(tmp_path: Path) -> None:
    make_corpus(tmp_path)
    data_dir = tmp_path / "data"
    prepare(data_config(tmp_path), data_dir, progress=False)
    before = {p.name: p.read_bytes() for p in data_dir.rglob("*") if p.is_file()}
    with (tmp_path / "code.jsonl").open("a") as out:
        out.write(json.dumps({"text": "no content field"}) + "\n")  # read only when packing
    cfg = data_config(tmp_path, tokenizer={"kind": "train", "vocab_size": 330})
    cfg.tokenizer.train_bytes_per_source = 1
    with pytest.raises(DataError, match="code.jsonl:121"):
        prepare(cfg, data_dir, progress=False)
    after = {p.name: p.read_bytes() for p in data_dir.rglob("*") if p.is_file()}
    assert {name: after.get(name) for name in before} == before  # new shards have new names
    PackedData.open(data_dir, verify=True)


def test_bos_policy_needs_a_tokenizer_that_declares_bos(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1, "b": 2}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(
        str(tmp_path / "tok")
    )
    (tmp_path / "t.txt").write_text("a b " * 50)
    raw = {
        "tokenizer": {"kind": "path", "name_or_path": str(tmp_path / "tok")},
        "sources": {"t": {"kind": "local", "domain": "x", "paths": [f"{tmp_path}/t.txt"]}},
        "seq_len": 8,
        "num_workers": 1,
    }
    with pytest.raises(DataError, match="add_bos = true but the tokenizer .* no bos_token"):
        prepare(DataConfig.model_validate(raw), tmp_path / "data", progress=False)
    data = prepare(
        DataConfig.model_validate({**raw, "add_bos": False, "add_eos": False}),
        tmp_path / "data",
        progress=False,
    )
    assert data.index["bos_id"] is None and data.window("t", 0).tolist()[:4] == [1, 2, 1, 2]


KILLED_PREPARE = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from _data_fixtures import data_config
from tinylab.data import prepare
root = Path(sys.argv[1])
prepare(data_config(root, tokenizer={"kind": "train", "vocab_size": 330}), root / "data",
        progress=False)
"""


# moments to kill a prepare that makes a new tokenizer, as seen in its data folder
KILL_AT = {
    "staging folder made": lambda d, old: any(d.glob(".tokenizer.tmp-*")),
    "tokenizer trained": lambda d, old: any(d.glob(".tokenizer.tmp-*/tokenizer.json")),
    "first new shard": lambda d, old: len(list(d.glob("shards/*.bin"))) > old,
    "index replaced": lambda d, old: "330" in (d / INDEX_FILE).read_text(),
}


@pytest.mark.slow
@pytest.mark.parametrize("moment", list(KILL_AT))
def test_prepare_killed_anywhere_leaves_nothing_behind_after_the_rerun(
    prepared, tmp_path, moment
) -> None:
    """SIGKILL a prepare (a new tokenizer, so a staging folder too) at a moment of its work;
    the rerun leaves no temporary file or folder and the shards of an uninterrupted one."""
    root, _ = prepared
    cfg = data_config(root, tokenizer={"kind": "train", "vocab_size": 330})
    prepare(cfg, tmp_path / "whole", progress=False)
    run = tmp_path / "killed"
    run.mkdir()
    shutil.copytree(root / "data", run / "data")  # an older prepare is there
    old = len(list((run / "data").glob("shards/*.bin")))
    (run / "prose").symlink_to(root / "prose")
    (run / "code.jsonl").symlink_to(root / "code.jsonl")
    command = [sys.executable, "-c", KILLED_PREPARE, str(run), str(Path(__file__).parent)]
    child = subprocess.Popen(command)
    while child.poll() is None and not KILL_AT[moment](run / "data", old):
        time.sleep(0.002)
    child.send_signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL, f"prepare ended before {moment}"
    prepare(data_config(run, tokenizer=cfg.tokenizer.model_dump()), run / "data", progress=False)
    left = [p.name for p in (run / "data").rglob(".*-*")]
    assert left == [], f"killed at {moment}: {left}"
    assert _shard_bytes(run / "data") == _shard_bytes(tmp_path / "whole")


def _shard_bytes(data_dir: Path) -> dict[str, list[tuple[int, str]]]:
    """(windows, sha256) of every shard per source and split (names carry the file paths)."""
    index = json.loads((data_dir / INDEX_FILE).read_text())["sources"]
    return {
        f"{name}/{split}": [(s["windows"], s["sha256"]) for s in entry["splits"][split]["shards"]]
        for name, entry in index.items()
        for split in entry["splits"]
    }
