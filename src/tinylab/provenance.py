"""Provenance: where an artifact came from (git commit, package versions, hardware).

Every run folder records this in its manifest, so a figure can be traced to the code and the
machine that made it.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from tinylab.config.loader import PROJECT_ROOT

PACKAGES = (
    "tinylab", "torch", "transformers", "peft", "datasets", "tokenizers", "lm_eval",
    "papermill", "flash_attn", "liger_kernel", "numpy", "pydantic",
)  # fmt: skip


def git_state(root: Path = PROJECT_ROOT) -> dict[str, Any]:
    """The commit and whether the work tree has uncommitted changes (None outside git)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"sha": sha, "dirty": None if status is None else bool(status)}


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed versions of the packages that shape results (None when absent)."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def hardware() -> dict[str, Any]:
    """CPU, memory and accelerators of this machine."""
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }
    try:
        info["memory_gib"] = round(
            os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1
        )
    except (ValueError, OSError, AttributeError):
        info["memory_gib"] = None
    return info


def provenance() -> dict[str, Any]:
    """Everything above in one mapping."""
    return {"git": git_state(), "packages": package_versions(), "hardware": hardware()}
