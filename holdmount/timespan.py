"""systemd time spans ("5min", "1h 30s", "2.5s", "500ms"), as in systemd.time(7).

Read by hand, not with `re`: the daemon's start path reads spans from its configuration and `re`
(with its compiler) is a cost the daemon otherwise does not pay."""

from __future__ import annotations

import math

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:  # annotations only
    from collections.abc import Callable

_UNITS = {
    "usec": 1e-6, "us": 1e-6, "µs": 1e-6,
    "msec": 1e-3, "ms": 1e-3,
    "seconds": 1.0, "second": 1.0, "sec": 1.0, "s": 1.0, "": 1.0,
    "minutes": 60.0, "minute": 60.0, "min": 60.0, "m": 60.0,
    "hours": 3600.0, "hour": 3600.0, "hr": 3600.0, "h": 3600.0,
    "days": 86400.0, "day": 86400.0, "d": 86400.0,
    "weeks": 604800.0, "week": 604800.0, "w": 604800.0,
    "months": 2629800.0, "month": 2629800.0, "M": 2629800.0,
    "years": 31557600.0, "year": 31557600.0, "y": 31557600.0,
}
_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZµ")


def _skip(s: str, pos: int, keep: Callable[[str], bool]) -> int:
    while pos < len(s) and keep(s[pos]):
        pos += 1
    return pos


def _part(s: str, pos: int) -> tuple[str, str, int] | None:
    """One `NUMBER [UNIT]` from `pos` (blanks before and between allowed): (number, unit, end),
    or None when no number starts there. NUMBER is digits with an optional `.digits`."""
    start = _skip(s, pos, str.isspace)
    end = _skip(s, start, str.isdecimal)
    if end == start:
        return None
    if end + 1 < len(s) and s[end] == "." and s[end + 1].isdecimal():
        end = _skip(s, end + 1, str.isdecimal)
    unit_start = _skip(s, end, str.isspace)
    unit_end = _skip(s, unit_start, _LETTERS.__contains__)
    return s[start:end], s[unit_start:unit_end], unit_end


def parse_timespan(text: str) -> float:
    """Seconds in `text`; "infinity" is math.inf. Raises ValueError naming the bad part."""
    s = text.strip()
    if s == "infinity":
        return math.inf
    if not s:
        raise ValueError("empty time span")
    total = 0.0
    pos = 0
    while pos < len(s):
        part = _part(s, pos)
        if part is None:
            raise ValueError(f"invalid time span {text!r}")
        number, unit, pos = part
        if unit not in _UNITS:
            raise ValueError(f"invalid time span {text!r}: unknown unit {unit!r}")
        total += float(number) * _UNITS[unit]
        while pos < len(s) and s[pos] == " ":
            pos += 1
    return total
