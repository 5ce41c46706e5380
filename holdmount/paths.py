"""Where holdmount's runtime files live: the one place the control socket's path is decided."""

from __future__ import annotations

import os
from collections.abc import Mapping

DEFAULT_SOCKET = "/run/holdmount/control"
SOCKET_ENV = "HOLDMOUNT_SOCKET"


def control_socket(explicit: str | None = None, *, configured: str = DEFAULT_SOCKET,
                   environ: Mapping[str, str] = os.environ) -> str:
    """The control socket: `explicit` (a --socket option) first, then $HOLDMOUNT_SOCKET, then
    `configured` (the daemon's control.path, by default /run/holdmount/control)."""
    return explicit or environ.get(SOCKET_ENV) or configured
