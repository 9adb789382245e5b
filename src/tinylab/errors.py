"""The one base for errors that are the user's to fix.

A `UserError` (a bad params file, a missing run folder, a corrupt input) is reported by the CLI
and the pipeline as one line and exit code 2; every other exception is a bug, or a failure the
user did not cause, and keeps its traceback. Each layer subclasses it for its own kind of
mistake (`ConfigError` for params, `DataError` for corpora and shards, ...).

    tinylab params check params/stages/demo/base.yaml   # one line on a bad file; --debug: traceback
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user must fix; the message names the file, key or value and what to do."""
