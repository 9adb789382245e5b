"""`tinylab ARGS` in this process, as the console script runs it, for tests that patch the library
(monkeypatch) and read its exit code."""

from __future__ import annotations

import sys

import pytest

from tinylab import cli


def tinylab(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    """Run `tinylab ARGS` as the console script does; its exit code."""
    monkeypatch.setattr(sys, "argv", ["tinylab", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.run()
    return exit_info.value.code or 0
