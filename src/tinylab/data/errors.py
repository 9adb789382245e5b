"""The one error type of tinylab.data: bad input data, as opposed to a bad params file.

`DataError` subclasses ValueError (like `tinylab.config.ConfigError`), so the CLI and notebooks
can report both the same way; its message names the file, source, key or value at fault.
"""

from __future__ import annotations


class DataError(ValueError):
    """Input data or prepared files are unusable; the message says which and why."""
