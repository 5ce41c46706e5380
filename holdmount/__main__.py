"""Entry point: parse, set up logging, dispatch, map failures to exit codes.

`daemon` is read here without argparse or holdmount.cli (its start path imports only what it
uses); anything else, and any daemon command line this reader does not take as it is (--help,
an abbreviation, an error), goes through argparse, which also gives every usage message.

`holdmount daemon` blocks SIGTERM, SIGINT and SIGHUP here, before any other import: a stop
request that comes while the interpreter is still importing stays pending instead of killing
the process, and the daemon's loop takes it (and finalizes) once its handlers are in place
(holdmount.signals.Signals unblocks them). A signal that comes before this line runs — while the
interpreter itself starts — can only be kept by blocking it before exec (docs/daemon.md).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _verb(argv: list[str]) -> str | None:
    """The subcommand: the first argument that is not an option (global options take none)."""
    return next((a for a in argv if not a.startswith("-")), None)


if _verb(sys.argv[1:]) == "daemon":
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    if "--check" not in sys.argv:
        # The long-lived trigger helper, forked while the process is still small (a staged or
        # delegated hold then costs one round trip, not a fork of the whole daemon).
        from holdmount import trigger

        trigger.start()

from holdmount import log as logmod  # noqa: E402 - after the signals are blocked
from holdmount.errors import Exit, Failure  # noqa: E402

_DAEMON_FLAGS = {"--no-config": "no_config", "--allow-foreign-namespace": "allow_foreign",
                 "--check": "check"}
_DAEMON_LISTS = {"--config": "files", "--hold": "holds"}


class _DaemonArgs:
    __slots__ = ("allow_foreign", "check", "debug", "files", "holds", "no_config")

    def __init__(self) -> None:
        self.debug = self.no_config = self.allow_foreign = self.check = False
        self.files: list[str] = []
        self.holds: list[str] = []


def _daemon_args(argv: list[str]) -> _DaemonArgs | None:
    """`[--debug] daemon [OPTION]...` read without argparse (the daemon's start path), or
    None for anything else, which argparse reads (and explains: --help, errors, ...)."""
    args = _DaemonArgs()
    i = 0
    while i < len(argv) and argv[i] == "--debug":
        args.debug, i = True, i + 1
    if argv[i:i + 1] != ["daemon"]:
        return None
    i += 1
    while i < len(argv):
        name, eq, value = argv[i].partition("=")
        if name in _DAEMON_FLAGS and not eq:
            setattr(args, _DAEMON_FLAGS[name], True)
        elif name in _DAEMON_LISTS and (eq or i + 1 < len(argv)):
            if not eq:
                i, value = i + 1, argv[i + 1]
            if value.startswith("-") or not value:
                return None
            getattr(args, _DAEMON_LISTS[name]).append(value)
        else:
            return None
        i += 1
    return args


def _parse(argv: list[str]) -> tuple[bool, Callable[[], int]]:
    """(debug, what to run): the daemon without argparse and cli, the rest through cli."""
    fast = _daemon_args(argv)
    if fast is not None:
        def run() -> int:
            from holdmount.daemon import command

            assert fast is not None
            return command(fast.files or None, no_config=fast.no_config, holds=fast.holds,
                           allow_foreign=fast.allow_foreign, check=fast.check)

        return fast.debug, run
    from holdmount import cli

    args = cli.parse(argv)
    return bool(args.debug), lambda: int(args.func(args))


def main(argv: list[str] | None = None) -> int:
    debug, run = _parse(sys.argv[1:] if argv is None else argv)
    logmod.setup(debug=debug)
    try:
        return int(run())
    except Failure as e:
        for message in [f.message for f in getattr(e, "errors", ())] or [e.message]:
            print(f"holdmount: {message}", file=sys.stderr)
        if e.hint:
            print(f"hint: {e.hint}", file=sys.stderr)
        if debug:  # after the message: the first line stays what failed
            logmod.log.exception("where it failed (--debug):")
        return int(e.code)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug: say so in one line unless --debug
        if debug:
            raise
        print(f"holdmount: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        print("hint: rerun with --debug for a traceback and report it", file=sys.stderr)
        return int(Exit.SOFTWARE)


if __name__ == "__main__":
    sys.exit(main())
