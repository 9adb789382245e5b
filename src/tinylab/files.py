"""Small file helpers for every module: atomic writes (temporary file, fsync, rename) and
checksums, so an interrupted write never leaves a torn file behind."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def write_atomic(path: Path, data: bytes) -> None:
    """Write bytes to a temporary file beside `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj: Any, *, indent: int = 1) -> None:
    """JSON (indented, UTF-8; values JSON lacks written as strings) written atomically."""
    text = json.dumps(obj, indent=indent, ensure_ascii=False, default=str) + "\n"
    write_atomic(path, text.encode("utf-8"))


def sha256_file(path: Path) -> str:
    """sha256 hex digest of a file, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as data:
        for block in iter(lambda: data.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
