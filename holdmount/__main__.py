"""Entry point: parse, set up logging, dispatch, map failures to exit codes.

`daemon`, `run`, `status` and `overlay changes` are read without argparse or holdmount.cli
(holdmount.quickargs: their start paths import only what they use); anything else, and any such
command line that reader does not take as it is (--help, an abbreviation, an error), goes
through argparse, which also gives every usage message.

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
from holdmount.quickargs import Args  # noqa: E402
from holdmount.quickargs import parse as parse_quick  # noqa: E402


def _daemon(args: Args) -> int:
    from holdmount.daemon import command

    return command(args.config or None, no_config=args.no_config, holds=args.hold,
                   allow_foreign=args.allow_foreign_namespace, check=args.check)


def _run(args: Args) -> int:
    from holdmount.run import main

    return main(args)


def _status(args: Args) -> int:
    from holdmount.status import main

    return main(as_json=args.json, socket=args.socket)


def _changes(args: Args) -> int:
    from holdmount.overlay.changelist import main

    return main(args.merged, as_json=args.json)


_QUICK: dict[str, Callable[[Args], int]] = {"daemon": _daemon, "run": _run, "status": _status,
                                            "changes": _changes}


def _parse(argv: list[str]) -> tuple[bool, Callable[[], int]]:
    """(debug, what to run): the common command lines without argparse and cli
    (holdmount.quickargs), the rest through cli."""
    quick = parse_quick(argv)
    if quick is not None:
        return bool(quick.debug), lambda: _QUICK[quick.verb](quick)
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
