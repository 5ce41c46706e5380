"""`holdmount run`: hold (and check) directories for the whole life of a command.

Modelled on systemd-inhibit: the holds are taken before the command starts and released after it
ends; the command inherits none of the held fds (they are O_CLOEXEC); SIGINT/SIGTERM/SIGHUP and
friends sent to us are forwarded to it; the exit status is the command's (128+N if signal N
killed it). Signals are received synchronously (blocked + sigwaitinfo), so no handler can run in
the middle of anything.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import signal
from collections.abc import Sequence

from holdmount import checks, hold, syscalls, tmpfiles
from holdmount.errors import Exit, Failure
from holdmount.log import log

FORWARDED = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                       signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH, signal.SIGCONT})
SI_KERNEL = 0x80  # si_code of a signal the kernel generated (e.g. ^C from the terminal)


@dataclasses.dataclass(frozen=True)
class RunSpec:
    paths: tuple[str, ...]
    command: tuple[str, ...]
    protect: bool = False
    require_writable: bool = False
    require_exec: bool = False
    trigger_timeout: float = hold.DEFAULT_TRIGGER_TIMEOUT


def prepare(spec: RunSpec) -> list[hold.Hold]:
    """Take and check every hold; nothing is left held if any of it fails."""
    if syscalls.in_host_mount_ns() is False:
        log.warning("running in a mount namespace other than PID 1's: a hold taken here does "
                    "not keep an automount alive in the host namespace (autofs is not "
                    "namespace-aware)")
    holds = hold.take(spec.paths, timeout=spec.trigger_timeout, protect=spec.protect)
    try:
        for h in holds:
            if spec.require_writable:
                checks.require_writable(h)
            if spec.require_exec:
                checks.require_exec(h)
            if spec.protect:
                warn_unprotectable(h)
            log.debug("holding %s: %s from %s on %s%s", h.info.path, h.info.fstype,
                      h.info.source, h.info.mount_point,
                      " (automount)" if h.info.automount else "")
    except Failure:
        hold.release_all(holds)
        raise
    return holds


def warn_unprotectable(h: hold.Hold) -> None:
    try:
        rules = tmpfiles.load()
    except (OSError, ValueError, Exception) as e:  # no systemd-tmpfiles: nothing to warn about
        log.debug("systemd-tmpfiles --cat-config: %s", e)
        return
    for rule in tmpfiles.named_by_rule(rules, h.info.resolved):
        log.warning("--protect on %s protects nothing from %s:%d (%s): tmpfiles skips locked "
                    "directories only below the directory a rule names; hold a subdirectory",
                    h.info.path, rule.file, rule.line, rule.text)


def spawn(command: Sequence[str]) -> int:
    try:
        return os.posix_spawnp(command[0], list(command), os.environ,
                               setsigmask=(), setsigdef=FORWARDED | {signal.SIGCHLD})
    except OSError as e:
        missing = e.errno in (errno.ENOENT, errno.ENOTDIR)
        raise Failure(f"execvp({command[0]}): {os.strerror(e.errno or 0)}",
                      hint="check the command name and PATH",
                      code=Exit.NOT_FOUND if missing else Exit.CANNOT_EXEC) from e


def wait_forwarding(pid: int) -> int:
    """Wait for `pid`, forwarding signals; returns the shell-style exit status."""
    watched = FORWARDED | {signal.SIGCHLD}
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else \
                128 + os.WTERMSIG(status)
        info = signal.sigwaitinfo(watched)
        if info.si_signo == signal.SIGCHLD:
            continue
        if info.si_code == SI_KERNEL:
            continue  # the terminal sent it to the whole foreground process group already
        log.debug("forwarding %s to %d", signal.Signals(info.si_signo).name, pid)
        try:
            os.kill(pid, info.si_signo)
        except ProcessLookupError:
            pass


def run(spec: RunSpec) -> int:
    if not spec.command:
        raise Failure("run: no command given", hint="holdmount run --hold DIR -- COMMAND [ARG...]",
                      code=Exit.USAGE)
    holds = prepare(spec)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED | {signal.SIGCHLD})
    try:
        pid = spawn(spec.command)
        return wait_forwarding(pid)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        hold.release_all(holds)
