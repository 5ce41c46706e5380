"""Asking systemd about automount units over D-Bus (pystemd, imported lazily).

Only what `doctor` needs: the `.automount` unit of a mount point, its TimeoutIdleUSec and its
state. pystemd is imported inside the functions so the CLI starts fast and works where pystemd or
systemd is absent. The API used is the low-level `pystemd.dbuslib` subset that Debian's 0.11 has
(`DBus`, `DBusAddress`, `get_property`, `process`, `get_fd`): no introspection objects.

"No systemd" is a normal answer, not an error: PID 1 is not systemd (/run/systemd/system is
missing, as sd_booted(3) checks) or the bus cannot be reached. Every result is a frozen dataclass.
"""

from __future__ import annotations

import dataclasses
import os
import string
from collections.abc import Callable
from typing import Any, Protocol

DESTINATION = b"org.freedesktop.systemd1"
UNIT_PREFIX = "/org/freedesktop/systemd1/unit"
IFACE_UNIT = b"org.freedesktop.systemd1.Unit"
IFACE_AUTOMOUNT = b"org.freedesktop.systemd1.Automount"
PRIVATE_SOCKET = "/run/systemd/private"
BOOTED_MARKER = "/run/systemd/system"
USEC_INFINITY = 2**64 - 1


class Bus(Protocol):
    """The part of pystemd.dbuslib.DBus we use (so tests can pass a fake)."""

    def open(self) -> None: ...
    def close(self) -> None: ...
    def process(self) -> Any: ...
    def get_fd(self) -> int: ...
    def get_property(self, destination: bytes, path: bytes, interface: bytes,
                     prop: bytes, rtype: bytes) -> Any: ...


@dataclasses.dataclass(frozen=True)
class NoSystemd:
    """systemd is not the service manager here, or it cannot be reached."""

    reason: str


@dataclasses.dataclass(frozen=True)
class QueryFailed:
    """systemd runs but the question failed (permission, a bus error)."""

    message: str


@dataclasses.dataclass(frozen=True)
class AutomountUnit:
    name: str
    where: str
    load_state: str  # loaded, not-found, masked, ...
    active_state: str  # active, inactive, failed, ...
    sub_state: str  # waiting, running, ...
    timeout_idle_usec: int | None  # None: not loaded; 0: never expires
    mount_unit: str
    mount_active_state: str | None

    @property
    def exists(self) -> bool:
        return self.load_state not in ("not-found", "")

    @property
    def timeout_idle_seconds(self) -> float | None:
        if self.timeout_idle_usec is None:
            return None
        if self.timeout_idle_usec == USEC_INFINITY:
            return float("inf")
        return self.timeout_idle_usec / 1e6


AutomountStatus = AutomountUnit | NoSystemd | QueryFailed


# --- names, as systemd-escape --path and sd_bus_path_encode make them ----------------------------

_UNIT_SAFE = frozenset(string.ascii_letters + string.digits + ":_.")


def escape_path(path: str) -> str:
    """`systemd-escape --path PATH`: /var/tmp/a-b -> var-tmp-a\\x2db."""
    parts = [p for p in os.path.normpath(path).split("/") if p]
    if not parts:
        return "-"
    out: list[str] = []
    for i, part in enumerate(parts):
        esc = []
        for j, ch in enumerate(part.encode()):
            c = chr(ch)
            if c in _UNIT_SAFE and not (c == "." and j == 0 and i == 0):
                esc.append(c)
            else:
                esc.append(f"\\x{ch:02x}")
        out.append("".join(esc))
    return "-".join(out)


def unit_name_for_path(path: str, suffix: str) -> str:
    return f"{escape_path(path)}.{suffix}"


def bus_path_for_unit(name: str) -> bytes:
    """sd_bus_path_encode("/org/freedesktop/systemd1/unit", name)."""
    enc = "".join(c if c.isascii() and c.isalnum() else f"_{ord(c):02x}"
                  for c in name) if name else "_"
    return f"{UNIT_PREFIX}/{enc}".encode()


# --- the bus ------------------------------------------------------------------------------------

def systemd_booted() -> bool:
    """sd_booted(3): systemd is PID 1 of this system (as seen from our mount namespace)."""
    return os.path.isdir(BOOTED_MARKER)


def _default_buses() -> list[tuple[str, Callable[[], Bus]]]:
    """Ways to reach PID 1, best first: its private socket (root, no dbus-daemon needed), then
    the system bus."""
    from pystemd.dbuslib import DBus, DBusAddress

    candidates: list[tuple[str, Callable[[], Bus]]] = []
    if os.geteuid() == 0 and os.path.exists(PRIVATE_SOCKET):
        candidates.append((PRIVATE_SOCKET, lambda: DBusAddress(
            f"unix:path={PRIVATE_SOCKET}".encode(), peer_to_peer=True)))
    candidates.append(("the system bus", lambda: DBus()))
    return candidates


def open_bus(address: str | None = None, *, peer_to_peer: bool | None = None) -> Bus | NoSystemd:
    """Connect to systemd; `address` is a D-Bus address such as
    `unix:path=/run/systemd/private` for tests and containers. systemd's private socket speaks
    peer-to-peer (no Hello, no bus daemon): that is the default for an address naming it."""
    try:
        from pystemd.dbuslib import DBusAddress
    except ImportError as e:
        return NoSystemd(f"pystemd is not installed ({e}): cannot ask systemd")
    if address is not None:
        peer = peer_to_peer if peer_to_peer is not None else "systemd/private" in address
        candidates: list[tuple[str, Callable[[], Bus]]] = [
            (address, lambda: DBusAddress(address.encode(), peer_to_peer=peer))]
    else:
        if not systemd_booted():
            return NoSystemd(f"systemd is not running ({BOOTED_MARKER} does not exist)")
        candidates = _default_buses()
    errors: list[str] = []
    for label, make in candidates:
        bus = make()
        try:
            bus.open()
        except Exception as e:  # pystemd raises DBusError (not an OSError) for every failure
            errors.append(f"{label}: {e}")
            continue
        if bus.get_fd() < 0:
            errors.append(f"{label}: connection is dead")
            _close(bus)
            continue
        return bus
    return NoSystemd("cannot reach systemd over D-Bus (" + "; ".join(errors) + ")")


def _close(bus: Bus) -> None:
    try:
        bus.close()
    except Exception:
        pass


def drain(bus: Bus, limit: int = 64) -> None:
    """Process what sd-bus queued while we waited for a reply (signals, NameOwnerChanged):
    otherwise it sits in the library and the fd is no longer readable."""
    for _ in range(limit):
        msg = bus.process()
        is_empty = getattr(msg, "is_empty", None)
        if is_empty is None or is_empty():
            return


def _prop(bus: Bus, path: bytes, iface: bytes, name: bytes, rtype: bytes) -> Any:
    try:
        return bus.get_property(DESTINATION, path, iface, name, rtype)
    finally:
        drain(bus)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def automount_status(where: str, *, address: str | None = None,
                     bus: Bus | None = None) -> AutomountStatus:
    """The `.automount` unit for the mount point `where`: state and TimeoutIdleUSec.

    systemd names an automount unit after its Where= (systemd-escape --path), so the unit is
    found by name; its object path loads it, and a missing unit reads LoadState=not-found."""
    own = bus is None
    if bus is None:
        opened = open_bus(address)
        if isinstance(opened, NoSystemd):
            return opened
        bus = opened
    name = unit_name_for_path(where, "automount")
    mount_name = unit_name_for_path(where, "mount")
    path = bus_path_for_unit(name)
    try:
        load = _text(_prop(bus, path, IFACE_UNIT, b"LoadState", b"s"))
        active = _text(_prop(bus, path, IFACE_UNIT, b"ActiveState", b"s"))
        sub = _text(_prop(bus, path, IFACE_UNIT, b"SubState", b"s"))
        timeout: int | None = None
        if load not in ("not-found", ""):
            timeout = int(_prop(bus, path, IFACE_AUTOMOUNT, b"TimeoutIdleUSec", b"t"))
        mount_active: str | None = _text(_prop(bus, bus_path_for_unit(mount_name), IFACE_UNIT,
                                               b"ActiveState", b"s"))
    except Exception as e:  # DBusError: access denied, no such interface, bus died
        return QueryFailed(f"D-Bus query for {name}: {e}")
    finally:
        if own:
            _close(bus)
    return AutomountUnit(name=name, where=where, load_state=load, active_state=active,
                         sub_state=sub, timeout_idle_usec=timeout, mount_unit=mount_name,
                         mount_active_state=mount_active)


def format_usec(usec: int | None) -> str:
    if usec is None:
        return "n/a"
    if usec == USEC_INFINITY:
        return "infinity"
    if usec == 0:
        return "0 (never expires)"
    sec = usec / 1e6
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if sec >= size and sec % size == 0:
            return f"{int(sec // size)}{unit}"
    return f"{sec:g}s"
