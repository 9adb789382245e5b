"""How the report shows numbers and tables: counts with thousands separators (65,536), floats at
four significant digits with one number of decimals per column (0.65 and 0.10, not 0.65 and 0.1),
missing values as an en dash, and every row and column of a table (pandas cuts a table of more
than 60 rows to 10 behind "...", which a published report must not).

The report's table functions return plain DataFrames (tests and other code read their values);
only their display changes: `install()` makes the running IPython render every DataFrame with
`table_html`. Text that states a count uses `number`; a figure's tokens axis `count_tick`.

    formatting.install()  # in a notebook, before its tables
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Any

import pandas as pd

SIGNIFICANT = 4  # digits a float keeps: 5.4136 -> 5.414, 14398.8 -> 14,399
MAX_DECIMALS = 6  # smaller floats are shown as 1.234e-07
MISSING = "\u2013"  # en dash
NUMBER_CELL = re.compile(rf"<td>(-?[\d,]*\.?\d+(?:e[-+]\d+)?|{MISSING})</td>")


def number(value: Any, *, decimals: int | None = None) -> str:
    """One number for display: ints with thousands separators, floats at SIGNIFICANT digits
    (or `decimals` of them), None and NaN as MISSING; anything else as str()."""
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return MISSING
    if isinstance(value, bool | str) or not isinstance(value, numbers.Real):
        return str(value)
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}"
    value = float(value)
    if math.isinf(value):
        return str(value)
    if value != 0 and abs(value) < 10**-MAX_DECIMALS:
        return f"{value:.{SIGNIFICANT}g}"
    return f"{value:,.{_decimals(value) if decimals is None else decimals}f}"


def count_tick(value: float, _position: object = None) -> str:
    """A tick label of a count axis (matplotlib FuncFormatter): 200,000 below a million, then
    1.5M, 2B, 3T (no "1e12" offset above the axis)."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M")):
        if abs(value) >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:,.0f}"


def _decimals(value: float) -> int:
    """Decimals that show value at SIGNIFICANT digits, without trailing zeros (0.65 -> 2)."""
    if value == 0 or not math.isfinite(value):
        return 0
    text = f"{value:.{_significant_decimals(value)}f}"
    return len(text.rstrip("0").partition(".")[2])


def _significant_decimals(value: float) -> int:
    """Decimals that keep SIGNIFICANT digits of a nonzero value (at most MAX_DECIMALS)."""
    return min(MAX_DECIMALS, max(0, SIGNIFICANT - 1 - math.floor(math.log10(abs(value)))))


def column_text(column: pd.Series) -> pd.Series:
    """A column as display strings: a float column with one number of decimals (those its
    values need, but no more than SIGNIFICANT digits of its largest value give: -1.433, -0.096
    and 0.006, not -1.433033, -0.095553 and 0.005699), any other column value by value."""
    if pd.api.types.is_float_dtype(column) and not pd.api.types.is_bool_dtype(column):
        shown = [float(v) for v in column if pd.notna(v) and abs(v) >= 10**-MAX_DECIMALS]
        decimals = 0
        if shown:
            largest = max(shown, key=abs)
            decimals = min(max(map(_decimals, shown)), _significant_decimals(largest))
        return column.map(lambda v: number(v, decimals=decimals), na_action=None)
    return column.map(number, na_action=None)


def table_html(frame: pd.DataFrame) -> str:
    """A DataFrame as the report shows it: every row and column, numbers through column_text
    in cells of class "number", no index when it is only the row numbers; `data-rows` on the
    table says how many rows the data has (the browser test counts them in the page)."""
    text = pd.DataFrame({i: column_text(frame.iloc[:, i]) for i in range(frame.shape[1])})
    text.columns, text.index = frame.columns, frame.index
    plain_index = isinstance(frame.index, pd.RangeIndex) and frame.index.name is None
    with pd.option_context("display.max_colwidth", None):
        html = text.to_html(max_rows=None, max_cols=None, index=not plain_index, notebook=True)
    html = NUMBER_CELL.sub(r'<td class="number">\1</td>', html)  # right-aligned by the template
    return html.replace("<table ", f'<table data-rows="{len(frame)}" ', 1)


def install() -> None:
    """Render every DataFrame that the running IPython displays with table_html (no-op outside
    IPython)."""
    from IPython import get_ipython

    shell = get_ipython()
    if shell is not None:
        shell.display_formatter.formatters["text/html"].for_type(pd.DataFrame, table_html)
