"""systemd time-span parsing (systemd.time(7))."""

from __future__ import annotations

import math
from collections.abc import Callable

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


def _regex_timespan(text: str) -> float:
    """The parser as it was written with `re` (the reference the hand-written one must match)."""
    import re

    from holdmount.timespan import _UNITS

    s = text.strip()
    if s == "infinity":
        return math.inf
    if not s:
        raise ValueError("empty time span")
    total, pos = 0.0, 0
    while pos < len(s):
        m = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Zµ]*)").match(s, pos)
        if not m or m.end() == pos:
            raise ValueError(f"invalid time span {text!r}")
        number, unit = m.groups()
        if unit not in _UNITS:
            raise ValueError(f"invalid time span {text!r}: unknown unit {unit!r}")
        total += float(number) * _UNITS[unit]
        pos = m.end()
        while pos < len(s) and s[pos] == " ":
            pos += 1
    return total


def _outcome(parse: Callable[[str], float], text: str) -> float | str:
    try:
        return parse(text)
    except ValueError as e:
        return f"ValueError: {e}"


# Texts made of the characters the grammar cares about (digits of any script, blanks of any
# kind, unit letters, dots), so that most examples get deep into the parse, plus any text.
_SPAN_CHARS = st.sampled_from(list("0123456789٣.  \t\u2003\nsmhdwyMuµecinotaurk-x"))


@given(st.one_of(st.text(_SPAN_CHARS, max_size=24), st.text(max_size=24)))
def test_same_answers_as_the_regex_parser(text: str) -> None:
    assert _outcome(parse_timespan, text) == _outcome(_regex_timespan, text)


@pytest.mark.parametrize("text", ["1.", "1. 5s", "1 .5s", "٣s", "2\u2003min", " 5 min 3 s ",
                                  "5minutes3", "1.5.s", "µs", "3µs", "1 2"])
def test_edge_cases_like_the_regex_parser(text: str) -> None:
    assert _outcome(parse_timespan, text) == _outcome(_regex_timespan, text)
