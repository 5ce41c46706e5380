"""Starting a child process: the one place that decides what a child inherits.

Two kinds of children, one set of rules:

- `run`'s COMMAND (`foreground`): stays in our process group (the terminal's ^C reaches it) and
  gets our environment as it is (a wrapper like systemd-inhibit: a Type=notify service started
  through `holdmount run` still needs its NOTIFY_SOCKET). posix_spawn: no fork of the interpreter.
- a finalize action (`session`): its own session and process group (the daemon ends the whole
  group), stdin /dev/null, stdout+stderr one pipe, cwd /, and the environment without the
  variables that belong to the daemon alone (`child_environ`).

Both start with an empty signal mask and the forwarded/handled signals at SIG_DFL, and inherit
no fd but 0-2 (Python's fds are O_CLOEXEC). The daemon raises its RLIMIT_NOFILE soft limit
(holdmount.limits): an action gets the soft limit the daemon was started with back, since a
program using select() breaks on fds above 1024.
"""

from __future__ import annotations

import errno
import os
import signal

from holdmount.errors import Exit, Failure
from holdmount.record import Record

TYPE_CHECKING = False  # typing costs ~1 MiB at run time; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

# Variables that belong to this process only: never hand them to an action.
PRIVATE_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
               "LISTEN_FDNAMES")

_EXEC_HINTS = {
    errno.EACCES: "found, but not a program this user may run: a directory, a file without "
    "the execute bit, or on a noexec mount",
    errno.ENOEXEC: "not a program the kernel can start: a script needs a #! line, or run it "
    "through its interpreter",
}


def child_environ(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The environment for a child process: ours without the service-manager variables."""
    return {k: v for k, v in environ.items() if k not in PRIVATE_ENV}


def foreground(command: Sequence[str], default_signals: frozenset[int]) -> int:
    """`command` (looked up in PATH) in our process group with our environment; its pid.
    A command that cannot be started is a Failure (127 not found, 126 not executable)."""
    try:
        return os.posix_spawnp(command[0], list(command), os.environ,
                               setsigmask=(), setsigdef=default_signals)
    except OSError as e:
        missing = e.errno in (errno.ENOENT, errno.ENOTDIR)
        raise Failure(f"execvp({command[0]}): {os.strerror(e.errno or 0)}",
                      hint=_EXEC_HINTS.get(e.errno or 0, "check the command name and PATH"),
                      code=Exit.NOT_FOUND if missing else Exit.CANNOT_EXEC) from e


class Child(Record):
    """A started action: its pid (also its process group and session id) and the read end of
    its output pipe (non-inheritable; the caller closes it)."""
    pid: int
    output: int


def session(argv: Sequence[str], env: Mapping[str, str]) -> Child:
    """`argv` (an absolute path first) in a new session and process group, stdin /dev/null,
    stdout and stderr one pipe, cwd /, an empty signal mask, every signal at its default and
    the daemon's original RLIMIT_NOFILE. OSError when it cannot start.

    posix_spawn (glibc: clone(CLONE_VM|CLONE_VFORK), no copy of the daemon, no Python in the
    child) rather than subprocess, which with the `locale`, `re` and `threading` it imports
    would cost the idle daemon ~2 MiB. The child inherits the fd limit in force at the spawn,
    so it is lowered around it — unless the spawn's own fds lie above that limit (glibc then
    refuses the dup2 actions: a daemon holding thousands of paths has no low fd left), where a
    fork of the daemon lowers it in the child instead (`_fork_exec`)."""
    from holdmount import limits

    nofile = limits.original_nofile()
    devnull = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    try:
        rfd, wfd = os.pipe2(os.O_CLOEXEC)
    except OSError:
        os.close(devnull)
        raise
    try:
        if nofile is None or max(devnull, rfd, wfd) < nofile[0]:
            pid = _spawn(argv, env, (devnull, wfd, wfd), nofile)
        else:
            pid = _fork_exec(argv, env, (devnull, wfd, wfd), nofile)
    except BaseException:
        os.close(rfd)
        raise
    finally:
        os.close(wfd)
        os.close(devnull)
    return Child(pid, rfd)


def _spawn(argv: Sequence[str], env: Mapping[str, str], stdio: tuple[int, int, int],
           nofile: tuple[int, int] | None) -> int:
    import resource  # loaded by holdmount.limits already

    try:  # to come back to: where the daemon was started (systemd: / already)
        here = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:  # a cwd that cannot be opened again: stay in / afterwards
        here = -1
    raised = None
    try:
        os.chdir("/")  # Python 3.11's posix_spawn has no chdir action: ours, for the spawn
        if nofile is not None:
            raised = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, nofile)
        return os.posix_spawn(
            argv[0], list(argv), env, setsid=True, setsigmask=(), setsigdef=_ALL_SIGNALS,
            file_actions=[(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(stdio)])
    finally:
        if raised is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, raised)
        if here >= 0:
            os.fchdir(here)
            os.close(here)


def _fork_exec(argv: Sequence[str], env: Mapping[str, str], stdio: tuple[int, int, int],
               nofile: tuple[int, int]) -> int:
    """fork, set the child up in Python, exec; an exec failure comes back as its errno over a
    close-on-exec pipe (nothing arrives when the exec succeeded)."""
    import resource

    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # the child: never returns
        try:
            for signum in _ALL_SIGNALS:
                signal.signal(signum, signal.SIG_DFL)
            for target, fd in enumerate(stdio):
                os.dup2(fd, target)
            os.setsid()
            os.chdir("/")
            resource.setrlimit(resource.RLIMIT_NOFILE, nofile)
            signal.pthread_sigmask(signal.SIG_SETMASK, ())
            os.execve(argv[0], list(argv), env)
        except OSError as e:
            os.write(err_w, str(e.errno or 0).encode())
        finally:
            os._exit(127)
    os.close(err_w)
    try:
        reply = os.read(err_r, 32)
    finally:
        os.close(err_r)
    if reply:
        os.waitpid(pid, 0)
        code = int(reply)
        raise OSError(code, os.strerror(code), argv[0])
    return pid


# Every signal the kernel lets a process catch: an action starts with none ignored (Python
# ignores SIGPIPE and SIGXFSZ) and none handled.
_ALL_SIGNALS = frozenset(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}
