"""Reading one configuration file: its bytes (at most MAX_FILE_SIZE), TOML (at most
MAX_NESTING arrays/tables deep), and typed access to its tables (`Reader`), where every error
names the file and the dotted key and exits 78 (EX_CONFIG)."""

from __future__ import annotations

import errno
import math
import os
import sys

from holdmount.config import cache, isolated
from holdmount.config.model import When
from holdmount.errors import Exit, Failure
from holdmount.paths import normal
from holdmount.timespan import parse_timespan

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:  # annotations only
    from collections.abc import Mapping, Sequence
    from typing import Any

    from holdmount.config.model import Config

MAX_FILE_SIZE = 1024 * 1024  # bytes of one configuration file
MAX_NESTING = 32  # arrays and inline tables inside one another (tomllib recurses per level)

# --- errors -------------------------------------------------------------------------------------

CHECK_HINT = "fix the file; `holdmount daemon --check` validates it"  # reworded by load_checked


class ConfigErrors(Failure):
    """Several configuration errors at once: `message` is the first, `errors` all of them."""

    def __init__(self, errors: Sequence[Failure], partial: Config) -> None:
        super().__init__(errors[0].message, hint=errors[0].hint, code=errors[0].code)
        self.errors = tuple(errors)
        self.partial = partial  # what was valid (for `check`, which reports the rest)


def fail(file: str, key: str, message: str, hint: str | None = None) -> Failure:
    where = f"{key}: " if key else ""
    return Failure(f"config({file}): {where}{message}",
                   hint=hint or CHECK_HINT,
                   code=Exit.CONFIG)


class Reader:
    """Typed access to one TOML table; every error names the file and the dotted key."""

    def __init__(self, file: str, prefix: str, table: Mapping[str, Any], allowed: Sequence[str]):
        self.file = file
        self.prefix = prefix
        self.table = table
        for key in table:
            if key not in allowed:
                raise fail(file, self.key(key), "unknown key",
                            hint=f"known keys here: {', '.join(allowed)}")

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def has(self, name: str) -> bool:
        return name in self.table

    def _typed(self, name: str, kind: type, what: str) -> Any:
        value = self.table[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise fail(self.file, self.key(name),
                        f"must be {what}, not {toml_type(value)} {_show(value)}")
        return value

    def string(self, name: str) -> str:
        value: str = self._typed(name, str, "a string")
        if "\0" in value:
            raise fail(self.file, self.key(name), "contains a NUL character")
        return value

    def count(self, name: str, low: int, high: int) -> int:
        value: int = self._typed(name, int, "an integer")
        if not low <= value <= high:
            raise fail(self.file, self.key(name), f"must be {low} to {high}, not {value}")
        return value

    def boolean(self, name: str) -> bool:
        value: bool = self._typed(name, bool, "true or false")
        return value

    def path(self, name: str) -> str:
        value = self.string(name)
        if not value.startswith("/"):
            raise fail(self.file, self.key(name), f"must be an absolute path, not {value!r}")
        bad = next((c for c in value if ord(c) < 32 or ord(c) == 127), None)
        if bad is not None:
            raise fail(self.file, self.key(name),
                        f"contains a control character ({bad!r}): {value!r}")
        return normal(value)

    def span(self, name: str, *, positive: bool = True) -> float:
        value = self.table[name]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = float(value)
        elif isinstance(value, str):
            try:
                seconds = parse_timespan(value)
            except ValueError as e:
                raise fail(self.file, self.key(name), str(e),
                            hint='use systemd time-span syntax, e.g. "90s", "5min", '
                            '"1h 30min"') from None
        else:
            raise fail(self.file, self.key(name), f"must be a time span like \"5min\", not "
                        f"{toml_type(value)} {_show(value)}")
        if math.isnan(seconds) or math.isinf(seconds) or (positive and seconds <= 0) \
                or seconds > 365 * 86400:
            raise fail(self.file, self.key(name),
                        f"must be a finite time span > 0 and at most a year, not {_show(value)}")
        return seconds

    def when(self, name: str) -> When:
        value = self.string(name)
        try:
            return When(value)
        except ValueError:
            raise fail(self.file, self.key(name),
                        f'must be "always" or "staged", not {value!r}') from None

    def argv(self, name: str) -> tuple[str, ...]:
        value = self._typed(name, list, "a list of strings")
        if not value or not all(isinstance(v, str) and "\0" not in v for v in value):
            raise fail(self.file, self.key(name),
                        'must be a non-empty list of strings, e.g. ["/usr/bin/true"]')
        if not value[0].startswith("/"):
            raise fail(self.file, self.key(name),
                        f"the program must be an absolute path, not {value[0]!r}",
                        hint="the daemon does not search PATH at shutdown: name the program "
                        "by its full path")
        return tuple(value)

    def table_(self, name: str) -> Mapping[str, Any]:
        value: Mapping[str, Any] = self._typed(name, dict, "a table")
        return value


def toml_type(value: object) -> str:
    if isinstance(value, isolated.Opaque):  # a date or time parsed in the child
        return value.type_name
    return {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# --- one file: bytes, then TOML -----------------------------------------------------------------

_READ_HINTS = {
    errno.ENOENT: "check the path given to --config (without --config the daemon reads "
    "/etc/holdmount/holdmount.toml and /etc/holdmount/conf.d/*.toml)",
    errno.EISDIR: "--config names a file; files in /etc/holdmount/conf.d/ are read without it",
}


def read_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_SIZE + 1)
    except OSError as e:
        raise Failure(f"config({path}): {os.strerror(e.errno or 0) if e.errno else e}",
                      hint=_READ_HINTS.get(e.errno or 0, "check the file's permissions (the "
                                           "daemon reads it as root)"),
                      code=Exit.CONFIG) from None
    if len(data) > MAX_FILE_SIZE:
        raise fail(path, "", f"larger than {MAX_FILE_SIZE} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise fail(path, "", f"not UTF-8 (byte {e.start})") from None
    if "tomllib" in sys.modules:  # paid for already (the CLI, tests): no child needed
        return parse(path, text)
    where = cache.directory()  # the daemon under systemd: an unchanged file is not parsed
    doc = cache.lookup(where, path, text) if where else None
    if doc is None:  # the daemon: no tomllib kept
        after = (lambda parsed: cache.store(where, path, text, parsed)) if where else None
        doc = isolated.run(parse, path, text, after=after)
    return doc


def parse(file: str, text: str) -> dict[str, Any]:
    """tomllib, after a check that the nesting stays below MAX_NESTING (tomllib recurses once
    per level: 3,000 levels would be a RecursionError, an internal error, not a config one)."""
    deep = _too_deep(text)
    if deep is not None:
        line, key = deep
        raise fail(file, key, f"nested more than {MAX_NESTING} arrays or tables deep "
                    f"(line {line})")
    import tomllib  # here: `--no-config` and an empty conf.d read no TOML (~2 MiB)

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise fail(file, "", f"TOML syntax error: {e}") from None
    except RecursionError:  # not reached after _too_deep; kept so it can never be a traceback
        raise fail(file, "", f"nested more than {MAX_NESTING} arrays or tables deep") from None


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


