"""Small file helpers for every module: atomic writes of files and folders (a staging copy
beside the target, then a rename), checksums and digests, so an interrupted write never leaves a
torn file behind."""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tinylab.errors import UserError


def write_atomic(path: Path, data: bytes) -> None:
    """Write bytes to a temporary file beside `path`, then rename it into place. A failed write
    (a full disk) removes the temporary file and raises an OSError naming `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if err.filename is not None:
            raise
        raise OSError(err.errno, err.strerror, str(path)) from err


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


def json_digest(obj: Any) -> str:
    """sha256 hex digest of a JSON-serialisable object, stable across runs and key orders
    (values JSON lacks are written as strings)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@contextlib.contextmanager
def replace_dir_atomic(folder: Path) -> Iterator[Path]:
    """Yield an empty staging folder beside `folder`; when the block ends normally the staging
    folder replaces `folder` whole, and when it raises the staging folder is removed and `folder`
    is left as it was. Staging folders of processes that are gone are removed on entry."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(folder.parent, folder.name)
    staging = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        if folder.exists():
            os.replace(folder, old)
        os.replace(staging, folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def remove_orphans(folder: Path, name: str = "*") -> None:
    """Delete the `.NAME.tmp-PID` / `.NAME.old-PID` files and folders in `folder` (every NAME by
    default) whose process no longer runs: what `write_atomic` and `replace_dir_atomic` leave
    when killed. An old copy whose replacement never arrived (killed between the two renames of
    `replace_dir_atomic`) is put back."""
    for path in sorted(folder.glob(f".{name}.*-*")):
        kind, _, pid = path.name.rpartition("-")
        if not (kind.endswith((".tmp", ".old")) and pid.isdigit()) or _alive(int(pid)):
            continue
        target = folder / kind[1:].rpartition(".")[0]
        if kind.endswith(".old") and not target.exists():
            os.replace(path, target)
        elif path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LockHeld(UserError):
    """Another process holds an exclusive lock (`hold_lock`); the message says who."""


@contextlib.contextmanager
def hold_lock(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive `fcntl.flock` on `path` for the block, or raise LockHeld at once naming
    the holder (pid, host, since, command) that `path` records. The kernel drops the lock when
    its process dies, so a lock left by a killed process is simply taken over; the record in the
    file is only for the message. `what` names the locked thing in messages."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("a+")
    except OSError as err:
        raise UserError(
            f"cannot write to {path.parent} ({err.strerror}): {what} needs it; make it writable "
            "or use another folder"
        ) from err
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if not isinstance(err, BlockingIOError):  # e.g. ENOLCK: a file system without locks
                raise UserError(f"cannot lock {path} ({err.strerror}): {what} needs it") from err
            handle.seek(0)
            raise LockHeld(f"{what} is in use: {_holder(handle.read())}; wait for it to end or "
                           f"stop that process (lock file {path})") from None  # fmt: skip
        handle.seek(0)
        handle.truncate()
        since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": since,
                  "command": sys.argv}  # fmt: skip
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        yield  # closing the file releases the lock


def _holder(text: str) -> str:
    """The lock record as words for a message."""
    try:
        record = json.loads(text)
        command = " ".join(record["command"])
        return f"pid {record['pid']} on {record['host']} since {record['since']} ({command})"
    except (ValueError, KeyError, TypeError):
        return "a process that has not recorded itself yet"
