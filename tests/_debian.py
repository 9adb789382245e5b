"""Debian packages that a test needs (SLURM, chromium), installed with apt-get when missing: the
test skips with the reason where that cannot be done (not root, no apt-get, no registry). The
test workers (pytest-xdist) take turns: apt-get holds dpkg's lock while it installs."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess

import pytest


def apt_install(packages: list[str], what: str) -> None:
    """Install `packages` (for `what`, named in a skip) with apt-get, without recommends."""
    if os.geteuid() != 0:
        pytest.skip(f"{what} is not installed and installing it needs root")
    if shutil.which("apt-get") is None:
        pytest.skip(f"{what} is not installed and apt-get is not available to install it")
    with open("/tmp/tinylab-tests-apt.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        _apt_get(packages)


def _apt_get(packages: list[str]) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    update = subprocess.run(["apt-get", "update"], capture_output=True, text=True, env=env)
    if update.returncode != 0:
        pytest.skip(f"apt-get update failed (no package registry?): {update.stderr[-500:]}")
    install = subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", *packages],
        capture_output=True,
        text=True,
        env=env,
    )
    assert install.returncode == 0, f"apt-get install {' '.join(packages)}:\n{install.stderr}"
