"""Asking the holdmount daemon whether it holds a path: the `status` op over the control socket
(holdmount.control's client), read for configured holds ("holds") and holds it keeps for
clients ("delegated", `holdmount hold` / `run --delegate`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from holdmount import control
from holdmount.errors import Exit, Failure
from holdmount.paths import under


@dataclasses.dataclass(frozen=True)
class DaemonView:
    running: bool
    holds: bool | None  # None: running but could not be asked
    detail: str


DaemonProbe = Callable[[str, str], DaemonView]


def probe_daemon(socket_path: str, path: str) -> DaemonView:
    """Does the holdmount daemon listening on `socket_path` hold `path` (or a directory above
    it, on the same hold)? A daemon that holds a mount also keeps an fd on it, so the busy scan
    in the Holds section lists it too."""
    try:
        reply = control.request(socket_path, "status")
    except Failure as e:
        if e.code == Exit.UNAVAILABLE:
            return DaemonView(False, False, e.message)
        return DaemonView(True, None, f"{e.message} (the daemon did not say what it holds)")
    status = reply.get("status")
    held = holder(status if isinstance(status, Mapping) else {}, path)
    what = "does not hold it" if held is None else f"holds it ({held})"
    return DaemonView(True, held is not None, f"the holdmount daemon ({socket_path}) {what}")


def holder(status: Mapping[str, Any], path: str) -> str | None:
    """Which of the daemon's holds covers `path`, in words: a configured hold or one kept for a
    client (`holdmount hold`, `run --delegate`); None when none does. A hold covers its path
    and what lies below it, by its path as configured or as resolved when it was taken."""
    kinds = (("holds", "configured hold on {}"), ("delegated", "held for a client: {}"))
    for key, words in kinds:
        for h in status.get(key) or ():
            if not isinstance(h, Mapping) or h.get("held") is not True:
                continue
            for top in (h.get("path"), h.get("resolved")):
                if isinstance(top, str) and top.startswith("/") and under(path, top):
                    return words.format(top)
    return None
