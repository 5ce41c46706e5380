"""`holdmount overlay changes`: what changed in a mounted overlay, from its upperdir alone.

The walk covers only the upperdir, so its cost follows the size of the changes, not of the
merged tree. It reports at path level against the lower layers (what `diff -r LOWERVIEW MERGED`
would say), at the granularity of the upperdir's own entries:

- added: an upper entry with nothing at its path in the lower layers;
- modified: an upper non-directory with something at its path below (copy-up or replacement),
  an upper directory over a lower non-directory, or one whose mode or owner differ from below;
- deleted: a whiteout (char device 0/0, or an empty file with `overlay.whiteout`): the path and
  everything the lower layers had below it are gone;
- opaque: a directory with `overlay.opaque=y`: the lower layers' contents below it are hidden;
- renamed: a directory with `overlay.redirect` (redirect_dir=on): its lower contents come from
  the origin path. Without redirect_dir, mv of a lower directory copies it (added + deleted).

Light on purpose (bench P7 runs it as a whole process): no dataclasses, no re.
"""

from __future__ import annotations

import os
import stat

from holdmount.errors import Exit, die, os_failure
from holdmount.mounts import MountTable
from holdmount.overlay.layers import Layers, layers
from holdmount.record import Record


class Renamed(Record):
    path: str  # where the directory is now (relative to the overlay root)
    origin: str  # where its lower contents come from (relative to the overlay root)


class OverlayChanges(Record):
    merged: str
    upperdir: str
    lowerdirs: tuple[str, ...]
    added: tuple[str, ...]
    modified: tuple[str, ...]
    deleted: tuple[str, ...]
    opaque: tuple[str, ...]
    renamed: tuple[Renamed, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "merged": self.merged,
            "upperdir": self.upperdir,
            "lowerdirs": list(self.lowerdirs),
            "added": list(self.added),
            "modified": list(self.modified),
            "deleted": list(self.deleted),
            "opaque": list(self.opaque),
            "renamed": [{"path": r.path, "from": r.origin} for r in self.renamed],
        }

    def lines(self) -> list[str]:
        """`git status --short`-like text: A, M, D, O (opaque), R (renamed)."""
        out = [f"A {p}" for p in self.added] + [f"M {p}" for p in self.modified]
        out += [f"D {p}" for p in self.deleted] + [f"O {p}" for p in self.opaque]
        out += [f"R {r.origin} -> {r.path}" for r in self.renamed]
        return sorted(out, key=lambda s: (s[2:], s[0]))


def _xattr(path: str, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError:
        return None


class _Lower:
    """Path lookups in the stacked lower layers, as the lower-only view would see them."""

    def __init__(self, lowerdirs: tuple[str, ...], prefix: str) -> None:
        self.lowerdirs = lowerdirs
        self.prefix = prefix
        self._blocks: dict[tuple[str, str], bool] = {}

    def is_whiteout(self, path: str, st: os.stat_result) -> bool:
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            return True
        return (stat.S_ISREG(st.st_mode) and st.st_size == 0
                and _xattr(path, self.prefix + "whiteout") is not None)

    def _hides_below(self, layer: str, rel_dir: str) -> bool:
        """Whether `layer` hides deeper layers at and below directory `rel_dir`."""
        key = (layer, rel_dir)
        if key not in self._blocks:
            p = os.path.join(layer, rel_dir)
            try:
                st = os.lstat(p)
            except OSError:
                self._blocks[key] = False
            else:
                self._blocks[key] = (not stat.S_ISDIR(st.st_mode)
                                     or _xattr(p, self.prefix + "opaque") == b"y")
        return self._blocks[key]

    def lstat(self, rel: str) -> os.stat_result | None:
        parents: list[str] = []
        d = os.path.dirname(rel)
        while d:
            parents.insert(0, d)
            d = os.path.dirname(d)
        for layer in self.lowerdirs:
            p = os.path.join(layer, rel)
            try:
                st = os.lstat(p)
            except OSError:
                st = None
            if st is not None:
                return None if self.is_whiteout(p, st) else st
            if any(self._hides_below(layer, a) for a in parents):
                return None
        return None


def find_overlay(merged: str | os.PathLike[str], table: MountTable | None = None) -> Layers:
    path = os.fspath(merged)
    table = table if table is not None else MountTable.read()
    try:
        os.stat(path)
    except OSError as e:
        raise os_failure("overlay changes", path, e,
                         hint="name the directory the overlay is mounted on (see findmnt -t "
                         "overlay)") from e
    real = os.path.realpath(path)
    m = table.top_at(real)
    if m is None or m.fstype != "overlay":
        what = f"{m.fstype} is mounted there" if m else "nothing is mounted there"
        die(f"overlay changes({path}): not an overlay mount point ({what})",
            hint="name the directory the overlay is mounted on (see findmnt -t overlay)",
            code=Exit.DATAERR)
    lay = layers(m)
    for role, d in lay.roles():
        if not os.path.isabs(d):
            die(f"overlay changes({path}): the overlay gives its {role} relative to the "
                f"directory it was mounted from ({role}={d}), so where it is cannot be known",
                hint="remount it with absolute lowerdir=, upperdir= and workdir= paths",
                code=Exit.DATAERR)
    return lay


def changes(merged: str | os.PathLike[str], table: MountTable | None = None) -> OverlayChanges:
    """What changed in the overlay mounted on `merged`, from a walk of its upperdir only."""
    lay = find_overlay(merged, table)
    upper = lay.upperdir
    if upper is None:
        die(f"overlay changes({os.fspath(merged)}): the overlay has no upperdir (read-only)",
            hint="a read-only overlay cannot have changes", code=Exit.DATAERR)
    prefix = lay.xattr_prefix
    lower = _Lower(lay.lowerdirs, prefix)
    added: list[str] = []
    modified: list[str] = []
    deleted: list[str] = []
    opaque: list[str] = []
    renamed: list[Renamed] = []
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        try:
            entries = list(os.scandir(os.path.join(upper, rel_dir)))
        except OSError as e:
            raise os_failure("scandir", os.path.join(upper, rel_dir), e) from e
        for entry in entries:
            rel = os.path.join(rel_dir, entry.name)
            st = entry.stat(follow_symlinks=False)
            if lower.is_whiteout(entry.path, st):
                deleted.append(rel)
                continue
            below = lower.lstat(rel)
            if stat.S_ISDIR(st.st_mode):
                stack.append(rel)
                if _xattr(entry.path, prefix + "opaque") == b"y":
                    opaque.append(rel)
                redirect = _xattr(entry.path, prefix + "redirect")
                if redirect is not None:
                    target = os.fsdecode(redirect)
                    origin = (target.lstrip("/") if target.startswith("/")
                              else os.path.join(rel_dir, target))
                    renamed.append(Renamed(rel, origin))
                    continue
                if below is None:
                    added.append(rel)
                elif (not stat.S_ISDIR(below.st_mode)
                      or stat.S_IMODE(below.st_mode) != stat.S_IMODE(st.st_mode)
                      or (below.st_uid, below.st_gid) != (st.st_uid, st.st_gid)):
                    modified.append(rel)
            elif below is None:
                added.append(rel)
            else:
                modified.append(rel)
    return OverlayChanges(
        merged=os.fspath(merged), upperdir=upper, lowerdirs=lay.lowerdirs,
        added=tuple(sorted(added)), modified=tuple(sorted(modified)),
        deleted=tuple(sorted(deleted)), opaque=tuple(sorted(opaque)),
        renamed=tuple(sorted(renamed, key=lambda r: r.path)),
    )


def main(merged: str, *, as_json: bool = False) -> int:
    """`holdmount overlay changes MERGED [--json]`."""
    result = changes(merged)
    if as_json:
        import json

        print(json.dumps(result.to_json(), indent=2))
    else:
        for line in result.lines():
            print(line)
    return 0
