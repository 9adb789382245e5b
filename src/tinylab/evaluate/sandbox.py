"""Run untrusted Python (model-written HumanEval completions) in a contained child process.

Every program runs in a fresh process with a wall-clock timeout, rlimits (CPU seconds, address
space, file size, process count), an empty temporary working directory, a scrubbed environment
and `python -I` (no site dirs, no PYTHON* variables); the whole process group is killed at the
end. What else is enforced depends on the machine, and every result says which mode ran:

- `isolated` (root): new network, PID and mount namespaces (`unshare`): no network, no view of
  or signal to the caller's processes, everything dies with the namespace; and the program runs
  as `nobody`: it cannot read, write or delete the caller's files, and RLIMIT_NPROC holds.
- `userns` (unprivileged user namespaces work): network and PID namespaces; same uid, so the
  caller's files are NOT protected.
- `plain` (neither): rlimits, timeout and the process group only; network, the caller's files
  and processes are NOT protected.

The trade-off: namespaces and a dropped uid make it a real sandbox without containers or extra
packages, but only where the kernel lets us; elsewhere it is a best-effort guard, said so here
and in every result (`SandboxResult.mode`). Run the hostile-program tests with
`pytest tests/test_evaluate_sandbox.py -v`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

NOBODY = 65534
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandboxed program."""

    timeout_s: float = 3.0  # wall clock (docs/PAPER.md: 3 s per HumanEval problem)
    cpu_s: int = 10
    memory_bytes: int = 2 * 1024**3  # address space
    file_bytes: int = 16 * 1024**2  # largest file the program may write
    num_processes: int = 32  # beyond those the user already runs (plain/userns modes)


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one program: `passed` only when it exited 0 within the time limit."""

    status: str  # "passed" | "failed" | "timeout"
    returncode: int | None
    stdout: str
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


@functools.cache
def sandbox_mode() -> str:
    """The strongest isolation this machine allows: isolated, userns or plain."""
    if os.geteuid() == 0 and shutil.which("unshare") and shutil.which("setpriv"):
        with tempfile.TemporaryDirectory() as folder:
            Path(folder, "program.py").write_text("pass\n")
            command = [*_isolated_prefix(), folder, PYTHON]
            if _runs(command, cwd=folder):
                return "isolated"
    probe = [sys.executable, "-I", "-c", "pass"]
    if shutil.which("unshare") and _runs([*_userns_prefix(), *probe]):
        return "userns"
    return "plain"


def _runs(command: list[str], cwd: str | None = None) -> bool:
    try:
        result = subprocess.run(command, cwd=cwd, capture_output=True, timeout=20, check=False)
        return result.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _namespace_flags() -> list[str]:
    return ["--net", "--pid", "--fork", "--kill-child", "--mount-proc"]


# Runs as root inside the new namespaces: private empty tmpfs over every world-writable folder
# (so `nobody` can write nowhere but its own working directory, which moves onto the fresh
# /tmp), then runs the program as nobody. The shell stays as PID 1 of the namespace (owned by
# root, so the program cannot signal its parent) and exits with the program's status.
# $1 = working directory, $2 = python.
_ISOLATE = f"""set -e
exec 3<program.py
for d in /tmp /var/tmp /dev/shm /run/lock; do
  if [ -d "$d" ]; then mount -t tmpfs -o size=64m,mode=1777 tmpfs "$d"; fi
done
mkdir -p "$1" && cd "$1" && cat <&3 >program.py && exec 3<&-
chown -R {NOBODY}:{NOBODY} "$1"
unset OLDPWD PWD
setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups -- "$2" -I -B program.py
"""


def _isolated_prefix() -> list[str]:
    return ["unshare", *_namespace_flags(), "/bin/sh", "-c", _ISOLATE, "sandbox"]


def _userns_prefix() -> list[str]:
    return ["unshare", "--user", "--map-root-user", *_namespace_flags()]


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
            command = [*_isolated_prefix(), str(workdir), PYTHON]
            num_processes = limits.num_processes
        else:
            prefix = _userns_prefix() if mode == "userns" else []
            command = [*prefix, sys.executable, "-I", "-B", "program.py"]
            num_processes = _count_user_processes(os.getuid()) + limits.num_processes
        return _execute(command, workdir, limits, num_processes, mode)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _scrubbed_env(workdir: Path) -> dict[str, str]:
    return {"PATH": SAFE_PATH, "HOME": str(workdir), "TMPDIR": str(workdir), "LANG": "C.UTF-8"}


def _execute(
    command: list[str], workdir: Path, limits: Limits, num_processes: int, mode: str
) -> SandboxResult:
    # Output goes to files, not pipes: a stray grandchild holding a pipe open cannot hang us.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            command,
            cwd=workdir,
            env=_scrubbed_env(workdir),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,  # its own process group, killed whole below
            preexec_fn=functools.partial(_set_limits, limits, num_processes),
        )
        try:
            proc.wait(timeout=limits.timeout_s)
            status = "passed" if proc.returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            status = "timeout"
        finally:
            _kill_group(proc.pid)
            proc.wait()
        return SandboxResult(
            status=status,
            returncode=proc.returncode,
            stdout=_tail(out),
            stderr=_tail(err),
            mode=mode,
        )


def _tail(file, limit: int = 4000) -> str:
    file.seek(0)
    return file.read().decode("utf-8", "replace")[-limit:]


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
