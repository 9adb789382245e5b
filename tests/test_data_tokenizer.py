"""tinylab.data.tokenizer: the trained byte-fallback BPE, its layout, loading and hash."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from tinylab.config.data import TokenizerConfig
from tinylab.data import DataError, tokenizer_hash, train_tokenizer
from tinylab.data.tokenizer import BYTE_TOKENS, fetch_pretrained, load_fast, save_trained

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
