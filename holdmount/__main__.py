"""Entry point: parse, set up logging, dispatch, map failures to exit codes."""

from __future__ import annotations

import sys

from holdmount import cli
from holdmount import log as logmod
from holdmount.errors import Exit, Failure


def main(argv: list[str] | None = None) -> int:
    args = cli.parse(sys.argv[1:] if argv is None else argv)
    logmod.setup(debug=args.debug)
    try:
        return int(args.func(args))
    except Failure as e:
        print(f"holdmount: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"hint: {e.hint}", file=sys.stderr)
        if args.debug:  # after the message: the first line stays what failed
            logmod.log.exception("where it failed (--debug):")
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
