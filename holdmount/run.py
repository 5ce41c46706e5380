"""`holdmount run`: hold (and check) directories for the whole life of a command.

Modelled on systemd-inhibit: the holds are taken before the command starts and released after it
ends; the command inherits none of the held fds (they are O_CLOEXEC); SIGINT/SIGTERM/SIGHUP and
friends sent to us are forwarded to it; the exit status is the command's (128+N if signal N
killed it). Signals are received synchronously (blocked + sigwaitinfo), so no handler can run in
the middle of anything.

`--delegate auto|always|never` (default auto): ask the holdmount daemon to hold the paths in the
host mount namespace (holdmount.delegate) when its socket answers, else hold in this process.
Delegated, `run` never opens a path except O_PATH (no trigger: from a private namespace made
before the mount a trigger hangs); checks go through the fds the daemon hands back. The daemon
releases when `run` exits or its connection closes.
"""

from __future__ import annotations

import os
import signal

from holdmount import checks, hold, spawn, syscalls
from holdmount.defaults import DELEGATE_MODES
from holdmount.errors import Exit, Failure
from holdmount.log import log
from holdmount.paths import control_socket
from holdmount.record import Record

TYPE_CHECKING = False  # typing costs ~1 MiB at run time; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any

    from holdmount.delegate import Delegation

FORWARDED = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                       signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH, signal.SIGCONT})
SI_KERNEL = 0x80  # si_code of a signal the kernel generated (e.g. ^C from the terminal)


class RunSpec(Record):
    paths: tuple[str, ...]
    command: tuple[str, ...]
    protect: bool = False
    require_writable: bool = False
    require_exec: bool = False
    trigger_timeout: float = hold.DEFAULT_TRIGGER_TIMEOUT
    delegate: str = DELEGATE_MODES[0]  # auto | always | never
    socket: str | None = None


def prepare(spec: RunSpec) -> list[hold.Hold]:
    """Take and check every hold; nothing is left held if any of it fails."""
    if syscalls.in_host_mount_ns() is False:
        log.warning("running in a mount namespace other than PID 1's: a hold taken here does "
                    "not keep an automount alive in the host namespace (autofs is not "
                    "namespace-aware); the holdmount daemon can hold it for you")
    holds = hold.take(spec.paths, timeout=spec.trigger_timeout, protect=spec.protect)
    check(spec, holds)
    return holds


def prepare_delegated(spec: RunSpec, d: Delegation) -> list[hold.Hold]:
    """The daemon holds; the fds it hands back (its held directories) serve the checks."""
    want = spec.require_writable or spec.require_exec
    reply, holds = d.hold(spec.paths, protect=spec.protect, want_fds=want)
    for h in reply.get("held", []):
        log.debug("the daemon holds %s: %s on %s (lease %s)", h.get("path"), h.get("fstype"),
                  h.get("mount_point"), reply.get("lease"))
    check(spec, holds)
    return holds


def check(spec: RunSpec, holds: list[hold.Hold]) -> None:
    try:
        for h in holds:
            if spec.require_writable:
                checks.require_writable(h)
            if spec.require_exec:
                checks.require_exec(h)
            log.debug("holding %s: %s from %s on %s%s", h.info.path, h.info.fstype,
                      h.info.source, h.info.mount_point,
                      " (automount)" if h.info.automount else "")
    except Failure:
        hold.release_all(holds)
        raise
    if spec.protect:
        warn_unprotectable(holds)


def warn_unprotectable(holds: list[hold.Hold]) -> None:
    """A lock on the very directory a tmpfiles rule names protects nothing: say so."""
    import subprocess  # only --protect needs these (P9: run's start)

    from holdmount import tmpfiles

    try:
        rules = tmpfiles.load()  # one `systemd-tmpfiles --cat-config` for all holds
    except (OSError, subprocess.SubprocessError) as e:  # no systemd-tmpfiles: nothing to say
        log.debug("systemd-tmpfiles --cat-config: %s", e)
        return
    for h in holds:
        for rule in tmpfiles.named_by_rule(rules, h.info.resolved):
            log.warning("--protect on %s protects nothing from %s:%d (%s): tmpfiles skips "
                        "locked directories only below the directory a rule names; hold a "
                        "subdirectory", h.info.path, rule.file, rule.line, rule.text)


def wait_forwarding(pid: int) -> int:
    """Wait for `pid`, forwarding signals; returns the shell-style exit status."""
    watched = FORWARDED | {signal.SIGCHLD}
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            code = os.waitstatus_to_exitcode(status)  # -N when signal N killed it
            return code if code >= 0 else 128 - code
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


def _delegation(spec: RunSpec) -> Delegation | None:
    """The daemon's connection when it is to hold the paths (holdmount.delegate.connect)."""
    if not spec.paths or spec.delegate == "never":
        return None
    if spec.delegate == "auto" and not os.path.lexists(control_socket(spec.socket)):
        return None  # no socket, nobody to ask: connect would say so after importing the client
    from holdmount import delegate

    return delegate.connect(spec.socket, spec.delegate)


def run(spec: RunSpec) -> int:
    if not spec.command:
        raise Failure("run: no command given", hint="holdmount run --hold DIR -- COMMAND [ARG...]",
                      code=Exit.USAGE)
    if spec.delegate not in DELEGATE_MODES:
        raise Failure(f"run: --delegate {spec.delegate}: use auto, always or never",
                      code=Exit.USAGE)
    delegation = _delegation(spec)
    try:
        if delegation is not None:
            holds = prepare_delegated(spec, delegation)
            hold.release_all(holds)  # the daemon holds; these were for the checks only
            holds = []
        else:
            holds = prepare(spec)
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED | {signal.SIGCHLD})
        try:
            pid = spawn.foreground(spec.command, FORWARDED | {signal.SIGCHLD})
            return wait_forwarding(pid)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            hold.release_all(holds)
    finally:
        if delegation is not None:
            delegation.close()  # the daemon ends the lease


def main(args: Any) -> int:
    """`holdmount run` from its parsed options (cli's argparse.Namespace or quickargs.Args)."""
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    return run(RunSpec(
        paths=tuple(args.hold),
        command=tuple(command),
        protect=args.protect,
        require_writable=args.require_writable,
        require_exec=args.require_exec,
        trigger_timeout=args.trigger_timeout,
        delegate=args.delegate,
    ))
