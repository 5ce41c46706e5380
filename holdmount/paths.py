"""Paths: where holdmount's runtime files live (the one place the control socket's path is
decided), and the few things every layer asks of a path — its normal form, whether it lies
under another, and how to show one that is not UTF-8."""

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


def normal(path: str) -> str:
    """An absolute path's normal form: os.path.normpath, and one leading slash (normpath keeps
    the two that POSIX lets a system give a meaning; Linux gives them none)."""
    norm = os.path.normpath(path)
    return "/" + norm.lstrip("/") if norm.startswith("//") else norm


def under(path: str, top: str) -> bool:
    """`path` is `top` or lies below it (both absolute and normal; `top` may end in "/")."""
    top = top.rstrip("/")
    return path == (top or "/") or path.startswith(top + "/")


def text(value: str) -> str:
    """`value` as valid Unicode for display and JSON: a surrogate-escaped byte (a path that is
    not UTF-8, as os.fsdecode gives it) becomes the characters \\xNN, any other lone surrogate
    \\uXXXX (not reversible: keep the bytes where they are needed)."""
    try:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
