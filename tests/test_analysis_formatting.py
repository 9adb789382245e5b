"""tinylab.analysis.formatting: numbers with thousands separators and sensible rounding, and
tables shown whole (pandas cuts more than 60 rows to 10 behind "...")."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config

from tinylab.analysis.formatting import (
    MISSING,
    column_text,
    count_tick,
    install,
    number,
    table_html,
)


def test_counts_get_thousands_separators_and_floats_four_significant_digits() -> None:
    assert [number(v) for v in (65536, np.int64(1_787_008), 256, -12000)] == [
        "65,536", "1,787,008", "256", "-12,000"
    ]  # fmt: skip
    assert [number(v) for v in (5.4136, 14398.8, 0.65, 2.049, 4e-5, 0.0, 3e12)] == [
        "5.414", "14,399", "0.65", "2.049", "0.00004", "0", "3,000,000,000,000"
    ]  # fmt: skip
    assert number(1.2345e-9) == "1.235e-09" and number(12.3456, decimals=1) == "12.3"
    assert [number(v) for v in (None, float("nan"), pd.NA, pd.NaT)] == [MISSING] * 4
    assert [number(v) for v in (True, "4096", [1, 2])] == ["True", "4096", "[1, 2]"]


def test_count_ticks_separate_thousands_and_shorten_millions() -> None:
    assert [count_tick(v) for v in (0, 200_000, 1.5e6, 2e9, 3e12)] == [
        "0", "200,000", "1.5M", "2B", "3T"
    ]  # fmt: skip


def test_a_float_column_has_one_number_of_decimals() -> None:
    scores = column_text(pd.Series([0.65, 0.1, 0.0, np.nan]))
    assert scores.tolist() == ["0.65", "0.10", "0.00", MISSING]
    tokens = column_text(pd.Series([65536.0, np.nan, 1024.0]))  # ints made floats by a gap
    assert tokens.tolist() == ["65,536", MISSING, "1,024"]
    changes = column_text(pd.Series([-1.433033, -0.095553, 0.005699, 0.0]))
    assert changes.tolist() == ["-1.433", "-0.096", "0.006", "0.000"]  # digits of the largest
    rates = column_text(pd.Series([0.003, 0.0003, 4e-5]))
    assert rates.tolist() == ["0.00300", "0.00030", "0.00004"]
    mixed = column_text(pd.Series([1787008, 2.049, None, "fp32"], dtype=object))
    assert mixed.tolist() == ["1,787,008", "2.049", MISSING, "fp32"]


def _body_rows(html: str) -> int:
    return html.split("<tbody>")[1].count("<tr")


def test_a_long_table_is_shown_whole() -> None:
    frame = pd.DataFrame({"setting": [f"s{i}" for i in range(70)], "why": ["x" * 300] * 70})
    html = table_html(frame)
    assert _body_rows(html) == 70 and 'data-rows="70"' in html
    assert "..." not in html and "x" * 300 in html  # no row, column or text cut
    assert "<th>0</th>" not in html  # row numbers are no information: no index
    named = table_html(frame.set_index("setting"))
    assert "<th>s69</th>" in named and _body_rows(named) == 70


def test_number_cells_are_marked_for_right_alignment() -> None:
    html = table_html(pd.DataFrame({"fact": ["seq_len", "2048"], "run": [256.0, None]}))
    assert "<td>seq_len</td>" in html and '<td class="number">2048</td>' in html
    assert '<td class="number">256</td>' in html and f'<td class="number">{MISSING}</td>' in html


def test_an_empty_table_says_it_has_no_rows() -> None:
    assert 'data-rows="0"' in table_html(pd.DataFrame())


@pytest.fixture
def shell():
    config = Config()
    config.HistoryManager.enabled = False  # no history database left behind
    yield InteractiveShell.instance(config=config)
    InteractiveShell.clear_instance()


def test_install_makes_ipython_show_every_dataframe_whole(shell) -> None:
    frame = pd.DataFrame({"tokens": range(0, 70_000, 1000)})
    before = shell.display_formatter.format(frame)[0]["text/html"]
    assert _body_rows(before) < 70  # what pandas shows by itself
    install()
    shown = shell.display_formatter.format(frame)[0]["text/html"]
    assert shown == table_html(frame) and _body_rows(shown) == 70
    assert '<td class="number">69,000</td>' in shown
