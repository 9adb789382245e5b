"""Tokenizers: load one (hub id or local folder, via transformers.AutoTokenizer) or train a
byte-fallback BPE on the corpora (the `tokenizers` library), save it into the run's data folder
and identify it by a content hash.

Trade-off: the trained tokenizer copies Llama-2's layout (`<unk>`=0, `<s>`=1, `</s>`=2, then 256
byte tokens `<0x00>`..`<0xFF>`, then merges), so the model presets' bos=1/eos=2 hold and no text
is ever unknown, at the cost of 256 vocabulary slots. Whitespace is marked with `▁` (Metaspace)
and digits are split one by one, as Llama does; unlike Llama no `▁` is prepended to a text, so
decode(encode(text)) == text exactly, leading spaces included.

    from tinylab.data import load_tokenizer
    tok = load_tokenizer(Path("outputs/runs/demo/data/tokenizer"))   # PreTrainedTokenizerFast
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from tinylab.config.data import TokenizerConfig
from tinylab.data.errors import DataError

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2 as in Llama-2
BYTE_TOKENS = tuple(f"<0x{i:02X}>" for i in range(256))
TOKENIZER_FILE = "tokenizer.json"


def train_tokenizer(texts: Iterable[str], *, vocab_size: int) -> Tokenizer:
    """Train a byte-fallback BPE with `vocab_size` entries (specials and bytes included)."""
    num_fixed = len(SPECIAL_TOKENS) + len(BYTE_TOKENS)
    if vocab_size <= num_fixed:
        raise DataError(f"tokenizer.vocab_size = {vocab_size}: must exceed {num_fixed}")
    draft = Tokenizer(models.BPE(unk_token="<unk>"))
    draft.pre_tokenizer = _pre_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(BYTE_TOKENS),
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
    )
    draft.train_from_iterator(texts, trainer=trainer)
    learned = json.loads(draft.to_str())["model"]
    if len(learned["vocab"]) <= len(SPECIAL_TOKENS):
        raise DataError("cannot train a tokenizer: the corpora hold no text")
    return _byte_fallback_bpe(learned["vocab"], learned["merges"])


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never"),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )


def _byte_fallback_bpe(learned: dict[str, int], merges: list) -> Tokenizer:
    """Rebuild the trained BPE with the byte tokens at ids 3..258, as Llama-2 lays them out."""
    vocab = {token: i for i, token in enumerate((*SPECIAL_TOKENS, *BYTE_TOKENS))}
    for token, _ in sorted(learned.items(), key=lambda item: item[1]):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in merges]
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = _pre_tokenizer()
    tok.decoder = decoders.Sequence(
        [decoders.Metaspace(replacement="▁", prepend_scheme="never"), decoders.ByteFallback()]
    )
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok


def save_trained(tok: Tokenizer, folder: Path) -> Path:
    """Save as a transformers folder (PreTrainedTokenizerFast) that AutoTokenizer loads."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token=SPECIAL_TOKENS[0],
        bos_token=SPECIAL_TOKENS[1],
        eos_token=SPECIAL_TOKENS[2],
        add_bos_token=False,
        add_eos_token=False,
    )
    fast.save_pretrained(str(folder))
    return folder


def fetch_pretrained(cfg: TokenizerConfig, folder: Path) -> Path:
    """Copy a hub or local tokenizer into `folder` through AutoTokenizer (fast tokenizer only)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(cfg.name_or_path)
    except (OSError, ValueError) as err:
        raise DataError(
            f"tokenizer.name_or_path = {cfg.name_or_path!r}: cannot load it with "
            f"transformers.AutoTokenizer ({err})"
        ) from None
    if not getattr(tok, "is_fast", False):
        raise DataError(f"tokenizer {cfg.name_or_path!r} has no fast (tokenizers) version")
    tok.save_pretrained(str(folder))
    return folder


def load_tokenizer(folder: Path):  # -> transformers.PreTrainedTokenizerBase
    """The saved tokenizer as transformers loads it (what training and evaluation use)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def load_fast(folder: Path) -> Tokenizer:
    """The raw `tokenizers.Tokenizer` of a saved folder (what packing uses: no Python overhead)."""
    path = Path(folder) / TOKENIZER_FILE
    if not path.is_file():
        raise DataError(f"{path}: missing; a tokenizer folder needs {TOKENIZER_FILE}")
    return Tokenizer.from_file(str(path))


def tokenizer_hash(folder: Path) -> str:
    """sha256 of the tokenizer's content (tokenizer.json); identifies it in the data index."""
    path = Path(folder) / TOKENIZER_FILE
    if not path.is_file():
        raise DataError(f"{path}: missing; a tokenizer folder needs {TOKENIZER_FILE}")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def special_ids(folder: Path) -> dict[str, int | None]:
    """ids of the BOS and EOS tokens a saved tokenizer declares in tokenizer_config.json (or
    special_tokens_map.json); None where it declares none. Read directly: no transformers import."""
    declared: dict = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = Path(folder) / name
        if path.is_file():
            declared |= {k: v for k, v in json.loads(path.read_text()).items() if v is not None}
    tok = load_fast(folder)
    ids: dict[str, int | None] = {}
    for key in ("bos", "eos"):
        token = declared.get(f"{key}_token")
        token = token.get("content") if isinstance(token, dict) else token
        ids[key] = tok.token_to_id(token) if isinstance(token, str) else None
    return ids
