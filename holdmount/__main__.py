"""Entry point: parse, set up logging, dispatch, map failures to exit codes.

`holdmount daemon` blocks SIGTERM, SIGINT and SIGHUP here, before any other import: a stop
request that comes while the interpreter is still importing stays pending instead of killing
the process, and the daemon's loop takes it (and finalizes) once its handlers are in place
(holdmount.daemon.Signals unblocks them). A signal that comes before this line runs — while the
interpreter itself starts — can only be kept by blocking it before exec (docs/daemon.md).
"""

from __future__ import annotations

import signal
import sys

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _verb(argv: list[str]) -> str | None:
    """The subcommand: the first argument that is not an option (global options take none)."""
    return next((a for a in argv if not a.startswith("-")), None)


if _verb(sys.argv[1:]) == "daemon":
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)

from holdmount import cli  # noqa: E402 - after the signals are blocked
from holdmount import log as logmod  # noqa: E402
from holdmount.errors import Exit, Failure  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = cli.parse(sys.argv[1:] if argv is None else argv)
    logmod.setup(debug=args.debug)
    try:
        return int(args.func(args))
    except Failure as e:
        if args.debug:
            logmod.log.exception("failure")
        for message in [f.message for f in getattr(e, "errors", ())] or [e.message]:
            print(f"holdmount: {message}", file=sys.stderr)
        if e.hint:
            print(f"hint: {e.hint}", file=sys.stderr)
        return int(e.code)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug: say so in one line unless --debug
        if args.debug:
            raise
        print(f"holdmount: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        print("hint: rerun with --debug for a traceback and report it", file=sys.stderr)
        return int(Exit.SOFTWARE)


if __name__ == "__main__":
    sys.exit(main())
