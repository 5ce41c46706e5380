"""systemd time spans ("5min", "1h 30s", "2.5s", "500ms"), as in systemd.time(7)."""

from __future__ import annotations

import math
import re

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
_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Zµ]*)")


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
        m = _PART.match(s, pos)
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
