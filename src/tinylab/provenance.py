"""Provenance: where an artifact came from (git commit, package versions, hardware, and the
library code that made it).

Every run folder records this in its manifest, so a figure can be traced to the code and the
machine that made it. `SourceTree` reads the tinylab package's imports with ast (nothing is
imported): the import rule of tests/test_layering.py and the code record of each pipeline step and
evaluation (a digest per library file the step runs, plus the versions of torch, transformers
and lm-eval where that code imports them) come from the same graph.

    SourceTree().record(notebook_imports(Path("notebooks/02_train_stage.ipynb")))
"""

from __future__ import annotations

import ast
import json
import os
import platform
import subprocess
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from tinylab.config.loader import PROJECT_ROOT, ConfigError
from tinylab.files import sha256_file

PACKAGES = (
    "tinylab", "torch", "transformers", "peft", "datasets", "tokenizers", "lm_eval",
    "papermill", "flash_attn", "liger_kernel", "numpy", "pydantic",
)  # fmt: skip
SOURCE_DIR = Path(__file__).resolve().parent.parent  # the folder that holds the tinylab package
# Packages whose version is part of a code record, for the code that imports them.
CODE_PACKAGES = ("torch", "transformers", "lm_eval")


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


# --------------------------------------------------------------------------------------------
# The library's code: imports and digests


def imports_in(source: str, *, package: str) -> set[str]:
    """Every module name `source` (code of a module of `package`) imports, at any depth of its
    code (inside functions too), relative imports resolved; `from a import b` names both `a` and
    `a.b`, since b may be a module (SourceTree keeps the names that are)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0]
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return found


def notebook_imports(path: Path) -> set[str]:
    """Every module the code cells of a notebook import (IPython magics and shell lines left out);
    a cell that is not Python is a ConfigError naming the notebook and cell."""
    cells = json.loads(Path(path).read_text(encoding="utf-8")).get("cells", [])
    found: set[str] = set()
    for number, cell in enumerate(cells, start=1):
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else source
        if cell.get("cell_type") != "code" or source.lstrip().startswith("%%"):
            continue
        lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
        try:
            found |= imports_in("\n".join(lines), package="")
        except SyntaxError as err:
            raise ConfigError(
                f"{path}: cell {number} is not Python ({err.msg}, line {err.lineno}); tinylab "
                "reads each notebook's imports to record the library code a step runs"
            ) from None
    return found


class SourceTree:
    """The tinylab package under `root` (the folder holding tinylab/): its modules, what each
    imports (parsed with ast on first use, never imported) and the code record of a set of
    modules. Imports made by name at run time (importlib, `python -m` in a subprocess) are not
    seen, except a package's `__main__`, which counts with the package (training launches
    `python -m tinylab.train` under torchrun)."""

    def __init__(self, root: Path = SOURCE_DIR):
        self.root = Path(root)
        self.files = {self._module(p): p for p in sorted((self.root / "tinylab").rglob("*.py"))}
        self._imports: dict[str, set[str]] = {}

    def _module(self, path: Path) -> str:
        parts = path.relative_to(self.root).with_suffix("").parts
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    def imports(self, module: str) -> set[str]:
        """The tinylab modules `module` imports, and the top-level names of other packages."""
        if module not in self._imports:
            path = self.files[module]
            package = module if path.name == "__init__.py" else module.rpartition(".")[0]
            names = imports_in(path.read_text(encoding="utf-8"), package=package)
            self._imports[module] = {n for n in names if n in self.files} | {
                n.partition(".")[0] for n in names if n.partition(".")[0] != "tinylab"
            }
        return self._imports[module]

    def edges(self) -> set[tuple[str, str]]:
        """Every (importer, imported) pair of tinylab modules."""
        return {(m, i) for m in self.files for i in self.imports(m) if i in self.files}

    def closure(self, modules: Iterable[str]) -> set[str]:
        """The tinylab modules among `modules` and all they import, transitively, with the
        packages each import runs (tinylab/__init__.py, ...) and the packages' __main__."""
        seen: set[str] = set()
        todo = [m for m in modules if m in self.files]
        while todo:
            module = todo.pop()
            if module in seen:
                continue
            seen.add(module)
            parts = module.split(".")
            parents = [".".join(parts[:i]) for i in range(1, len(parts))]
            todo += [*parents, *(i for i in self.imports(module) if i in self.files)]
            if f"{module}.__main__" in self.files:
                todo.append(f"{module}.__main__")
        return seen

    def record(self, modules: Iterable[str]) -> dict[str, Any]:
        """The code that `modules` run: sha256 (16 hex digits) of each library file in their
        closure, by path under root, and the versions of CODE_PACKAGES that this code imports."""
        closure = sorted(self.closure(modules))
        files = {
            self.files[m].relative_to(self.root).as_posix(): sha256_file(self.files[m])[:16]
            for m in closure
        }
        imported = {name for m in closure for name in self.imports(m) if name not in self.files}
        return {
            "files": dict(sorted(files.items())),
            "versions": package_versions(tuple(p for p in CODE_PACKAGES if p in imported)),
        }


def code_changes(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    """One line naming what differs between two code records (files, then versions)."""
    if not old:
        return "code not recorded (made before tinylab recorded it)"
    old_files, new_files = old.get("files", {}), new["files"]
    files = sorted(
        f for f in old_files.keys() | new_files.keys() if old_files.get(f) != new_files.get(f)
    )
    old_versions, new_versions = old.get("versions", {}), new["versions"]
    versions = [
        f"{name} {old_versions.get(name)} -> {new_versions.get(name)}"
        for name in sorted(old_versions.keys() | new_versions.keys())
        if old_versions.get(name) != new_versions.get(name)
    ]
    shown = files[:3] + ([f"{len(files) - 3} more files"] if len(files) > 3 else [])
    return "code changed: " + ", ".join(shown + versions) if shown or versions else "same code"
