"""A path the daemon holds: one type for configured and delegated holds.

A configured hold (`[[hold]]`) has its `when`; a delegated one is wanted by the leases in
`owners` (a refcount by owner: the fd is released when the last one ends). Both keep their own
fd, so neither kind releases what the other still wants. The mount table decides `state`: a
hold whose mount was detached is LOST (its fd released, `lost_mount` remembered) until it can
be taken again.
"""

from __future__ import annotations

from holdmount import hold
from holdmount.hold import Hold, HoldState
from holdmount.log import log
from holdmount.mounts import MountTable
from holdmount.record import Record

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:  # annotations only
    from typing import Any

    from holdmount.config import When


class HeldPath(Record, frozen=False):
    path: str
    protect: bool
    owners: set[int]  # the leases that want it (a delegated hold); empty for a configured one
    when: When | None = None  # a configured hold's; None for a delegated one
    hold: Hold | None = None
    error: str | None = None
    state: HoldState | None = None  # from the mount table; LOST also while not held again
    lost_mount: str | None = None  # the mount point it was lost from (to take it again)
    adopted: bool = False  # the fd came back from the service manager's fd store

    def took(self, taken: Hold, *, adopted: bool = False) -> None:
        """`taken` is its hold now: no error, HELD."""
        self.hold, self.error, self.state, self.lost_mount, self.adopted = \
            taken, None, HoldState.HELD, None, adopted

    def observe(self, table: MountTable) -> bool:
        """Judge the hold against a fresh table and log a change; True when it was lost now
        (the caller releases the fd)."""
        if self.hold is None:
            return False
        st = hold.state(self.hold.info, table)
        if st is self.state:
            return False
        info = self.hold.info
        if st is HoldState.HELD:
            log.info("hold %s: %s on %s is visible again", self.path, info.fstype,
                     info.mount_point)
        elif st is HoldState.COVERED:
            log.warning("hold %s: covered: something was mounted over %s (still held "
                        "underneath)", self.path, info.mount_point)
        else:
            log.event("hold-lost", "hold %s: lost: %s on %s was unmounted (umount -l?); "
                      "taking it again when it can be mounted", self.path, info.fstype,
                      info.mount_point, path=self.path, mount_point=info.mount_point)
        self.state = st
        if st is not HoldState.LOST:
            return False
        self.lost_mount = info.mount_point
        self.error = f"lost: {info.fstype} on {info.mount_point} was unmounted"
        return True

    def mountable_again(self, table: MountTable) -> bool:
        """Lost, and something is mounted at its mount point again: worth taking again."""
        return self.hold is None and self.state is HoldState.LOST and \
            self.lost_mount is not None and table.top_at(self.lost_mount) is not None

    def fields(self) -> dict[str, Any]:
        """The status fields every held path shows (see snapshot.py for the rest)."""
        d: dict[str, Any] = {"path": self.path, "held": self.hold is not None,
                             "error": self.error,
                             "state": str(self.state) if self.state else None,
                             "protect": self.protect}
        if self.hold is not None:
            info = self.hold.info
            d.update(fstype=info.fstype, source=info.source, mount_point=info.mount_point,
                     automount=info.automount, since=info.since, protected=info.protected,
                     resolved=info.resolved)
        return d
