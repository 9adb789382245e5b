"""Run untrusted Python (model-written HumanEval completions) in a contained child process.

Every program runs in a fresh process with a wall-clock timeout, rlimits (CPU seconds, address
space, file size, process count), an empty temporary working directory, a scrubbed environment
and `python -I` (no site dirs, no PYTHON* variables); the whole process group is killed at the
end. A program passes only when it ran to its last line: a small runner executes `program.py`
and then writes a per-run random nonce (128 bits) to stdout; the nonce reaches the runner through
a pipe that it empties before the program starts, so it is in nothing the program can read (its
source, argv, environment, files, stdin), and exiting early with status 0 (`exit()`,
`os._exit(0)`, an atexit or excepthook hook) fails. Only code that searches the interpreter's
own frames could find it; model-written code that does that is out of scope.

What else is enforced depends on the machine, and every result says which mode ran:

- `isolated` (root): new network, PID and mount namespaces (`unshare`): no network, no view of
  or signal to the caller's processes, everything dies with the namespace; and the program runs
  under a uid of its own (`SANDBOX_UIDS`, one per concurrent program, leased with a file lock
  so threads and processes never share one): it cannot read, write or delete the caller's
  files, and RLIMIT_NPROC, which counts processes per uid, holds per program, so a fork bomb
  cannot starve the programs beside it. (A uid per program rather than a pids cgroup: it needs
  nothing but the root this mode already needs, while cgroup files are often read-only in
  containers and differ between cgroup v1 and v2.) The project's interpreter prefix is bound
  read-only into the namespace at its own path, so programs run on the project's Python even
  when its folder is closed to other users (e.g. under /root).
- `userns` (unprivileged user namespaces work): network and PID namespaces; same uid, so the
  caller's files are NOT protected and concurrent programs share one process limit.
- `plain` (neither): rlimits, timeout and the process group only; network, the caller's files
  and processes are NOT protected.

The trade-off: namespaces and a dropped uid make it a real sandbox without containers or extra
packages, but only where the kernel lets us; elsewhere it is a best-effort guard, said so here
and in every result (`SandboxResult.mode`). Run the hostile-program tests with
`pytest tests/test_evaluate_sandbox.py -v`.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import platform
import pwd
import resource
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
# Debian reserves 65000-65533 and allocates none of them; a uid found in the passwd database
# is skipped all the same. One uid per program running at once (more wait for a free one).
SANDBOX_UIDS = range(65280, 65280 + 128)
_LEASES = Path(tempfile.gettempdir()) / "tinylab-sandbox-uids"


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandboxed program."""

    timeout_s: float = 3.0  # wall clock (docs/PAPER.md: 3 s per HumanEval problem)
    cpu_s: int = 10
    memory_bytes: int = 2 * 1024**3  # address space
    file_bytes: int = 16 * 1024**2  # largest file the program may write
    num_processes: int = 32  # per program (isolated); beyond the user's own (other modes)


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one program: `passed` only when it ran to its last line (the runner's nonce is
    in its stdout) and exited 0 within the time limit."""

    status: str  # "passed" | "failed" | "timeout"
    returncode: int | None
    stdout: str  # the program's own output (the nonce removed)
    stderr: str
    mode: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict:
        return asdict(self)


# The interpreter itself, not a virtual environment's link to it: programs run with -I (stdlib
# only), and a venv under /tmp would vanish under the sandbox's private /tmp.
PYTHON = os.path.realpath(sys.executable)
PYTHON_PREFIX = os.path.realpath(sys.base_prefix)
INTERPRETER = f"{PYTHON} (Python {platform.python_version()})"

# Runs program.py as __main__, then proves it got there: the nonce, read from stdin (a pipe the
# caller filled and closed) before the program starts, with /dev/null as stdin from then on.
_RUNNER = """import os, runpy, sys
def _run():
    nonce = os.read(0, 64)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.argv = ["program.py"]
    runpy.run_path(os.path.abspath("program.py"), run_name="__main__")
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    os.write(1, b"\\n" + nonce + b"\\n")
_run()
"""


@functools.cache
def sandbox_mode() -> str:
    """The strongest isolation this machine allows: isolated, userns or plain."""
    if os.geteuid() == 0 and shutil.which("unshare") and shutil.which("setpriv"):
        with tempfile.TemporaryDirectory() as folder, _leased_uid() as uid:
            Path(folder, "program.py").write_text("pass\n")
            if _runs(_isolated_command(folder, uid), cwd=folder):
                return "isolated"
    probe = [sys.executable, "-I", "-c", "pass"]
    if shutil.which("unshare") and _runs([*_userns_prefix(), *probe]):
        return "userns"
    return "plain"


def _runs(command: list[str], cwd: str | None = None) -> bool:
    try:
        result = subprocess.run(
            command, cwd=cwd, capture_output=True, timeout=20, check=False, input=b"x"
        )
        return result.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _namespace_flags() -> list[str]:
    return ["--net", "--pid", "--fork", "--kill-child", "--mount-proc"]


# Runs as root inside the new namespaces: private empty tmpfs over every world-writable folder
# (so the program's uid can write nowhere but its own working directory, which moves onto the
# fresh /tmp), the interpreter's prefix bound read-only at its own path (through an open
# descriptor, since the tmpfs may hide it; a tmpfs over the first folder on the way that others
# cannot enter makes the path reachable), then runs the program under its uid. The shell stays
# as PID 1 of the namespace (owned by root, so the program cannot signal its parent) and exits
# with the program's status.
_ISOLATE = """set -e
workdir=$1 python=$2 runner=$3 prefix=$4 closed=$5 uid=$6
exec 3<program.py 4<"$prefix"
for d in /tmp /var/tmp /dev/shm /run/lock; do
  if [ -d "$d" ]; then mount -t tmpfs -o size=64m,mode=1777 tmpfs "$d"; fi
done
if [ -n "$closed" ]; then mount -t tmpfs -o size=1m,mode=755 tmpfs "$closed"; fi
mkdir -p "$prefix" && mount --no-canonicalize --bind -o ro /proc/self/fd/4 "$prefix"
exec 4<&-
mkdir -p "$workdir" && cd "$workdir" && cat <&3 >program.py && exec 3<&-
chown -R "$uid:$uid" "$workdir"
unset OLDPWD PWD
setpriv --reuid="$uid" --regid="$uid" --clear-groups -- "$python" -I -B -c "$runner"
"""


def _isolated_command(workdir: str, uid: int) -> list[str]:
    args = [workdir, PYTHON, _RUNNER, PYTHON_PREFIX, _closed_ancestor(PYTHON_PREFIX), str(uid)]
    return ["unshare", *_namespace_flags(), "/bin/sh", "-c", _ISOLATE, "sandbox", *args]


@functools.cache
def _closed_ancestor(path: str) -> str:
    """The outermost folder above `path` that other users cannot enter ('' if none)."""
    for parent in reversed(Path(path).parents):
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            return str(parent)
    return ""


def _userns_prefix() -> list[str]:
    return ["unshare", "--user", "--map-root-user", *_namespace_flags()]


@functools.cache
def _unused_uids() -> tuple[int, ...]:
    def unused(uid: int) -> bool:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return True
        return False

    return tuple(uid for uid in SANDBOX_UIDS if unused(uid))


@contextlib.contextmanager
def _leased_uid() -> Iterator[int]:
    """A uid no other sandboxed program on this machine runs under now (an exclusive flock per
    uid, held while the program runs; the kernel drops it if we die)."""
    _LEASES.mkdir(mode=0o700, exist_ok=True)
    if _LEASES.stat().st_uid != os.geteuid():
        raise PermissionError(f"{_LEASES}: not owned by this user; remove it")
    while True:
        for uid in _unused_uids():
            fd = os.open(_LEASES / str(uid), os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                yield uid
            finally:
                os.close(fd)
            return
        time.sleep(0.05)


def _count_user_processes(uid: int) -> int:
    count = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        uid_line = next((line for line in text.splitlines() if line.startswith("Uid:")), "")
        if uid_line.split()[1:2] == [str(uid)]:
            count += 1
    return count


def _set_limits(limits: Limits, num_processes: int) -> None:
    """Runs in the child between fork and exec."""
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s))
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
    resource.setrlimit(resource.RLIMIT_NPROC, (num_processes, num_processes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_program(program: str, *, limits: Limits | None = None) -> SandboxResult:
    """Run Python source in the sandbox; the result says passed, failed or timeout."""
    limits = limits or Limits()
    mode = sandbox_mode()
    workdir = Path(tempfile.mkdtemp(prefix="tinylab-sandbox-"))
    try:
        (workdir / "program.py").write_text(program, encoding="utf-8")
        if mode == "isolated":
            with _leased_uid() as uid:
                command = _isolated_command(str(workdir), uid)
                return _execute(command, workdir, limits, limits.num_processes, mode)
        prefix = _userns_prefix() if mode == "userns" else []
        command = [*prefix, sys.executable, "-I", "-B", "-c", _RUNNER]
        num_processes = _count_user_processes(os.getuid()) + limits.num_processes
        return _execute(command, workdir, limits, num_processes, mode)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _scrubbed_env(workdir: Path) -> dict[str, str]:
    return {"PATH": SAFE_PATH, "HOME": str(workdir), "TMPDIR": str(workdir), "LANG": "C.UTF-8"}


def _nonce_pipe(nonce: bytes) -> int:
    """The read end of a pipe that holds the nonce and is closed for writing."""
    read_end, write_end = os.pipe()
    os.write(write_end, nonce)
    os.close(write_end)
    return read_end


def _execute(
    command: list[str], workdir: Path, limits: Limits, num_processes: int, mode: str
) -> SandboxResult:
    nonce = secrets.token_hex(16).encode()
    stdin = _nonce_pipe(nonce)
    # Output goes to files, not pipes: a stray grandchild holding a pipe open cannot hang us.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(
                command,
                cwd=workdir,
                env=_scrubbed_env(workdir),
                stdin=stdin,
                stdout=out,
                stderr=err,
                start_new_session=True,  # its own process group, killed whole below
                preexec_fn=functools.partial(_set_limits, limits, num_processes),
            )
        finally:
            os.close(stdin)
        try:
            proc.wait(timeout=limits.timeout_s)
            status = "passed" if proc.returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            status = "timeout"
        finally:
            _kill_group(proc.pid)
            proc.wait()
        stdout, proved = _strip_nonce(out, nonce)
        if status == "passed" and not proved:
            status = "failed"  # exited 0 before its last line
        return SandboxResult(
            status=status,
            returncode=proc.returncode,
            stdout=stdout,
            stderr=_tail(err),
            mode=mode,
        )


def _strip_nonce(file, nonce: bytes, limit: int = 4000) -> tuple[str, bool]:
    """The program's stdout (its last `limit` characters) without the nonce line, and whether
    the nonce was there."""
    file.seek(0)
    data = file.read()
    marker = b"\n" + nonce + b"\n"
    proved = marker in data
    text = data.replace(marker, b"", 1).decode("utf-8", "replace")
    return text[-limit:], proved


def _tail(file, limit: int = 4000) -> str:
    file.seek(0)
    return file.read().decode("utf-8", "replace")[-limit:]


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
