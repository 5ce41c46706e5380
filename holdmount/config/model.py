"""The configuration's records: what the daemon runs with, immutable, with their defaults."""

from __future__ import annotations

import enum
import os

from holdmount import paths
from holdmount.defaults import DEFAULT_TRIGGER_TIMEOUT
from holdmount.record import Record

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:  # annotations only
    from collections.abc import Mapping

CONFIG_DIR = "/etc/holdmount"
MAIN_FILE = f"{CONFIG_DIR}/holdmount.toml"
DROPIN_DIR = f"{CONFIG_DIR}/conf.d"
DEFAULT_STAMP = "/var/lib/holdmount/failure.stamp"
DEFAULT_ACTION_TIMEOUT = 300.0
# per-uid ceilings on the control socket (docs/security.md); root is never subject to them
DEFAULT_CONNECTIONS_PER_UID = 16
DEFAULT_LEASES_PER_UID = 64
DEFAULT_PATHS_PER_UID = 64
DEFAULT_IDLE_TIMEOUT = 30.0


class When(enum.StrEnum):
    ALWAYS = "always"  # held / run regardless of the marker
    STAGED = "staged"  # held only while the marker exists / run only when it exists at SIGTERM


class HoldConfig(Record):
    path: str
    when: When = When.ALWAYS
    protect: bool = False
    origin: str = "<command line>"  # the file that defined it (for messages)


class MergeSpec(Record):
    source: str  # `from`: the staged tree
    dest: str  # `to`: where it is merged


class ActionConfig(Record):
    name: str
    exec: tuple[str, ...] | None = None
    merge: MergeSpec | None = None
    when: When = When.STAGED
    timeout: float = DEFAULT_ACTION_TIMEOUT
    origin: str = ""

    @property
    def kind(self) -> str:
        return "merge" if self.merge is not None else "exec"


class MarkerConfig(Record):
    path: str
    # when this path exists at SIGTERM, `staged` actions are skipped (ostree's
    # /run/ostree/staged-deployment-locked: the admin asked not to finalize this boot)
    inhibit: str | None = None


class ControlConfig(Record):
    path: str = paths.DEFAULT_SOCKET  # HOLDMOUNT_SOCKET in the environment overrides it
    mode: int = 0o666  # status is public; ops that change anything check SO_PEERCRED
    group: str | None = None
    connections_per_uid: int = DEFAULT_CONNECTIONS_PER_UID  # open at once
    leases_per_uid: int = DEFAULT_LEASES_PER_UID  # delegated hold requests alive at once
    paths_per_uid: int = DEFAULT_PATHS_PER_UID  # distinct paths those leases hold
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT  # a connection without a lease closes after it


class DaemonConfig(Record):
    stamp: str = DEFAULT_STAMP
    allow_foreign_namespace: bool = False
    trigger_timeout: float = DEFAULT_TRIGGER_TIMEOUT
    # hand every held fd to the service manager (FDSTORE=1), adopt them back after a restart
    fdstore: bool = True


class Config(Record):
    daemon: DaemonConfig = DaemonConfig()
    control: ControlConfig = ControlConfig()
    marker: MarkerConfig | None = None
    holds: tuple[HoldConfig, ...] = ()
    actions: tuple[ActionConfig, ...] = ()
    files: tuple[str, ...] = ()  # what was read, in order

    def socket_path(self, environ: Mapping[str, str] = os.environ) -> str:
        """$HOLDMOUNT_SOCKET, else control.path (holdmount.paths decides, for every verb)."""
        return paths.control_socket(configured=self.control.path, environ=environ)
