"""Tokenizers: load one (hub id or local folder, via transformers.AutoTokenizer), build one from
a GGUF file's vocabulary (the exact Llama-2 tokenizer, offline), or train a byte-fallback BPE on
the corpora (the `tokenizers` library), save it into the run's data folder and identify it by a
content hash.

The GGUF source reads the tokens, scores and types of a sentencepiece ("llama") vocabulary with
the `gguf` package and rebuilds it as a byte-fallback BPE whose merges rank pairs by the score of
the piece they make, with Llama-2's normaliser (a `▁` prepended, spaces as `▁`) and decoder. By
default it is Llama-2's own 32,000-token vocabulary, which ships without weights inside the
`llama-cpp-python==0.3.36` sdist (vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf, Meta's
Llama 2 licence), extracted once into the cache; tests/test_data_tokenizer.py checks it against
the test vectors beside it ("Hello world!" -> <s> 15043 3186 29991).

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
import tarfile
from collections.abc import Iterable
from pathlib import Path

from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from tinylab import release
from tinylab.cache import cache_root, pypi_sdist
from tinylab.config.data import TokenizerConfig
from tinylab.config.loader import project_path
from tinylab.data.errors import DataError
from tinylab.files import replace_dir_atomic

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2 as in Llama-2
BYTE_TOKENS = tuple(f"<0x{i:02X}>" for i in range(256))
TOKENIZER_FILE = "tokenizer.json"
# Llama-2's vocabulary (no weights) and its test vectors, inside an sdist on PyPI
LLAMA2_SDIST = ("llama-cpp-python", "0.3.36")
LLAMA2_GGUF = "vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf"
GGUF_NORMAL, GGUF_UNKNOWN, GGUF_CONTROL, GGUF_BYTE = 1, 2, 3, 6  # llama.cpp's token types


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


def llama2_gguf() -> Path:
    """Llama-2's vocabulary-only GGUF (with its .inp/.out test vectors), extracted once from the
    llama-cpp-python sdist into the cache's tokenizers/ folder."""
    folder = cache_root() / "tokenizers" / "llama2-spm-v1"
    target = folder / Path(LLAMA2_GGUF).name
    if target.is_file():
        return target
    with replace_dir_atomic(folder) as staging, tarfile.open(pypi_sdist(*LLAMA2_SDIST)) as tar:
        for member in tar.getmembers():
            if member.isfile() and Path(member.name).name.startswith(target.name):
                (staging / Path(member.name).name).write_bytes(tar.extractfile(member).read())
    return target


def gguf_vocabulary(path: Path) -> tuple[list[str], list[float], list[int], dict[str, int]]:
    """(tokens, scores, types, special ids) of a sentencepiece ("llama") GGUF vocabulary."""
    from gguf import GGUFReader

    try:
        fields = GGUFReader(path).fields
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read it as GGUF ({err})") from None
    model = fields.get("tokenizer.ggml.model")
    if model is None or model.contents() != "llama":
        found = None if model is None else model.contents()
        raise DataError(f"{path}: tokenizer.ggml.model = {found!r}; only 'llama' (SPM) is read")
    tokens, scores, types = (
        fields[f"tokenizer.ggml.{key}"].contents() for key in ("tokens", "scores", "token_type")
    )
    special = {
        key: int(fields[f"tokenizer.ggml.{key}_token_id"].contents())
        for key in ("unknown", "bos", "eos")
    }
    return tokens, [float(x) for x in scores], [int(t) for t in types], special


def gguf_tokenizer(path: Path) -> tuple[Tokenizer, dict[str, str]]:
    """A sentencepiece GGUF vocabulary as a byte-fallback BPE `Tokenizer` that encodes as
    sentencepiece does; returns it with the names of its unk/bos/eos tokens."""
    tokens, scores, types, special = gguf_vocabulary(path)
    vocab = {token: i for i, token in enumerate(tokens)}
    mergeable = {t for t, kind in zip(tokens, types, strict=True) if kind == GGUF_NORMAL}
    ranked = []  # a merge's rank is the score of the piece it makes (higher merges first)
    for piece in mergeable:
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in mergeable and right in mergeable:
                ranked.append((-scores[vocab[piece]], vocab[piece], vocab[left], (left, right)))
    merges = [pair for *_, pair in sorted(ranked)]
    unk, bos, eos = (tokens[special[k]] for k in ("unknown", "bos", "eos"))
    tok = Tokenizer(models.BPE(vocab, merges, unk_token=unk, byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
         decoders.Strip(" ", 1, 0)]
    )  # fmt: skip
    tok.add_special_tokens([t for t, kind in zip(tokens, types, strict=True) if kind in
                            (GGUF_UNKNOWN, GGUF_CONTROL)])  # fmt: skip
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, special["bos"])]
    )
    return tok, {"unk": unk, "bos": bos, "eos": eos}


def save_gguf(cfg: TokenizerConfig, folder: Path) -> Path:
    """The GGUF vocabulary of `cfg` (a local file, or by default Llama-2's) saved as a
    transformers folder: encode() adds <s> as Llama-2's tokenizer does; packing adds its own."""
    from transformers import PreTrainedTokenizerFast

    path = project_path(cfg.name_or_path) if cfg.name_or_path else llama2_gguf()
    if not path.is_file():
        raise DataError(f"tokenizer.name_or_path = {cfg.name_or_path!r}: no such GGUF file")
    tok, names = gguf_tokenizer(path)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token=names["unk"],
        bos_token=names["bos"],
        eos_token=names["eos"],
    )
    fast.save_pretrained(str(folder))
    return folder


def fetch_pretrained(cfg: TokenizerConfig, folder: Path) -> Path:
    """Copy a hub, local or release tokenizer into `folder` through AutoTokenizer (fast only)."""
    from transformers import AutoTokenizer

    source = cfg.name_or_path
    if cfg.kind == "release":
        source = release.local_folder(cfg.name_or_path, cfg.revision)
    try:
        tok = AutoTokenizer.from_pretrained(source)
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
