"""The common command lines read without argparse: `daemon`, `run`, `status`, `overlay changes`.

argparse and holdmount.cli cost ~6 ms per start (with gettext and shutil at parse time): too
much for the daemon's way to READY=1 and for `run` (a wrapper started per build job). These
readers take only the exact option names, `--opt VALUE` and `--opt=VALUE`; anything else
(--help, an abbreviation, a bad value, an unknown option) makes them return None, and the
command line goes through argparse, which then gives every usage message as before.
"""

from __future__ import annotations

from holdmount.defaults import DEFAULT_TRIGGER_TIMEOUT, DELEGATE_MODES

TYPE_CHECKING = False  # typing costs ~1 MiB at run time; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

_FLAG, _ONE, _LIST = "flag", "one", "list"


def _timeout(value: str) -> float | None:
    """A trigger timeout as cli reads it (a time span above 0); None: let argparse say why."""
    from holdmount.timespan import parse_timespan

    try:
        seconds = parse_timespan(value)
    except ValueError:
        return None
    return seconds if seconds > 0 else None


def _delegate(value: str) -> str | None:
    return value if value in DELEGATE_MODES else None


class Args:
    """The options read, by argparse's attribute names (like argparse.Namespace)."""

    def __init__(self, **values: object) -> None:
        self.__dict__.update(values)

    if TYPE_CHECKING:  # any attribute, as on argparse.Namespace
        def __getattr__(self, name: str) -> Any: ...

        def __setattr__(self, name: str, value: Any) -> None: ...


# verb -> {option: (attribute, kind, convert)}: each verb's own options, as holdmount.cli has them
_OPTIONS: dict[str, dict[str, tuple[str, str, Callable[[str], object] | None]]] = {
    "daemon": {"--config": ("config", _LIST, None), "--no-config": ("no_config", _FLAG, None),
               "--hold": ("hold", _LIST, None),
               "--allow-foreign-namespace": ("allow_foreign_namespace", _FLAG, None),
               "--check": ("check", _FLAG, None)},
    "run": {"--hold": ("hold", _LIST, None), "--protect": ("protect", _FLAG, None),
            "--require-writable": ("require_writable", _FLAG, None),
            "--require-exec": ("require_exec", _FLAG, None),
            "--trigger-timeout": ("trigger_timeout", _ONE, _timeout),
            "--delegate": ("delegate", _ONE, _delegate)},
    "status": {"--json": ("json", _FLAG, None), "--socket": ("socket", _ONE, None)},
    "changes": {"--json": ("json", _FLAG, None)},
}
_DEFAULTS: dict[str, dict[str, object]] = {
    "daemon": {"config": [], "hold": [], "no_config": False, "allow_foreign_namespace": False,
               "check": False},
    "run": {"hold": [], "protect": False, "require_writable": False, "require_exec": False,
            "trigger_timeout": DEFAULT_TRIGGER_TIMEOUT, "delegate": DELEGATE_MODES[0]},
    "status": {"json": False, "socket": None},
    "changes": {"json": False},
}
_POSITIONALS = {"daemon": (0, 0), "status": (0, 0), "changes": (1, 1)}  # (min, max)


def parse(argv: list[str]) -> Args | None:
    """`[--debug] VERB ...` for the verbs above (`run`'s options end at its COMMAND), with
    args.verb set; None for anything argparse is to read."""
    i, debug = 0, False
    while argv[i:i + 1] == ["--debug"]:
        debug, i = True, i + 1
    verb = argv[i:i + 1]
    if verb == ["overlay"] and argv[i + 1:i + 2] == ["changes"]:
        verb, i = ["changes"], i + 1
    if not verb or verb[0] not in _OPTIONS:
        return None
    args = Args(verb=verb[0], debug=debug,
                **{k: list(v) if isinstance(v, list) else v
                   for k, v in _DEFAULTS[verb[0]].items()})
    positionals = _read(argv, i + 1, args)
    if positionals is None:
        return None
    if args.verb == "run":
        args.command = positionals
        return args if positionals else None  # no COMMAND: argparse's way, same message
    low, high = _POSITIONALS[args.verb]
    if not low <= len(positionals) <= high:
        return None
    if args.verb == "changes":
        args.merged = positionals[0]
    return args


def _read(argv: list[str], i: int, args: Args) -> list[str] | None:
    """The options from argv[i:] into `args`; returns the positional arguments (for `run`:
    COMMAND and everything after it), None when argparse is to read the line."""
    options = _OPTIONS[args.verb]
    positionals: list[str] = []
    while i < len(argv):
        name, eq, value = argv[i].partition("=")
        if args.verb == "run" and (argv[i] == "--" or not argv[i].startswith("-")):
            return argv[i + (argv[i] == "--"):]
        if not argv[i].startswith("-"):
            positionals.append(argv[i])
        elif argv[i] == "--debug":
            args.debug = True
        elif name in options and options[name][1] == _FLAG and not eq:
            setattr(args, options[name][0], True)
        elif name in options and options[name][1] != _FLAG and (eq or i + 1 < len(argv)):
            if not eq:
                i, value = i + 1, argv[i + 1]
            attr, kind, convert = options[name]
            if not value or value.startswith("-"):
                return None
            got = convert(value) if convert else value
            if got is None:
                return None
            if kind == _LIST:
                getattr(args, attr).append(got)
            else:
                setattr(args, attr, got)
        else:
            return None
        i += 1
    return [] if args.verb == "run" else positionals
