"""The daemon's configuration: TOML files -> immutable records (`Config`).

Files: `/etc/holdmount/holdmount.toml`, then `/etc/holdmount/conf.d/*.toml` sorted by name; a
missing main file is an empty one. Later files win, like systemd drop-ins (`dropins`).

Every error names the file and the key (`config(/etc/holdmount/holdmount.toml): action[x].timeout:
invalid time span 'soon'`) and exits 78 (EX_CONFIG), so systemd does not restart in a loop.
Every section of every file is read even after an error, so one run reports them all
(`ConfigErrors`); a file is at most MAX_FILE_SIZE bytes and MAX_NESTING arrays/tables deep.

The parts: `model` (the records and their defaults), `reader` (one file: size and nesting
limits, TOML, typed keys), `isolated` (the TOML parse in a child: the daemon never holds
tomllib), `cache` (the daemon's parse cache: an unchanged file is not parsed again), `dropins`
(the set of files merged by identity: `load`), `check` (`daemon --check`: what only the
running system can tell). Import from here.
"""

from __future__ import annotations

from holdmount.config.check import check, load_checked
from holdmount.config.dropins import default_files, load, loads
from holdmount.config.model import (
    CONFIG_DIR,
    DEFAULT_ACTION_TIMEOUT,
    DEFAULT_CONNECTIONS_PER_UID,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_LEASES_PER_UID,
    DEFAULT_PATHS_PER_UID,
    DEFAULT_STAMP,
    DROPIN_DIR,
    MAIN_FILE,
    ActionConfig,
    Config,
    ControlConfig,
    DaemonConfig,
    HoldConfig,
    MarkerConfig,
    MergeSpec,
    When,
)
from holdmount.config.reader import (
    CHECK_HINT,
    MAX_FILE_SIZE,
    MAX_NESTING,
    ConfigErrors,
)
from holdmount.errors import Failure
from holdmount.paths import DEFAULT_SOCKET, SOCKET_ENV

__all__ = [
    "CHECK_HINT", "CONFIG_DIR", "DEFAULT_ACTION_TIMEOUT", "DEFAULT_CONNECTIONS_PER_UID",
    "DEFAULT_IDLE_TIMEOUT", "DEFAULT_LEASES_PER_UID", "DEFAULT_PATHS_PER_UID", "DEFAULT_SOCKET",
    "DEFAULT_STAMP", "DROPIN_DIR", "MAIN_FILE", "MAX_FILE_SIZE", "MAX_NESTING", "SOCKET_ENV",
    "ActionConfig", "Config", "ConfigErrors", "ControlConfig", "DaemonConfig", "Failure",
    "HoldConfig", "MarkerConfig", "MergeSpec", "When", "check", "default_files", "load",
    "load_checked", "loads",
]
