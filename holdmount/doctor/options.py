"""What the caller (the CLI, a test) tells doctor."""

from __future__ import annotations

import dataclasses

from holdmount.doctor.ask import DaemonProbe, probe_daemon


@dataclasses.dataclass(frozen=True)
class Options:
    check_writable: bool = False
    trigger_timeout: float = 10.0
    tmpfiles_root: str | None = None
    systemd_address: str | None = None
    daemon_probe: DaemonProbe = probe_daemon
    socket_path: str | None = None  # None: holdmount.paths.control_socket()
