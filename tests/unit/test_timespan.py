"""systemd time-span parsing (systemd.time(7))."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from holdmount.timespan import parse_timespan


@pytest.mark.parametrize(("text", "seconds"), [
    ("5min", 300), ("1h 30s", 3630), ("2.5s", 2.5), ("500ms", 0.5), ("90", 90),
    ("1d2h", 93600), ("infinity", math.inf), ("3 min 4 sec", 184), ("1w", 604800),
])
def test_spans(text: str, seconds: float) -> None:
    assert parse_timespan(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "5 parsecs", "-1s", "1.2.3s", "s"])
def test_bad_spans_raise_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        parse_timespan(text)


@given(st.text(max_size=40))
def test_never_anything_but_value_error(text: str) -> None:
    try:
        assert parse_timespan(text) >= 0
    except ValueError:
        pass
