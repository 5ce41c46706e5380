"""holdmount.record: slots records that behave like frozen dataclasses, without dataclasses."""

from __future__ import annotations

import subprocess
import sys

import pytest

from holdmount.record import Record, asdict, replace


class Point(Record):
    x: int
    y: str = "a"


class Counter(Record, frozen=False):
    n: int = 0


class Point3(Point):
    z: float = 0.0


def test_fields_defaults_and_positional() -> None:
    p = Point(1)
    assert (p.x, p.y) == (1, "a")
    assert Point(2, "b") == Point(x=2, y="b")
    assert repr(p) == "Point(x=1, y='a')"
    assert Point.__slots__ == ("x", "y")


def test_frozen_and_hashable() -> None:
    p = Point(1)
    with pytest.raises(AttributeError, match="immutable"):
        p.x = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):
        p.other = 1  # type: ignore[attr-defined]
    assert hash(p) == hash(Point(1)) and {p, Point(1)} == {p}
    assert p != Point(2) and p != (1, "a")


def test_mutable_record() -> None:
    c = Counter()
    c.n += 1
    assert c == Counter(1)
    with pytest.raises(TypeError):
        hash(c)


def test_replace_asdict_and_inheritance() -> None:
    p = Point3(1, z=2.5)
    q = replace(p, y="c")
    assert q == Point3(1, "c", 2.5) and p.y == "a"
    assert asdict(q) == {"x": 1, "y": "c", "z": 2.5}
    with pytest.raises(TypeError, match="no field"):
        replace(p, w=1)


@pytest.mark.parametrize("args,kwargs,match", [
    ((), {}, "missing .*'x'"),
    ((1, "a", 3), {}, "takes from 2 to 3 positional arguments"),
    ((1,), {"x": 2}, "multiple values for argument 'x'"),
    ((1,), {"w": 2}, "unexpected keyword argument 'w'"),
])
def test_bad_construction(args: tuple[object, ...], kwargs: dict[str, object],
                          match: str) -> None:
    with pytest.raises(TypeError, match=match):
        Point(*args, **kwargs)


def test_default_order_checked() -> None:
    with pytest.raises(TypeError, match="without default"):
        class Bad(Record):
            a: int = 1
            b: int


def test_imports_neither_dataclasses_nor_typing() -> None:
    code = ("import sys, holdmount.record; "
            "print(sorted({'dataclasses', 'typing', 'inspect'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
