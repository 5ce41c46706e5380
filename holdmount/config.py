"""The daemon's configuration: TOML files (tomllib) -> frozen dataclasses.

Files: `/etc/holdmount/holdmount.toml`, then `/etc/holdmount/conf.d/*.toml` sorted by name; a
missing main file is an empty one. Later files win, like systemd drop-ins:

- tables (`[daemon]`, `[marker]`, `[control]`) merge key by key: a later file sets only the
  keys it names;
- `[[hold]]` entries are identified by `path` and `[[action]]` entries by `name`: a later entry
  with the same identity updates the keys it names and keeps the first one's position (actions
  run in that order); a new identity is appended. `exec` and `merge` are alternatives: setting
  one drops the other. `enabled = false` removes an entry. Within one file an identity may
  appear only once.

Every error names the file and the key (`config(/etc/holdmount/holdmount.toml): action[x].timeout:
invalid time span 'soon'`) and exits 78 (EX_CONFIG), so systemd does not restart in a loop.
Every section of every file is read even after an error, so one run reports them all
(`ConfigErrors`); a file is at most MAX_FILE_SIZE bytes and MAX_NESTING arrays/tables deep.
`check` adds what only the running system can tell (`daemon --check`): the control group
exists, each action's program is an executable file.
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import grp
import math
import os
import stat
import tomllib
from collections.abc import Callable, Mapping, Sequence

from holdmount.errors import Exit, Failure
from holdmount.hold import DEFAULT_TRIGGER_TIMEOUT
from holdmount.timespan import parse_timespan

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:  # annotations only
    from typing import Any

CONFIG_DIR = "/etc/holdmount"
MAIN_FILE = f"{CONFIG_DIR}/holdmount.toml"
DROPIN_DIR = f"{CONFIG_DIR}/conf.d"
DEFAULT_SOCKET = "/run/holdmount/control"
SOCKET_ENV = "HOLDMOUNT_SOCKET"
DEFAULT_STAMP = "/var/lib/holdmount/failure.stamp"
DEFAULT_ACTION_TIMEOUT = 300.0
MAX_FILE_SIZE = 1024 * 1024  # bytes of one configuration file
MAX_NESTING = 32  # arrays and inline tables inside one another (tomllib recurses per level)
# per-uid ceilings on the control socket (docs/security.md); root is never subject to them
DEFAULT_CONNECTIONS_PER_UID = 16
DEFAULT_LEASES_PER_UID = 64
DEFAULT_PATHS_PER_UID = 64
DEFAULT_IDLE_TIMEOUT = 30.0


class When(enum.StrEnum):
    ALWAYS = "always"  # held / run regardless of the marker
    STAGED = "staged"  # held only while the marker exists / run only when it exists at SIGTERM


@dataclasses.dataclass(frozen=True)
class HoldConfig:
    path: str
    when: When = When.ALWAYS
    protect: bool = False
    origin: str = "<command line>"  # the file that defined it (for messages)


@dataclasses.dataclass(frozen=True)
class MergeSpec:
    source: str  # `from`: the staged tree
    dest: str  # `to`: where it is merged


@dataclasses.dataclass(frozen=True)
class ActionConfig:
    name: str
    exec: tuple[str, ...] | None = None
    merge: MergeSpec | None = None
    when: When = When.STAGED
    timeout: float = DEFAULT_ACTION_TIMEOUT
    origin: str = ""

    @property
    def kind(self) -> str:
        return "merge" if self.merge is not None else "exec"


@dataclasses.dataclass(frozen=True)
class MarkerConfig:
    path: str
    # when this path exists at SIGTERM, `staged` actions are skipped (ostree's
    # /run/ostree/staged-deployment-locked: the admin asked not to finalize this boot)
    inhibit: str | None = None


@dataclasses.dataclass(frozen=True)
class ControlConfig:
    path: str = DEFAULT_SOCKET  # HOLDMOUNT_SOCKET in the environment overrides it
    mode: int = 0o666  # status is public; ops that change anything check SO_PEERCRED
    group: str | None = None
    connections_per_uid: int = DEFAULT_CONNECTIONS_PER_UID  # open at once
    leases_per_uid: int = DEFAULT_LEASES_PER_UID  # delegated hold requests alive at once
    paths_per_uid: int = DEFAULT_PATHS_PER_UID  # distinct paths those leases hold
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT  # a connection without a lease closes after it


@dataclasses.dataclass(frozen=True)
class DaemonConfig:
    stamp: str = DEFAULT_STAMP
    allow_foreign_namespace: bool = False
    trigger_timeout: float = DEFAULT_TRIGGER_TIMEOUT
    # hand every held fd to the service manager (FDSTORE=1), adopt them back after a restart
    fdstore: bool = True


@dataclasses.dataclass(frozen=True)
class Config:
    daemon: DaemonConfig = DaemonConfig()
    control: ControlConfig = ControlConfig()
    marker: MarkerConfig | None = None
    holds: tuple[HoldConfig, ...] = ()
    actions: tuple[ActionConfig, ...] = ()
    files: tuple[str, ...] = ()  # what was read, in order

    def socket_path(self, environ: Mapping[str, str] = os.environ) -> str:
        return environ.get(SOCKET_ENV) or self.control.path


# --- errors -------------------------------------------------------------------------------------

CHECK_HINT = "fix the file; `holdmount daemon --check` validates it"  # reworded by load_checked


class ConfigErrors(Failure):
    """Several configuration errors at once: `message` is the first, `errors` all of them."""

    def __init__(self, errors: Sequence[Failure], partial: Config) -> None:
        super().__init__(errors[0].message, hint=errors[0].hint, code=errors[0].code)
        self.errors = tuple(errors)
        self.partial = partial  # what was valid (for `check`, which reports the rest)


def _fail(file: str, key: str, message: str, hint: str | None = None) -> Failure:
    where = f"{key}: " if key else ""
    return Failure(f"config({file}): {where}{message}",
                   hint=hint or CHECK_HINT,
                   code=Exit.CONFIG)


class _Reader:
    """Typed access to one TOML table; every error names the file and the dotted key."""

    def __init__(self, file: str, prefix: str, table: Mapping[str, Any], allowed: Sequence[str]):
        self.file = file
        self.prefix = prefix
        self.table = table
        for key in table:
            if key not in allowed:
                raise _fail(file, self.key(key), "unknown key",
                            hint=f"known keys here: {', '.join(allowed)}")

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def has(self, name: str) -> bool:
        return name in self.table

    def _typed(self, name: str, kind: type, what: str) -> Any:
        value = self.table[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise _fail(self.file, self.key(name),
                        f"must be {what}, not {_toml_type(value)} {_show(value)}")
        return value

    def string(self, name: str) -> str:
        value: str = self._typed(name, str, "a string")
        if "\0" in value:
            raise _fail(self.file, self.key(name), "contains a NUL character")
        return value

    def count(self, name: str, low: int, high: int) -> int:
        value: int = self._typed(name, int, "an integer")
        if not low <= value <= high:
            raise _fail(self.file, self.key(name), f"must be {low} to {high}, not {value}")
        return value

    def boolean(self, name: str) -> bool:
        value: bool = self._typed(name, bool, "true or false")
        return value

    def path(self, name: str) -> str:
        value = self.string(name)
        if not value.startswith("/"):
            raise _fail(self.file, self.key(name), f"must be an absolute path, not {value!r}")
        bad = next((c for c in value if ord(c) < 32 or ord(c) == 127), None)
        if bad is not None:
            raise _fail(self.file, self.key(name),
                        f"contains a control character ({bad!r}): {value!r}")
        return os.path.normpath(value).replace("//", "/")

    def span(self, name: str, *, positive: bool = True) -> float:
        value = self.table[name]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = float(value)
        elif isinstance(value, str):
            try:
                seconds = parse_timespan(value)
            except ValueError as e:
                raise _fail(self.file, self.key(name), str(e),
                            hint='use systemd time-span syntax, e.g. "90s", "5min", '
                            '"1h 30min"') from None
        else:
            raise _fail(self.file, self.key(name), f"must be a time span like \"5min\", not "
                        f"{_toml_type(value)} {_show(value)}")
        if math.isnan(seconds) or math.isinf(seconds) or (positive and seconds <= 0) \
                or seconds > 365 * 86400:
            raise _fail(self.file, self.key(name),
                        f"must be a finite time span > 0 and at most a year, not {_show(value)}")
        return seconds

    def when(self, name: str) -> When:
        value = self.string(name)
        try:
            return When(value)
        except ValueError:
            raise _fail(self.file, self.key(name),
                        f'must be "always" or "staged", not {value!r}') from None

    def argv(self, name: str) -> tuple[str, ...]:
        value = self._typed(name, list, "a list of strings")
        if not value or not all(isinstance(v, str) and "\0" not in v for v in value):
            raise _fail(self.file, self.key(name),
                        'must be a non-empty list of strings, e.g. ["/usr/bin/true"]')
        if not value[0].startswith("/"):
            raise _fail(self.file, self.key(name),
                        f"the program must be an absolute path, not {value[0]!r}",
                        hint="the daemon does not search PATH at shutdown: name the program "
                        "by its full path")
        return tuple(value)

    def table_(self, name: str) -> Mapping[str, Any]:
        value: Mapping[str, Any] = self._typed(name, dict, "a table")
        return value


def _toml_type(value: object) -> str:
    return {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# --- one file -----------------------------------------------------------------------------------

_TOP = ("daemon", "marker", "control", "hold", "action")
_DAEMON = ("stamp", "allow_foreign_namespace", "trigger_timeout", "fdstore")
_MARKER = ("path", "inhibit")
_CONTROL = ("path", "mode", "group", "connections_per_uid", "leases_per_uid", "paths_per_uid",
            "idle_timeout")
_HOLD = ("path", "when", "protect", "enabled")
_ACTION = ("name", "exec", "merge", "when", "timeout", "enabled")
_SECTIONS = {"daemon": _DAEMON, "marker": _MARKER, "control": _CONTROL}


@dataclasses.dataclass
class _Partial:
    """Keys collected so far for one entry, with the file that set each."""

    values: dict[str, Any]
    origin: str


_READ_HINTS = {
    errno.ENOENT: "check the path given to --config (without --config the daemon reads "
    "/etc/holdmount/holdmount.toml and /etc/holdmount/conf.d/*.toml)",
    errno.EISDIR: "--config names a file; files in /etc/holdmount/conf.d/ are read without it",
}


def _read_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_SIZE + 1)
    except OSError as e:
        raise Failure(f"config({path}): {os.strerror(e.errno or 0) if e.errno else e}",
                      hint=_READ_HINTS.get(e.errno or 0, "check the file's permissions (the "
                                           "daemon reads it as root)"),
                      code=Exit.CONFIG) from None
    if len(data) > MAX_FILE_SIZE:
        raise _fail(path, "", f"larger than {MAX_FILE_SIZE} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _fail(path, "", f"not UTF-8 (byte {e.start})") from None
    return _parse(path, text)


def _parse(file: str, text: str) -> dict[str, Any]:
    """tomllib, after a check that the nesting stays below MAX_NESTING (tomllib recurses once
    per level: 3,000 levels would be a RecursionError, an internal error, not a config one)."""
    deep = _too_deep(text)
    if deep is not None:
        line, key = deep
        raise _fail(file, key, f"nested more than {MAX_NESTING} arrays or tables deep "
                    f"(line {line})")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise _fail(file, "", f"TOML syntax error: {e}") from None
    except RecursionError:  # not reached after _too_deep; kept so it can never be a traceback
        raise _fail(file, "", f"nested more than {MAX_NESTING} arrays or tables deep") from None


def _too_deep(text: str) -> tuple[int, str] | None:
    """(line, dotted key) where brackets outside strings and comments first nest deeper than
    MAX_NESTING, or None. A scan, not a parser: a syntax error is left to tomllib."""
    depth, line, i, n = 0, 1, 0, len(text)
    table = key = ""
    while i < n:
        c = text[i]
        if c in "\"'":
            quote = c * 3 if text.startswith(c * 3, i) else c
            end = i + len(quote)
            while end < n and not text.startswith(quote, end):
                if c == '"' and text[end] == "\\":
                    end += 1
                elif text[end] == "\n" and len(quote) == 1:
                    break  # an unterminated one-line string: tomllib says so
                end += 1
            line += text.count("\n", i, end)
            i = end + len(quote)
            continue
        if c == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        if c == "\n":
            line += 1
        elif c in "[{":
            if depth == 0 and c == "[" and not key:  # a table header: [name] or [[name]]
                close = text.find("]", i)
                table = text[i:close].strip("[ \t") if close > 0 else table
            depth += 1
            if depth > MAX_NESTING:
                return line, ".".join(k for k in (table, key) if k)
        elif c in "]}":
            depth = max(0, depth - 1)
        elif c == "=" and depth == 0:
            start = text.rfind("\n", 0, i) + 1
            key = text[start:i].strip()
        if c == "\n" and depth == 0:
            key = ""
        i += 1
    return None


def _array_of_tables(file: str, doc: Mapping[str, Any], name: str) -> list[Mapping[str, Any]]:
    value = doc.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise _fail(file, name, f"must be an array of tables ([[{name}]]), not "
                    f"{_toml_type(value)}")
    return value


class _Merger:
    def __init__(self) -> None:
        self.daemon: dict[str, Any] = {}
        self.marker: dict[str, Any] = {}
        self.marker_origin = ""
        self.control: dict[str, Any] = {}
        self.holds: dict[str, _Partial] = {}  # by path, in order of first appearance
        self.actions: dict[str, _Partial] = {}  # by name
        self.errors: list[Failure] = []

    def add(self, file: str, doc: Mapping[str, Any]) -> None:
        """Read one file's document; an error is recorded in `errors` and the next section,
        entry or file is read all the same (`--check` reports them all)."""
        self._try(_Reader, file, "", {k: v for k, v in doc.items() if k not in _TOP}, _TOP)
        top = _Reader(file, "", {k: v for k, v in doc.items() if k in _TOP}, _TOP)
        for name, section in (("daemon", self._daemon), ("marker", self._marker),
                              ("control", self._control)):
            if top.has(name):
                self._try(lambda n=name, f=section: f(_Reader(file, n, top.table_(n),
                                                              _SECTIONS[n])))
        seen: set[str] = set()
        holds = self._try(_array_of_tables, file, doc, "hold") or []
        for index, entry in enumerate(holds, 1):
            self._try(self._hold, file, _entry_key("hold", index, entry.get("path")), entry,
                      seen)
        names: set[str] = set()
        actions = self._try(_array_of_tables, file, doc, "action") or []
        for index, entry in enumerate(actions, 1):
            self._try(self._action, file, _entry_key("action", index, entry.get("name")),
                      entry, names)

    def _try(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except Failure as e:
            self.errors.append(e)
            return None

    def _daemon(self, r: _Reader) -> None:
        if r.has("stamp"):
            self.daemon["stamp"] = r.path("stamp")
        if r.has("allow_foreign_namespace"):
            self.daemon["allow_foreign_namespace"] = r.boolean("allow_foreign_namespace")
        if r.has("trigger_timeout"):
            self.daemon["trigger_timeout"] = r.span("trigger_timeout")
        if r.has("fdstore"):
            self.daemon["fdstore"] = r.boolean("fdstore")

    def _marker(self, r: _Reader) -> None:
        for key in ("path", "inhibit"):
            if r.has(key):
                self.marker[key] = r.path(key)
        self.marker_origin = r.file

    def _hold(self, file: str, prefix: str, entry: Mapping[str, Any], seen: set[str]) -> None:
        r = _Reader(file, prefix, entry, _HOLD)
        if not r.has("path"):
            raise _fail(r.file, r.key("path"), "missing (every [[hold]] names a path)")
        path = r.path("path")
        if path in seen:
            raise _fail(r.file, r.key("path"), f"duplicate hold {path!r} in one file")
        seen.add(path)
        values: dict[str, Any] = {"path": path}
        if r.has("when"):
            values["when"] = r.when("when")
        if r.has("protect"):
            values["protect"] = r.boolean("protect")
        if r.has("enabled"):
            values["enabled"] = r.boolean("enabled")
        _update(self.holds, path, values, r.file)

    def _action(self, file: str, prefix: str, entry: Mapping[str, Any], names: set[str]) -> None:
        r = _Reader(file, prefix, entry, _ACTION)
        if not r.has("name"):
            raise _fail(file, r.key("name"), "missing (every [[action]] has a name)")
        name = r.string("name")
        if not name or not all(c.isalnum() or c in "-_.@" for c in name) or len(name) > 64:
            raise _fail(file, r.key("name"), f"{name!r}: use 1-64 letters, digits, - _ . @")
        if name in names:
            raise _fail(file, r.key("name"), f"duplicate action name {name!r} in one file")
        names.add(name)
        values: dict[str, Any] = {"name": name}
        if r.has("exec") and r.has("merge"):
            raise _fail(file, r.key("merge"), "an action has either exec or merge, not both")
        if r.has("exec"):
            values["exec"] = r.argv("exec")
            values["merge"] = None
        if r.has("merge"):
            values["merge"] = _merge_spec(file, r.key("merge"), r.table_("merge"))
            values["exec"] = None
        if r.has("when"):
            values["when"] = r.when("when")
        if r.has("timeout"):
            values["timeout"] = r.span("timeout")
        if r.has("enabled"):
            values["enabled"] = r.boolean("enabled")
        _update(self.actions, name, values, file)

    def _control(self, r: _Reader) -> None:
        if r.has("path"):
            self.control["path"] = r.path("path")
        if r.has("mode"):
            text = r.string("mode")
            try:
                mode = int(text, 8)
            except ValueError:
                mode = -1
            if not 0 <= mode <= 0o777:
                raise _fail(r.file, r.key("mode"), f'must be an octal mode like "0660", not '
                            f"{text!r}")
            self.control["mode"] = mode
        if r.has("group"):
            self.control["group"] = r.string("group")
        for key in ("connections_per_uid", "leases_per_uid", "paths_per_uid"):
            if r.has(key):
                self.control[key] = r.count(key, 1, 1_000_000)
        if r.has("idle_timeout"):
            self.control["idle_timeout"] = r.span("idle_timeout")

    def build(self, files: Sequence[str], extra_holds: Sequence[str]) -> Config:
        """The Config, or ConfigErrors with every error recorded while reading and here."""
        err = self.errors.append
        marker = None
        if self.marker:
            if "path" not in self.marker:
                err(_fail(self.marker_origin, "marker.path", "missing ([marker] needs a path)"))
            else:
                marker = MarkerConfig(**self.marker)
        holds = [HoldConfig(**{k: v for k, v in p.values.items() if k != "enabled"},
                            origin=p.origin)
                 for p in self.holds.values() if p.values.get("enabled", True)]
        for path in extra_holds:
            if not path.startswith("/"):
                err(Failure(f"daemon: --hold {path}: must be an absolute path",
                            code=Exit.USAGE))
                continue
            norm = os.path.normpath(path)
            if all(h.path != norm for h in holds):
                holds.append(HoldConfig(path=norm))
        actions = []
        for p in self.actions.values():
            if not p.values.get("enabled", True):
                continue
            values = {k: v for k, v in p.values.items() if k != "enabled"}
            name = values["name"]
            if values.get("exec") is None and values.get("merge") is None:
                err(_fail(p.origin, f"action[{name}].exec",
                          "missing (an action runs a command: exec = [...], or merges a "
                          "tree: merge = { from = ..., to = ... })"))
                continue
            actions.append(ActionConfig(**values, origin=p.origin))
        if marker is None and not self.marker:
            staged = [(h.origin, f"hold[{h.path}].when") for h in holds
                      if h.when is When.STAGED]
            staged += [(a.origin, f"action[{a.name}].when") for a in actions
                       if a.when is When.STAGED]
            for origin, key in staged:
                err(_fail(origin, key, '"staged" needs a marker: add [marker] path = "..."'))
        for a in actions:
            if a.merge is not None and not merge_available():
                err(_fail(a.origin, f"action[{a.name}].merge",
                          "this holdmount has no merge support (holdmount.merge missing)"))
        config = Config(daemon=DaemonConfig(**self.daemon),
                        control=ControlConfig(**self.control), marker=marker,
                        holds=tuple(holds), actions=tuple(actions), files=tuple(files))
        if self.errors:
            raise ConfigErrors(self.errors, config)
        return config


def _entry_key(table: str, index: int, identity: object) -> str:
    """hold[/boot], action[finalize]: an entry is named by its identity, as after merging; by
    its position in the file (from 1) when it has no printable string identity (an error line
    must stay one line)."""
    named = isinstance(identity, str) and identity.isprintable() and 0 < len(identity) < 256
    return f"{table}[{identity if named else index}]"


def _update(entries: dict[str, _Partial], ident: str, values: dict[str, Any], file: str) -> None:
    if ident in entries:
        entries[ident].values.update(values)
    else:
        entries[ident] = _Partial(values, file)


def _merge_spec(file: str, key: str, table: Mapping[str, Any]) -> MergeSpec:
    r = _Reader(file, key, table, ("from", "to"))
    for k in ("from", "to"):
        if not r.has(k):
            raise _fail(file, r.key(k), "missing (merge = { from = STAGED, to = DEST })")
    return MergeSpec(source=r.path("from"), dest=r.path("to"))


def merge_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("holdmount.merge") is not None


# --- the set of files ---------------------------------------------------------------------------

def default_files(main: str | os.PathLike[str] = MAIN_FILE,
                  dropins: str | os.PathLike[str] = DROPIN_DIR) -> list[str]:
    """The main file (when it exists) and the drop-ins, sorted by file name."""
    main, dropins = os.fspath(main), os.fspath(dropins)
    files = [main] if os.path.exists(main) else []
    try:
        names = sorted(n for n in os.listdir(dropins) if n.endswith(".toml"))
    except FileNotFoundError:
        names = []
    except OSError as e:
        raise Failure(f"config({dropins}): {os.strerror(e.errno or 0)}",
                      code=Exit.CONFIG) from None
    files += [os.path.join(dropins, n) for n in names]
    return files


def load(files: Sequence[str], *, extra_holds: Sequence[str] = (),
         reader: Callable[[str], dict[str, Any]] = _read_file) -> Config:
    merger = _Merger()
    for file in files:
        doc = merger._try(reader, file)
        if doc is not None:
            merger.add(file, doc)
    return merger.build(files, extra_holds)


def loads(text: str, name: str = "<string>") -> Config:
    """Parse one document (tests, fuzzing)."""
    return load([name], reader=lambda file: _parse(file, text))


def load_checked(files: Sequence[str], *, extra_holds: Sequence[str] = ()) -> Config:
    """`daemon --check`: `load`, then `check` even when parsing failed (on what was valid);
    ConfigErrors names every error found. Hints that point at `--check` are reworded: the user
    is running it."""
    try:
        config = load(files, extra_holds=extra_holds)
        errors: list[Failure] = []
    except ConfigErrors as e:
        config, errors = e.partial, list(e.errors)
    except Failure as e:
        raise _checking(e) from None
    errors += check(config)
    if errors:
        raise _checking(ConfigErrors([_checking(e) for e in errors], config))
    return config


def _checking(e: Failure) -> Failure:
    if e.hint == CHECK_HINT:
        e.hint = "fix the key named above (holdmount.toml(5) lists every key), then check again"
    return e


def check(config: Config) -> list[Failure]:
    """What `daemon --check` adds to parsing: facts of this system the daemon will rely on
    (the control group exists, each action's program is an executable file). All of them."""
    errors: list[Failure] = []
    group = config.control.group
    if group is not None:
        try:
            grp.getgrnam(group)
        except (KeyError, UnicodeEncodeError):
            errors.append(_fail(_origin(config), "control.group",
                                f"getgrnam({group}): no such group"))
    for a in config.actions:
        if a.exec is None:
            continue
        program = a.exec[0]
        try:
            st = os.stat(program)
        except (OSError, ValueError) as e:
            reason = os.strerror(e.errno or 0) if isinstance(e, OSError) else str(e)
            errors.append(_fail(a.origin, f"action[{a.name}].exec",
                                f"stat({program}): {reason}",
                                hint="the daemon runs it at shutdown: install it or fix the "
                                "path"))
            continue
        if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o111:
            errors.append(_fail(a.origin, f"action[{a.name}].exec",
                                f"{program}: not an executable file",
                                hint="the daemon runs it at shutdown: chmod +x it or name "
                                "the program itself"))
    return errors


def _origin(config: Config) -> str:
    return config.files[-1] if config.files else "<command line>"
