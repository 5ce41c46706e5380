"""Small records with `__slots__`, immutable unless asked otherwise — without `dataclasses`.

`dataclasses` imports inspect (and with it ast, dis, tokenize): ~1.9 MiB and ~12 ms before the
daemon can say READY. A record is declared like a dataclass and type-checked like one (mypy sees
`dataclass_transform`):

    class Point(Record):
        x: int
        y: int = 0

    p = Point(x=1)            # keyword or positional, in field order; defaults from the class
    replace(p, y=2)           # a copy with fields changed
    asdict(p)                 # {"x": 1, "y": 0} (shallow)

`class Lease(Record, frozen=False)` gives a mutable one. Defaults must be immutable values (no
default factories). Records compare equal field by field; frozen ones hash.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing itself costs ~1 MiB at run time; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any, ClassVar, TypeVar, dataclass_transform

    _R = TypeVar("_R", bound="Record")
else:
    def dataclass_transform(**_kwargs: object) -> object:
        return lambda cls: cls


class _RecordMeta(type):
    """Turns the class's annotations into `__slots__` and remembers their defaults."""

    def __new__(mcls, name: str, bases: tuple[type, ...], ns: dict[str, Any],
                frozen: bool = True) -> _RecordMeta:
        fields: list[str] = []
        defaults: dict[str, object] = {}
        for base in bases:
            fields += getattr(base, "_fields", ())
            defaults.update(getattr(base, "_defaults", {}))
        own = [f for f in ns.get("__annotations__", {}) if f not in fields]
        for field in own:
            if field in ns:
                defaults[field] = ns.pop(field)
            elif fields and fields[-1] in defaults:
                raise TypeError(f"{name}.{field}: a field without default after one with")
            fields.append(field)
        ns["__slots__"] = tuple(own)
        ns["_fields"] = tuple(fields)
        ns["_defaults"] = defaults
        ns["_frozen"] = frozen
        if fields and "__init__" not in ns:
            ns["__init__"] = _make_init(name, fields, defaults)
        return super().__new__(mcls, name, bases, ns)


def _make_init(name: str, fields: list[str], defaults: dict[str, object]) -> Any:
    """An `__init__(self, f1, f2=default, ...)` written out for the class's fields, as
    dataclasses does: twice as fast as a loop over the fields (a mount table makes hundreds).
    The names are the class's own annotations, i.e. identifiers."""
    params = ", ".join(f"{f}=_defaults[{f!r}]" if f in defaults else f for f in fields)
    body = "".join(f"\n    _set(self, {f!r}, {f})" for f in fields)
    scope: dict[str, Any] = {"_set": object.__setattr__, "_defaults": defaults}
    exec(f"def __init__(self, {params}):{body}", scope)
    init = scope["__init__"]
    init.__qualname__ = f"{name}.__init__"
    return init


@dataclass_transform(frozen_default=True)
class Record(metaclass=_RecordMeta):
    __slots__ = ()
    if TYPE_CHECKING:
        _fields: ClassVar[tuple[str, ...]]
        _defaults: ClassVar[dict[str, object]]
        _frozen: ClassVar[bool]

    def __setattr__(self, name: str, value: object) -> None:
        if self._frozen:
            raise AttributeError(f"{type(self).__name__} is immutable: cannot set {name!r}")
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__}: cannot delete {name!r}")

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, f) for f in self._fields)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        if not self._frozen:
            raise TypeError(f"unhashable (mutable) record: {type(self).__name__}")
        return hash((type(self), self._values()))

    def __repr__(self) -> str:
        inner = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields)
        return f"{type(self).__name__}({inner})"


def replace(record: _R, **changes: object) -> _R:
    """A copy of `record` with `changes` applied (like dataclasses.replace)."""
    values = {f: getattr(record, f) for f in record._fields}
    unknown = set(changes) - set(values)
    if unknown:
        raise TypeError(f"{type(record).__name__}: no field {sorted(unknown)[0]!r}")
    values.update(changes)
    return type(record)(**values)


def asdict(record: Record) -> dict[str, object]:
    """The fields as a dict, in declaration order (shallow, unlike dataclasses.asdict)."""
    return {f: getattr(record, f) for f in record._fields}
