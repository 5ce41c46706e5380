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

TYPE_CHECKING = False  # typing costs ~1 MiB at run time; mypy reads this as True
if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable, Mapping, Sequence

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


def session(argv: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    """`argv` in a new session and process group, output on one pipe (Popen.stdout), cwd /,
    an empty signal mask and the daemon's original RLIMIT_NOFILE. OSError when it cannot
    start."""
    import resource
    import subprocess

    from holdmount import limits

    def popen(reset: Callable[[], None] | None = None) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, cwd="/", env=env, close_fds=True,
            start_new_session=True,  # own session and process group: the daemon kills the group
            preexec_fn=reset)

    nofile = limits.original_nofile()
    if signal.pthread_sigmask(signal.SIG_BLOCK, ()):  # Popen keeps the mask: reset it there
        return popen(lambda: _reset_child(nofile))
    if nofile is None:
        return popen()
    # The child inherits the limit in force at fork: lowered for the moment of the spawn, so
    # Popen can still vfork (a function run in the child makes it fork: +1.6 ms at SIGTERM).
    # Only when the spawn's own pipes do not fit below it does the child lower it itself.
    raised = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, nofile)
    try:
        return popen()
    except OSError as e:
        if e.errno != errno.EMFILE:
            raise
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, raised)
    return popen(lambda: _reset_child(nofile))


def _reset_child(nofile: tuple[int, int] | None) -> None:
    """In the child between fork and exec: an empty signal mask, the original fd limit."""
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    if nofile is not None:
        import resource  # loaded by holdmount.limits already: a dict lookup in the child

        resource.setrlimit(resource.RLIMIT_NOFILE, nofile)
