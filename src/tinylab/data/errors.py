"""The one error type of tinylab.data: bad input data, as opposed to a bad params file.

`DataError` is a `tinylab.errors.UserError` (like `tinylab.config.ConfigError`), so the CLI
reports both as one line and exit code 2; its message names the file, source, key or value at
fault.
"""

from __future__ import annotations

from tinylab.errors import UserError


class DataError(UserError):
    """Input data or prepared files are unusable; the message says which and why."""
