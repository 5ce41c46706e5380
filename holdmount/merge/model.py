"""The records of a merge: temp names, the plan (one item per STAGED entry) and the summary."""

from __future__ import annotations

import base64
import dataclasses
import enum
import os
import random
import re

from holdmount.paths import text

TEMP_PREFIX = ".holdmount-merge."
_rng = random.Random(os.urandom(16))
_TEMP_NAME = re.compile(r"\.holdmount-merge\..*\.[0-9a-f]{8}", re.DOTALL)
_NAME_MAX = 255

Ident = tuple[int, int]  # (st_dev, st_ino): which inode an fd or a name stands for


def ident(st: os.stat_result) -> Ident:
    return (st.st_dev, st.st_ino)


def is_temp_name(name: str) -> bool:
    """A name this package gives its temp files (what a rerun cleans up)."""
    return _TEMP_NAME.fullmatch(name) is not None


def temp_name(name: str) -> str:
    """`.holdmount-merge.<name>.<8 hex>`, with <name> cut so the result fits NAME_MAX bytes."""
    suffix = f".{_rng.getrandbits(32):08x}"  # unique enough: created O_EXCL
    room = _NAME_MAX - len(TEMP_PREFIX) - len(suffix)
    raw = os.fsencode(name)[:room]
    return TEMP_PREFIX + os.fsdecode(raw) + suffix


def rel_join(a: str, b: str) -> str:
    return b if a == "." else f"{a}/{b}"


def split(rel: str) -> tuple[str, str]:
    """(parent rel, name); the parent of a top-level entry is "."."""
    parent, _, name = rel.rpartition("/")
    return parent or ".", name


def at(base: str, rel: str) -> str:
    return base if rel == "." else os.path.join(base, rel)


class Op(enum.Enum):
    MKDIR = "mkdir"  # create a directory (metadata later)
    DIRMETA = "dirmeta"  # existing directory: metadata differs
    DIROK = "dirok"  # existing directory, equal
    COPY = "copy"  # write a new copy (regular file, symlink, device node, fifo)
    LINK = "link"  # hardlink to the DEST copy of an earlier name of the same STAGED inode
    SAME = "same"  # equal already


@dataclasses.dataclass(frozen=True)
class Item:
    rel: str
    st: os.stat_result  # STAGED's lstat when planned: the copy must come from this inode
    op: Op
    link_to: str | None = None  # LINK: rel of the first name
    existed: bool = False  # DEST had something at rel when planned
    dest_id: Ident | None = None  # existing DEST directory, or LINK to a kept first name


@dataclasses.dataclass(frozen=True)
class Plan:
    items: tuple[Item, ...]
    temps: tuple[str, ...]  # leftover temp files in DEST (rel)
    new_bytes: int
    new_inodes: int


def _non_utf8(paths: list[str]) -> list[dict[str, str]]:
    out = []
    for p in paths:
        raw = os.fsencode(p)
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            out.append({"path": text(p), "bytes_b64": base64.b64encode(raw).decode("ascii")})
    return out


@dataclasses.dataclass(frozen=True)
class MergeSummary:
    """What a merge did (or, with dry_run, would do). Paths are relative to DEST ("." = DEST)."""

    staged: str
    dest: str
    dry_run: bool
    added: tuple[str, ...]
    replaced: tuple[str, ...]
    unchanged: tuple[str, ...]
    removed_temp: tuple[str, ...]

    def counts(self) -> dict[str, int]:
        return {"added": len(self.added), "replaced": len(self.replaced),
                "unchanged": len(self.unchanged), "removed_temp": len(self.removed_temp)}

    def to_json(self) -> dict[str, object]:
        """Valid UTF-8 throughout; `non_utf8` lists each path that is not UTF-8 once, with its
        exact bytes in base64 (its `path` is the `\\xNN` form used in the other fields)."""
        lists = {"added": self.added, "replaced": self.replaced,
                 "unchanged": self.unchanged, "removed_temp": self.removed_temp}
        every = [self.staged, self.dest, *dict.fromkeys(p for v in lists.values() for p in v)]
        return {"staged": text(self.staged), "dest": text(self.dest),
                "dry_run": self.dry_run, "counts": self.counts(),
                **{k: [text(p) for p in v] for k, v in lists.items()},
                "non_utf8": _non_utf8(every)}

    def line(self) -> str:
        c = self.counts()
        verb = "would merge" if self.dry_run else "merged"
        return (f"{verb} {text(self.staged)} into {text(self.dest)}: {c['added']} added, "
                f"{c['replaced']} replaced, {c['unchanged']} unchanged, "
                f"{c['removed_temp']} temp files removed")
