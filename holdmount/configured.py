"""The configured holds (`[[hold]]`): taken together, stored in the fd store, taken again.

`always` holds are taken at start (any failure ends the start), `staged` ones when the marker
arms (and at SIGTERM if still missing). Every held fd goes to the service manager's fd store
(FDSTORE=1, named by `fdstore.name_for`) unless `[daemon] fdstore = false`; after a crash the
fds that come back are adopted (`fdstore.Adopted`), verified, before any path is opened again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from holdmount import fdstore, hold
from holdmount.config import Config, When
from holdmount.errors import Failure
from holdmount.held import HeldPath
from holdmount.hold import HoldState
from holdmount.log import log
from holdmount.mounts import MountTable
from holdmount.notify import Notifier


class ConfiguredHolds:
    def __init__(self, config: Config, notifier: Notifier, stored: fdstore.Adopted,
                 armed: Callable[[], bool]) -> None:
        self.holds = [HeldPath(h.path, h.protect, set(), when=h.when) for h in config.holds]
        self.timeout = config.daemon.trigger_timeout
        self.notifier = notifier
        self.stored = stored
        self.armed = armed  # is the marker armed now (a staged hold is wanted)?

    def staged(self, *, missing: bool = False) -> list[HeldPath]:
        return [h for h in self.holds
                if h.when is When.STAGED and not (missing and h.hold is not None)]

    def take_all(self, holds: Sequence[HeldPath], *, fatal: bool) -> None:
        """Take `holds` together: fds from the fd store adopted first, then the rest in one
        `hold.take_each` per protect value (one helper process opens them all, one mount-table
        read). Each failure is recorded on its hold (status shows it) and logged; one bad path
        does not keep the others from being held. With `fatal` (the `always` holds at start),
        any failure ends the start instead: every path is tried and every failure logged, the
        fresh holds are closed unstored, and the first failure in config order is raised."""
        todo = self._adopt_stored(holds)
        results: dict[int, hold.Hold | Failure] = {}
        for protect in (False, True):
            group = [h for h in todo if h.protect is protect]
            if group:
                taken = hold.take_each([h.path for h in group], timeout=self.timeout,
                                       protect=protect)
                results.update(zip(map(id, group), taken, strict=True))
        failed = [h for h in todo if isinstance(results[id(h)], Failure)]
        for i, h in enumerate(failed):
            failure = results[id(h)]
            assert isinstance(failure, Failure)
            h.error = failure.message
            if not (fatal and i == 0):  # the raised one is reported by whoever catches it
                log.event("hold-failed", "hold %s: %s", h.path, failure.message,
                          path=h.path, status=failure.message)
        if fatal and failed:
            hold.release_all([r for r in results.values() if isinstance(r, hold.Hold)])
            first = results[id(failed[0])]
            assert isinstance(first, Failure)
            raise first
        for h in todo:
            r = results[id(h)]
            if isinstance(r, hold.Hold):
                self._held(h, r)

    def _adopt_stored(self, holds: Sequence[HeldPath]) -> list[HeldPath]:
        """Hold what the fd store handed back; returns the holds still to be taken."""
        table: MountTable | None = None
        todo: list[HeldPath] = []
        for h in holds:
            stored = self.stored.claim(h.path)
            if stored is not None:
                table = table or MountTable.read()
                adopted = self.stored.adopt(h.path, h.protect, stored, table)
                if adopted is not None:
                    h.took(adopted, adopted=True)
                    continue
            todo.append(h)
        return todo

    def _held(self, h: HeldPath, taken: hold.Hold) -> None:
        h.took(taken)
        info = taken.info
        log.event("hold-taken", "holding %s: %s from %s on %s%s%s", info.path, info.fstype,
                  info.source, info.mount_point, " (automount)" if info.automount else "",
                  ", locked against tmpfiles cleanup" if info.protected else "",
                  path=info.path, fstype=info.fstype, mount_point=info.mount_point)
        if self.stored.keep:
            self.notifier.fdstore(taken.fd, fdstore.name_for(h.path))

    def release(self, h: HeldPath, *, stopping: bool = False) -> None:
        """Close the hold; while running also take it out of the fd store. Not while stopping:
        systemd discards a stopped service's fd store itself (sd_notify(3), unless
        FileDescriptorStorePreserve=), and one FDSTOREREMOVE per hold into a 10-datagram queue
        the manager is slow to read at shutdown could block up to SEND_TIMEOUT per hold."""
        if h.hold is not None:
            h.hold.release()
            log.event("hold-released", "released %s", h.path, path=h.path)
            if self.stored.keep and not stopping:
                self.notifier.fdstore_remove(fdstore.name_for(h.path))
        h.hold = None
        h.adopted = False
        if h.state is HoldState.HELD or h.state is HoldState.COVERED:
            h.state = None

    def release_all(self, *, stopping: bool = False) -> None:
        for h in self.holds:
            self.release(h, stopping=stopping)

    # --- the mount table (daemon.check_mounts) --------------------------------------------

    def items(self) -> list[HeldPath]:
        return list(self.holds)

    def lost(self, h: HeldPath) -> None:
        self.release(h)
        h.state = HoldState.LOST

    def retake(self, h: HeldPath) -> bool:
        """Take a lost hold again (a staged one only while armed); True when status changed."""
        if h.when is When.STAGED and not self.armed():
            return False
        self.take_all([h], fatal=False)
        if h.hold is None:
            h.state = HoldState.LOST
        else:
            log.event("hold-retaken", "hold %s: taken again", h.path, path=h.path)
        return True

    def held(self, path: str) -> bool:
        """Is `path` held by the configuration (not released over the socket)?"""
        return any(h.path == path and h.hold is not None for h in self.holds)
