"""The one error type of tinylab.evaluate for what the user must fix beyond a params file: a
folder without a model's weights, results that were never written, nothing to plot.

Params mistakes (an unknown task, a metric the task does not report) stay `ConfigError`.
"""

from __future__ import annotations

from tinylab.errors import UserError


class EvalError(UserError):
    """An evaluation input or result is missing or unusable; the message names it and what to do."""
