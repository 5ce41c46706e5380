"""The command line: one argparse subcommand per verb, each dispatching lazily to its module.

Each `_add_<verb>` function owns one subcommand; its handler imports the module that does the
work only when called, so `holdmount --help` and `holdmount run` start fast.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn

from holdmount import __version__
from holdmount.defaults import DEFAULT_TRIGGER_TIMEOUT, DELEGATE_MODES
from holdmount.errors import Exit


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors follow our format and exit 64 (EX_USAGE)."""

    def error(self, message: str) -> NoReturn:
        verb = self.prog.removeprefix("holdmount").strip()
        print(f"holdmount: {verb + ': ' if verb else ''}{message}", file=sys.stderr)
        print(f"hint: see '{self.prog} --help'", file=sys.stderr)
        sys.exit(int(Exit.USAGE))


def _span(value: str) -> float:
    from holdmount.timespan import parse_timespan

    try:
        return parse_timespan(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _positive_span(value: str) -> float:
    """A trigger timeout: 0 would give up before any open() could answer."""
    seconds = _span(value)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{value!r}: must be more than 0 (e.g. 5s)")
    return seconds


# --- run --------------------------------------------------------------------------------------

def _cmd_run(args: argparse.Namespace) -> int:
    from holdmount.run import main  # __main__ runs it without argparse, too

    return main(args)


def _add_run(sub: Any) -> None:
    p = sub.add_parser(
        "run", help="hold directories for the whole life of a command",
        description="Hold (and check) directories, run COMMAND, release them when it ends. "
        "Options stop at the first non-option argument. Exit status is COMMAND's.",
    )
    p.add_argument("--hold", action="append", default=[], metavar="DIR",
                   help="directory to keep mounted (triggers an automount); repeatable")
    p.add_argument("--protect", action="store_true",
                   help="flock(LOCK_SH) each held directory so systemd-tmpfiles --clean skips it")
    p.add_argument("--require-writable", action="store_true",
                   help="check each held directory by creating a file in it (never access())")
    p.add_argument("--require-exec", action="store_true",
                   help="fail when a held directory is on a noexec mount")
    p.add_argument("--trigger-timeout", type=_positive_span, default=DEFAULT_TRIGGER_TIMEOUT,
                   metavar="SPAN", help="how long a trigger may take (default 30s)")
    p.add_argument("--delegate", choices=DELEGATE_MODES, default=DELEGATE_MODES[0],
                   help="let the holdmount daemon hold in the host mount namespace: auto (when "
                   "it answers, the default), always (fail without it), never")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND [ARG...]")
    p.set_defaults(func=_cmd_run)


# --- hold / release ---------------------------------------------------------------------------

def _cmd_hold(args: argparse.Namespace) -> int:
    import os

    from holdmount.delegate import Delegation

    until = args.until_pid if args.until_pid is not None else os.getppid()
    with Delegation(args.socket) as d:
        reply, _ = d.hold(args.paths, protect=args.protect, until_pid=until)
    for h in reply.get("held", []):
        print(f"holding {h.get('path')}: {h.get('fstype')} on {h.get('mount_point')} "
              f"(lease {reply.get('lease')}, until {reply.get('until')})")
    return 0


def _add_hold(sub: Any) -> None:
    p = sub.add_parser(
        "hold", help="ask the daemon to hold paths until a process exits",
        description="Ask the holdmount daemon to hold each PATH in the host mount namespace "
        "until process PID exits (default: the process that ran this command, e.g. your shell "
        "or script) or `holdmount release`. Safe inside a private mount namespace: PATH is "
        "only opened O_PATH here, which never triggers an automount. A non-root user may hold "
        "only directories it could open itself.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--until-pid", type=int, metavar="PID",
                   help="release when PID exits (default: our parent process)")
    p.add_argument("--protect", action="store_true",
                   help="flock(LOCK_SH) it so systemd-tmpfiles --clean skips it")
    p.add_argument("--socket", metavar="PATH", help="the daemon's control socket")
    p.set_defaults(func=_cmd_hold)


def _cmd_release(args: argparse.Namespace) -> int:
    from holdmount.delegate import Delegation
    from holdmount.errors import Failure

    with Delegation(args.socket) as d:
        try:
            reply = d.release(args.paths)
        except Failure as e:
            if e.code != Exit.NOINPUT or e.hint:
                raise
            raise Failure(e.message.removeprefix("release: "), code=e.code,
                          hint="nothing of yours to release there: it was released already, "
                          "or the process it was held for has exited; `holdmount status` lists "
                          "the delegated holds and their holders") from None
    for path in reply.get("released", []):
        print(f"released {path}")
    return 0


def _add_release(sub: Any) -> None:
    p = sub.add_parser(
        "release", help="release holds the daemon keeps for you",
        description="Release the delegated holds of this user (root: of anyone) on each PATH. "
        "Holds from the daemon's configuration are not released this way.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--socket", metavar="PATH", help="the daemon's control socket")
    p.set_defaults(func=_cmd_release)


# --- merge ------------------------------------------------------------------------------------

def _cmd_merge(args: argparse.Namespace) -> int:
    import json

    from holdmount.merge import merge_tree

    summary = merge_tree(args.staged, args.dest, dry_run=args.dry_run)
    if args.json:
        print(json.dumps(summary.to_json(), indent=2))
    else:
        print(summary.line())
    return 0


def _add_merge(sub: Any) -> None:
    p = sub.add_parser(
        "merge", help="merge a staged tree into DEST by copy + atomic rename",
        description="Copy every entry of STAGED into DEST through a temp file in the target's "
        "own directory and rename it over the target: every DEST file is old or new at any "
        "instant, running programs keep truthful /proc/PID/exe, nothing shares an inode with "
        "STAGED. Rerun after a crash to finish and clean up.",
    )
    p.add_argument("staged", metavar="STAGED", help="the staged tree")
    p.add_argument("dest", metavar="DEST", help="the directory to merge into")
    p.add_argument("--dry-run", action="store_true", help="only say what would change")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_cmd_merge)


# --- overlay ----------------------------------------------------------------------------------

def _cmd_overlay_changes(args: argparse.Namespace) -> int:
    from holdmount.overlay.changelist import main  # __main__ runs it without argparse, too

    return main(args.merged, as_json=args.json)


def _add_overlay(sub: Any) -> None:
    p = sub.add_parser("overlay", help="overlayfs helpers",
                       description="Questions about mounted overlayfs filesystems.")
    osub = p.add_subparsers(dest="overlay_verb", metavar="COMMAND", parser_class=_Parser)
    osub.required = True
    c = osub.add_parser(
        "changes", help="list what changed in a mounted overlay, from its upperdir only",
        description="Walk only the upperdir of the overlay mounted on MERGED and list added "
        "(A), modified/copied-up (M), deleted/whiteout (D), opaque (O) and renamed (R) paths.",
    )
    c.add_argument("merged", metavar="MERGED", help="the overlay's mount point")
    c.add_argument("--json", action="store_true", help="print JSON")
    c.set_defaults(func=_cmd_overlay_changes)


# --- doctor -----------------------------------------------------------------------------------

def _cmd_doctor(args: argparse.Namespace) -> int:
    from holdmount.doctor import Options, main

    return main(args.paths, Options(
        check_writable=args.check_writable,
        trigger_timeout=args.trigger_timeout,
        tmpfiles_root=args.tmpfiles_root,
        systemd_address=args.systemd_address,
    ), as_json=args.json)


def _add_doctor(sub: Any) -> None:
    p = sub.add_parser(
        "doctor", help="say what will happen to a path, and what to do about it",
        description="Diagnose each PATH: automount trigger, idle timeout and systemd unit; who "
        "holds it; mount namespace; writability; systemd-tmpfiles age rules; overlay layers. "
        "Never triggers an automount unless --check-writable is given. Exit status: 0 no "
        "problems, 1 warnings, 2 problems.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.add_argument("--check-writable", action="store_true",
                   help="trigger the automount (bounded) and create a file for real")
    p.add_argument("--trigger-timeout", type=_positive_span, default=10.0, metavar="SPAN",
                   help="how long --check-writable's trigger may take (default 10s)")
    p.add_argument("--tmpfiles-root", metavar="DIR",
                   help="read tmpfiles.d below DIR (systemd-tmpfiles --root=DIR)")
    p.add_argument("--systemd-address", metavar="ADDRESS",
                   help="D-Bus address of systemd (e.g. unix:path=/run/systemd/private)")
    p.set_defaults(func=_cmd_doctor)


# --- daemon -----------------------------------------------------------------------------------

def _load_config(args: argparse.Namespace) -> Any:
    from holdmount import config

    files = [] if args.no_config else (args.config or config.default_files())
    return config.load(files, extra_holds=args.hold)


def _cmd_daemon(args: argparse.Namespace) -> int:
    from holdmount.daemon import command  # __main__ runs it without argparse, too

    return command(args.config, no_config=args.no_config, holds=args.hold,
                   allow_foreign=args.allow_foreign_namespace, check=args.check)


def _add_daemon(sub: Any) -> None:
    p = sub.add_parser(
        "daemon", help="hold configured paths, watch the marker, finalize on SIGTERM",
        description="Run as a systemd Type=notify service: hold the configured directories, "
        "watch the marker, and on SIGTERM run the finalize actions while still holding. "
        "Reads /etc/holdmount/holdmount.toml and /etc/holdmount/conf.d/*.toml (later wins). "
        "Exit status 78 means a configuration error.",
    )
    p.add_argument("--config", action="append", metavar="FILE",
                   help="read FILE instead of the default files; repeatable, later wins")
    p.add_argument("--no-config", action="store_true",
                   help="read no configuration file (only --hold)")
    p.add_argument("--hold", action="append", default=[], metavar="DIR",
                   help="also hold DIR (when=always); repeatable")
    p.add_argument("--allow-foreign-namespace", action="store_true",
                   help="run even when not in PID 1's mount namespace (tests, containers)")
    p.add_argument("--check", action="store_true",
                   help="validate the configuration and exit (0 or 78)")
    p.set_defaults(func=_cmd_daemon)


# --- status / report --------------------------------------------------------------------------

def _cmd_status(args: argparse.Namespace) -> int:
    from holdmount.status import main

    return main(as_json=args.json, socket=args.socket)


def _add_status(sub: Any) -> None:
    p = sub.add_parser(
        "status", help="what the daemon holds, the marker, the actions",
        description="Ask the running daemon (over $HOLDMOUNT_SOCKET, default "
        "/run/holdmount/control) for its holds, marker state and actions. Exit status 69 when "
        "the daemon is not running.",
    )
    p.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")
    p.add_argument("--socket", metavar="PATH", help="the daemon's control socket")
    p.set_defaults(func=_cmd_status)


def _cmd_report(args: argparse.Namespace) -> int:
    from holdmount.stamp import report

    stamp = args.stamp or _load_config(args).daemon.stamp
    return report(stamp, as_json=args.json)


def _add_report(sub: Any) -> None:
    p = sub.add_parser(
        "report", help="show the finalize failure of an earlier shutdown; fail if there is one",
        description="Print the failure stamp the daemon wrote when an action failed (the stamp "
        "path comes from the configuration) and exit 1; exit 0 when there is none. Run at boot "
        "by holdmount-report.service.",
    )
    p.add_argument("--stamp", metavar="FILE", help="the stamp file (default: from the config)")
    p.add_argument("--config", action="append", metavar="FILE", help="configuration file(s)")
    p.add_argument("--json", action="store_true",
                   help="print the stamp as JSON (docs/json.md), with the same exit status")
    p.set_defaults(func=_cmd_report, no_config=False, hold=[])


# --- parser -----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="holdmount",
        description="Keep mounts alive and run finalize work safely at shutdown, during long "
        "jobs and across automount expiry and tmpfiles cleanup.",
    )
    parser.add_argument("--version", action="version", version=f"holdmount {__version__}")
    parser.add_argument("--debug", action="store_true", help="log debug messages and show "
                        "tracebacks")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _add_run(sub)
    _add_merge(sub)
    _add_overlay(sub)
    _add_doctor(sub)
    _add_daemon(sub)
    _add_status(sub)
    _add_report(sub)
    _add_hold(sub)
    _add_release(sub)
    _debug_everywhere(parser)
    return parser


def _debug_everywhere(parser: argparse.ArgumentParser) -> None:
    """--debug after the verb too (SUPPRESS: where it is absent the global value stays)."""
    for verb_parser in _subparsers(parser).values():
        verb_parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                 help="log debug messages and show tracebacks")
        _debug_everywhere(verb_parser)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # report it as the subcommand's error ("holdmount run: unrecognized ...")
        verb_parser = _subparsers(parser).get(args.verb, parser)
        verb_parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}
