"""The daemon's state as others see it: the bounded STATUS= line and pieces of the `status`
reply (docs/json.md; `holdmount status` renders the reply)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from holdmount.config import MarkerConfig
from holdmount.held import HeldPath
from holdmount.marker import MarkerWatch

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:  # annotations only
    from typing import Any

SUMMARY_PATHS = 3  # paths named in STATUS= per list
SUMMARY_PATH_LEN = 200  # characters of each


def summary(holds: Sequence[HeldPath], delegated: int, clients: int,
            marker: MarkerWatch | None) -> str:
    """One bounded line for STATUS=: at most SUMMARY_PATHS paths per list (`holdmount
    status` lists them all); systemd ignores a notify message of 4096 bytes or more."""
    held = [h.path for h in holds if h.hold is not None]
    failed = [h.path for h in holds if h.error is not None]
    parts = [f"holding {len(held)}: {_some(held)}" if held else "holding nothing"]
    if failed:
        parts.append(f"failed: {_some(failed)}")
    if delegated:
        parts.append(f"delegated {delegated} for {clients} clients")
    if marker is not None:
        parts.append("marker armed" if marker.armed else "marker disarmed")
    return "; ".join(parts)


def _some(paths: list[str]) -> str:
    """At most SUMMARY_PATHS paths (each cut to SUMMARY_PATH_LEN), then how many more."""
    shown = [p if len(p) <= SUMMARY_PATH_LEN else p[:SUMMARY_PATH_LEN - 1] + "…"
             for p in paths[:SUMMARY_PATHS]]
    more = len(paths) - len(shown)
    if more:
        return ", ".join(shown) + f", and {more} more"
    return ", ".join(shown)


def configured_dict(h: HeldPath) -> dict[str, Any]:
    """A configured hold in the `status` reply."""
    return {**h.fields(), "when": str(h.when), "adopted": h.adopted}


def marker_dict(config: MarkerConfig | None, marker: MarkerWatch | None) -> dict[str, Any] | None:
    if config is None or marker is None:
        return None
    inhibit = config.inhibit
    return {"path": marker.path, "state": "armed" if marker.armed else "disarmed",
            "present": marker.present(), "watching": marker.watched, "inhibit": inhibit,
            "inhibited": bool(inhibit and os.path.lexists(inhibit))}
