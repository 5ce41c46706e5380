"""Real automounts for the bench: Debian's `automount` with one direct map, in our namespace.

The daemon gets its own session (processes in the automount daemon's process group are in
"oz mode" and never trigger mounts). It runs in the harness's private mount namespace, so the
holders the harness starts (same namespace) trigger and hold its mounts, and everything goes
away with the namespace. Each map entry is a small tmpfs.
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.lab import Lab, mountinfo_lines, wait_for

ENTRY = "-fstype=tmpfs,size=1m,mode=0755 :tmpfs"
_libc = ctypes.CDLL(None, use_errno=True)
_MNT_DETACH = 2


class Automount:
    def __init__(self, lab: Lab, names: Sequence[str], *, timeout: int = 2,
                 where: Path | None = None, paths: Sequence[str] | None = None) -> None:
        """One direct map: NAME -> DIR/mnt/NAME, or the given absolute `paths`."""
        self.lab = lab
        self.dir = lab.dir("autofs")
        mnt = where or self.dir / "mnt"
        self.paths = list(paths) if paths is not None else [str(mnt / n) for n in names]
        master = self.dir / "auto.master"
        direct = self.dir / "auto.direct"
        master.write_text(f"/- {direct} --timeout={timeout}\n")
        direct.write_text("".join(f"{p} {ENTRY}\n" for p in self.paths))
        self.proc: subprocess.Popen[Any] = lab.procs.start(
            ["automount", "-f", "-C", "-t", str(timeout), "-p", str(self.dir / "am.pid"),
             str(master)], deathsig=signal.SIGTERM, log=self.dir / "automount.log")
        limit = 30 + len(self.paths) / 20
        if not wait_for(lambda: self.triggers() >= len(self.paths), limit, 0.05):
            self.stop()
            raise RuntimeError(f"automount did not set up {len(self.paths)} triggers in "
                               f"{limit:.0f}s: {self.log_text()}")

    def _ours(self) -> list[list[str]]:
        wanted = set(self.paths)
        out = []
        for line in mountinfo_lines():
            fields = line.split()
            if fields[4] in wanted:
                out.append(fields)
        return out

    def triggers(self) -> int:
        return sum(1 for f in self._ours() if f[f.index("-") + 1] == "autofs")

    def mounted(self) -> int:
        """How many entries have their real filesystem mounted on the trigger."""
        return sum(1 for f in self._ours() if f[f.index("-") + 1] != "autofs")

    def log_text(self) -> str:
        try:
            return (self.dir / "automount.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Unmount everything ourselves and SIGKILL automount. Call only when every holder has
        ended.

        automount's own shutdown needs ~0.1 s per mount it has mounted (100 mounts: 11 s),
        which would dominate the bench's time; umount2() of an idle tmpfs or trigger takes
        microseconds. Order: the real mounts, then the daemon, then its (now catatonic)
        triggers."""
        for fields in self._ours():
            if fields[fields.index("-") + 1] != "autofs":
                _libc.umount2(fields[4].encode(), 0)
        self.lab.procs.stop(self.proc, signal.SIGKILL, timeout=30)
        for fields in reversed(self._ours()):
            _libc.umount2(fields[4].encode(), _MNT_DETACH)
