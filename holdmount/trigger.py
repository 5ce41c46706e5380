"""The trigger helper: a child process that opens directories and passes the fds back.

Opening an automount's directory triggers it. When its automount daemon hangs (stopped, dead
file server), open() blocks in a kernel wait that only SIGKILL ends, so opens never run in the
caller: a helper receives a batch of paths (SOCK_SEQPACKET messages of NUL-separated paths),
opens each `O_RDONLY|O_DIRECTORY|O_CLOEXEC` and answers each in order with (index, errno) and
the fd as SCM_RIGHTS. A helper that misses the deadline is killed with SIGKILL.

Two lifetimes, one protocol:
- `start()`: one long-lived helper for the process (the daemon calls it early, while it is still
  small: the fork copies next to nothing). A staged hold then costs one round trip instead of a
  fork of the whole daemon. After a kill it is forked again at once.
- otherwise each batch forks a one-shot helper that ends with the batch (`holdmount run` takes
  one batch per process).

The child keeps only its socket and stdio (a copy of a held fd would keep that mount busy after
the caller released it) and runs nothing but `_serve`.
"""

from __future__ import annotations

import errno
import gc
import os
import select
import signal
import socket
import struct

from holdmount import fdpass

TYPE_CHECKING = False  # typing costs ~1 MiB at run time; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import Sequence

OPEN_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_ANSWER = struct.Struct("=ii")  # index in the request, errno (0: an fd is attached)
_REQUEST_MAX = 32768  # bytes of paths per request: a longer batch is sent in several
_QUIET = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def _serve(sock: socket.socket) -> None:
    """The helper's loop: answer every path of every request until the socket closes."""
    while request := sock.recv(_REQUEST_MAX):
        for index, path in enumerate(request.split(b"\0")):
            try:
                fd = os.open(path, OPEN_FLAGS)
            except OSError as e:
                sock.send(_ANSWER.pack(index, e.errno or errno.EIO))
                continue
            fdpass.send(sock, _ANSWER.pack(index, 0), [fd])
            os.close(fd)


def _child(sock: socket.socket, long_lived: bool) -> None:  # pragma: no cover - in the child
    code = 0
    try:
        # The caller's Python signal handlers and wakeup fd must not run here: a SIGTERM sent
        # to the whole cgroup would otherwise poke the daemon's loop from the helper. The
        # long-lived helper ignores the stop signals (it ends when its socket closes, or by
        # SIGKILL), so a service stop does not take it away from the finalize.
        signal.set_wakeup_fd(-1)
        for sig in _QUIET:
            signal.signal(sig, signal.SIG_IGN if long_lived else signal.SIG_DFL)
        gc.disable()  # the loop makes no cycles; a collection would copy the parent's pages
        fd = sock.fileno()
        os.closerange(3, fd)
        os.closerange(fd + 1, os.sysconf("SC_OPEN_MAX"))
        _serve(sock)
    except BaseException:
        code = 1
    finally:
        os._exit(code)


class Helper:
    """One helper process and our end of its socket."""

    def __init__(self, long_lived: bool = False) -> None:
        self.sock, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.long_lived = long_lived
        self.gone = False  # it ended by itself (killed by someone else), not by our deadline
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - runs in the child
            self.sock.close()
            _child(child, long_lived)
        child.close()

    def open_batch(self, paths: Sequence[str], timeout: float) -> list[int | OSError]:
        """Answers for `paths` in order. The deadline restarts at each answer (a long batch of
        quick paths never times out); when an answer is `timeout` seconds late, the helper is
        killed and the answers so far are returned: paths[len(answers)] hung (or, when
        `gone` is set, the helper had ended)."""
        encoded = [os.fsencode(p) for p in paths]
        results: list[int | OSError] = []
        try:
            while len(results) < len(encoded):
                start = end = len(results)
                size = 0
                while end < len(encoded) and (end == start
                                              or size + len(encoded[end]) < _REQUEST_MAX):
                    size += len(encoded[end]) + 1
                    end += 1
                self.sock.send(b"\0".join(encoded[start:end]))
                if not self._receive(results, end - start, timeout):
                    break
        except OSError:  # the helper died under us (EPIPE, ECONNRESET)
            self.gone = True
        if len(results) < len(paths):
            self.kill()
        return results

    def _receive(self, results: list[int | OSError], count: int, timeout: float) -> bool:
        first = len(results)
        while len(results) - first < count:
            if not select.select([self.sock], [], [], timeout)[0]:
                return False
            # close-on-exec: received fds must not leak into commands we spawn later
            msg, fds, _flags = fdpass.recv(self.sock, _ANSWER.size, 1)
            for extra in fds[1:]:
                os.close(extra)
            if len(msg) != _ANSWER.size:  # the helper ended: it answers every path unless dead
                self.gone = True
                return False
            index, err = _ANSWER.unpack(msg)
            if index != len(results) - first or not (err or fds):  # cannot happen: stop here
                if fds:
                    os.close(fds[0])
                return False
            results.append(OSError(err, os.strerror(err)) if err else fds[0])
        return True

    def running(self) -> bool:
        """Not killed or ended yet (by us: a helper that died is found out at its next batch)."""
        return self.pid > 0

    def kill(self) -> None:
        """SIGKILL: the one signal that ends an open() stuck in an automount wait."""
        if self.pid > 0:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._reap()

    def close(self) -> None:
        """End an idle helper: it exits when its socket closes."""
        self.sock.close()
        if self.pid > 0:
            self._reap()

    def _reap(self) -> None:
        self.sock.close()
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass
        self.pid = 0


_shared: Helper | None = None


def start() -> int:
    """Fork the process's long-lived helper now (if there is none); its pid. Call it early."""
    global _shared
    if _shared is None or not _shared.running():
        _shared = Helper(long_lived=True)
    return _shared.pid


def stop() -> None:
    """End the long-lived helper (batches fork one-shot helpers again)."""
    global _shared
    if _shared is not None:
        _shared.close()
        _shared = None


def helper_pid() -> int | None:
    """The long-lived helper's pid, None when there is none."""
    return _shared.pid if _shared is not None and _shared.running() else None


def open_dirs(paths: Sequence[str], timeout: float) -> list[int | OSError]:
    """Open each directory (triggering automounts) with at most `timeout` seconds per path, in
    the long-lived helper if one was started, else in a one-shot helper. A path that hangs gets
    a TimeoutError; its helper is killed (the long-lived one forked again at once), the rest
    go on in the next one. A helper that someone else ended is replaced and asked again, once."""
    out: list[int | OSError] = []
    retried = False
    while len(out) < len(paths):
        if _shared is not None:
            start()  # the long-lived helper, forked again if it was killed
        helper = _shared or Helper()
        shared = helper is _shared
        try:
            out.extend(helper.open_batch(paths[len(out):], timeout))
        except BaseException:
            helper.kill()
            raise
        if len(out) < len(paths) and helper.gone and not retried:
            retried = True  # someone else ended it (OOM killer, a stray kill): once more
        elif len(out) < len(paths):  # paths[len(out)] hung: open_batch killed its helper
            out.append(OSError(errno.EIO, "the trigger helper ended unexpectedly")
                       if helper.gone else
                       TimeoutError(errno.ETIMEDOUT, f"no answer within {timeout:g}s"))
        if shared and not helper.running():
            start()  # at once: the next trigger finds it waiting
        if not shared and helper.running():
            helper.close()
    return out

