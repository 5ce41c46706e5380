"""Rows, statistics, the Markdown table and the JSON file."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else math.nan


def p99(xs: Sequence[float]) -> float:
    """Nearest-rank 99th percentile (with 50 samples: the largest)."""
    if not xs:
        return math.nan
    s = sorted(xs)
    return float(s[max(0, math.ceil(0.99 * len(s)) - 1)])


def ms(ns: float) -> float:
    return ns / 1e6


def fmt(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if unit == "ms":
        return f"{value:.3f} ms" if value < 1 else (f"{value:.2f} ms" if value < 100
                                                     else f"{value:.0f} ms")
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "MiB":
        return f"{value:.1f} MiB"
    if unit == "MiB/s":
        return f"{value:.0f} MiB/s"
    if unit == "":
        return f"{value:g}"
    return f"{value:g} {unit}"


@dataclasses.dataclass
class Row:
    id: str  # "P1"
    metric: str
    holdmount: str
    peer: str
    ratio: str
    goal: str
    passed: bool | None  # None: informational (no goal on this line)
    data: dict[str, Any] = dataclasses.field(default_factory=dict)  # raw numbers for JSON

    @property
    def result(self) -> str:
        return {True: "pass", False: "**fail**", None: "info"}[self.passed]


def ratio(a: float, b: float) -> str:
    if b == 0 or math.isnan(a) or math.isnan(b):
        return "—" if a != 0 or b != 0 else "0 / 0"
    return f"{a / b:.2f}x"


def table(rows: Sequence[Row]) -> str:
    head = "| # | metric | holdmount | peer | ratio | goal | result |\n" \
           "| --- | --- | --- | --- | --- | --- | --- |\n"
    return head + "".join(
        f"| {r.id} | {r.metric} | {r.holdmount} | {r.peer} | {r.ratio} | {r.goal} | "
        f"{r.result} |\n" for r in rows)


def machine() -> dict[str, Any]:
    return {"cores": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "load": os.getloadavg()}


def write_json(path: Path, rows: Sequence[Row], meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"meta": meta, "rows": [{**dataclasses.asdict(r), "result": r.result} for r in rows]}
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
