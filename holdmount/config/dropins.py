"""The set of files and how they combine: the main file, then the drop-ins sorted by name;
a later file wins, like systemd drop-ins.

Tables (`[daemon]`, `[marker]`, `[control]`) merge key by key: a later file sets only the keys it
names. `[[hold]]` entries are identified by `path` and `[[action]]` entries by `name`: a later
entry with the same identity updates the keys it names and keeps the first one's position
(actions run in that order); a new identity is appended. `exec` and `merge` are alternatives:
setting one drops the other. `enabled = false` removes an entry. Within one file an identity may
appear only once. Every section of every file is read even after an error, so one run reports
them all (`ConfigErrors`).
"""

from __future__ import annotations

import os

from holdmount.config.model import (
    DROPIN_DIR,
    MAIN_FILE,
    ActionConfig,
    Config,
    ControlConfig,
    DaemonConfig,
    HoldConfig,
    MarkerConfig,
    MergeSpec,
    When,
)
from holdmount.config.reader import ConfigErrors, Reader, fail, parse, read_file, toml_type
from holdmount.errors import Exit, Failure
from holdmount.paths import normal
from holdmount.record import Record

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:  # annotations only
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any

_TOP = ("daemon", "marker", "control", "hold", "action")
_DAEMON = ("stamp", "allow_foreign_namespace", "trigger_timeout", "fdstore")
_MARKER = ("path", "inhibit")
_CONTROL = ("path", "mode", "group", "connections_per_uid", "leases_per_uid", "paths_per_uid",
            "idle_timeout")
_HOLD = ("path", "when", "protect", "enabled")
_ACTION = ("name", "exec", "merge", "when", "timeout", "enabled")
_SECTIONS = {"daemon": _DAEMON, "marker": _MARKER, "control": _CONTROL}


class _Partial(Record):
    """Keys collected so far for one entry (the dict grows), with the file that set it first."""

    values: dict[str, Any]
    origin: str


def _array_of_tables(file: str, doc: Mapping[str, Any], name: str) -> list[Mapping[str, Any]]:
    value = doc.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise fail(file, name, f"must be an array of tables ([[{name}]]), not "
                    f"{toml_type(value)}")
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
        self._try(Reader, file, "", {k: v for k, v in doc.items() if k not in _TOP}, _TOP)
        top = Reader(file, "", {k: v for k, v in doc.items() if k in _TOP}, _TOP)
        for name, section in (("daemon", self._daemon), ("marker", self._marker),
                              ("control", self._control)):
            if top.has(name):
                self._try(lambda n=name, f=section: f(Reader(file, n, top.table_(n),
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

    def _daemon(self, r: Reader) -> None:
        if r.has("stamp"):
            self.daemon["stamp"] = r.path("stamp")
        if r.has("allow_foreign_namespace"):
            self.daemon["allow_foreign_namespace"] = r.boolean("allow_foreign_namespace")
        if r.has("trigger_timeout"):
            self.daemon["trigger_timeout"] = r.span("trigger_timeout")
        if r.has("fdstore"):
            self.daemon["fdstore"] = r.boolean("fdstore")

    def _marker(self, r: Reader) -> None:
        for key in ("path", "inhibit"):
            if r.has(key):
                self.marker[key] = r.path(key)
        self.marker_origin = r.file

    def _hold(self, file: str, prefix: str, entry: Mapping[str, Any], seen: set[str]) -> None:
        r = Reader(file, prefix, entry, _HOLD)
        if not r.has("path"):
            raise fail(r.file, r.key("path"), "missing (every [[hold]] names a path)")
        path = r.path("path")
        if path in seen:
            raise fail(r.file, r.key("path"), f"duplicate hold {path!r} in one file")
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
        r = Reader(file, prefix, entry, _ACTION)
        if not r.has("name"):
            raise fail(file, r.key("name"), "missing (every [[action]] has a name)")
        name = r.string("name")
        if not name or not all(c.isalnum() or c in "-_.@" for c in name) or len(name) > 64:
            raise fail(file, r.key("name"), f"{name!r}: use 1-64 letters, digits, - _ . @")
        if name in names:
            raise fail(file, r.key("name"), f"duplicate action name {name!r} in one file")
        names.add(name)
        values: dict[str, Any] = {"name": name}
        if r.has("exec") and r.has("merge"):
            raise fail(file, r.key("merge"), "an action has either exec or merge, not both")
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

    def _control(self, r: Reader) -> None:
        if r.has("path"):
            self.control["path"] = r.path("path")
        if r.has("mode"):
            text = r.string("mode")
            try:
                mode = int(text, 8)
            except ValueError:
                mode = -1
            if not 0 <= mode <= 0o777:
                raise fail(r.file, r.key("mode"), f'must be an octal mode like "0660", not '
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
                err(fail(self.marker_origin, "marker.path", "missing ([marker] needs a path)"))
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
            norm = normal(path)
            if all(h.path != norm for h in holds):
                holds.append(HoldConfig(path=norm))
        actions = []
        for p in self.actions.values():
            if not p.values.get("enabled", True):
                continue
            values = {k: v for k, v in p.values.items() if k != "enabled"}
            name = values["name"]
            if values.get("exec") is None and values.get("merge") is None:
                err(fail(p.origin, f"action[{name}].exec",
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
                err(fail(origin, key, '"staged" needs a marker: add [marker] path = "..."'))
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
    r = Reader(file, key, table, ("from", "to"))
    for k in ("from", "to"):
        if not r.has(k):
            raise fail(file, r.key(k), "missing (merge = { from = STAGED, to = DEST })")
    return MergeSpec(source=r.path("from"), dest=r.path("to"))


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
         reader: Callable[[str], dict[str, Any]] = read_file) -> Config:
    merger = _Merger()
    for file in files:
        doc = merger._try(reader, file)
        if doc is not None:
            merger.add(file, doc)
    return merger.build(files, extra_holds)


def loads(text: str, name: str = "<string>") -> Config:
    """Parse one document (tests, fuzzing)."""
    return load([name], reader=lambda file: parse(file, text))


