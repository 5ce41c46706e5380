"""overlayfs: the layers of a mounted overlay, the guard that keeps holdmount from writing into
them, and the list of changes read from the upperdir alone.

Layers come from mountinfo (`lowerdir=a:b`, `lowerdir+=`, `datadir+=`, `upperdir=`, `workdir=`);
paths there are the strings the mounter passed, octal-escaped by the kernel (`\\134` is `\\`), and
in `lowerdir=` a backslash escapes a colon.

`changes()` walks only the upperdir, so its cost follows the size of the changes, not of the
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
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
from collections.abc import Iterator

from holdmount.errors import Exit, die, os_failure
from holdmount.mounts import Mount, MountTable

KERNEL_DOC_REASON = (
    "the kernel's overlayfs documentation (Documentation/filesystems/overlayfs.rst, \"Changes "
    "to underlying filesystems\") does not allow changes to the underlying filesystems while "
    "they are part of a mounted overlay: if one is changed, the overlay's behaviour is "
    "undefined (though it will not crash or deadlock)"
)

_OCTAL = re.compile(r"\\([0-7]{3})")


def _unescape(value: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), value)


def _super_options(text: str) -> list[tuple[str, str]]:
    """Superblock options in order, values unescaped (keys may repeat: lowerdir+=)."""
    out: list[tuple[str, str]] = []
    for opt in text.split(","):
        key, _, value = opt.partition("=")
        if key:
            out.append((key, _unescape(value)))
    return out


def split_lowerdir(value: str) -> tuple[list[str], list[str]]:
    """`lowerdir=` as the kernel splits it: `:` separates layers, `\\` escapes the next
    character, and after `::` come data-only layers. Returns (lowerdirs, datadirs)."""
    parts: list[str] = []
    cur: list[str] = []
    chars = iter(value)
    for ch in chars:
        if ch == "\\":
            cur.append(next(chars, ""))
        elif ch == ":":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    lower: list[str] = []
    data: list[str] = []
    seen_gap = False
    for p in parts:
        if not p:
            seen_gap = True
        elif seen_gap:
            data.append(p)
        else:
            lower.append(p)
    return lower, data


@dataclasses.dataclass(frozen=True)
class Layers:
    """The directories an overlay mount is made of (lowerdirs top first)."""

    mount: Mount
    lowerdirs: tuple[str, ...]
    datadirs: tuple[str, ...]
    upperdir: str | None
    workdir: str | None
    userxattr: bool

    @property
    def xattr_prefix(self) -> str:
        return "user.overlay." if self.userxattr else "trusted.overlay."

    def roles(self) -> Iterator[tuple[str, str]]:
        """(role, directory) for every layer: upperdir, workdir, lowerdir, datadir."""
        if self.upperdir:
            yield "upperdir", self.upperdir
        if self.workdir:
            yield "workdir", self.workdir
        for d in self.lowerdirs:
            yield "lowerdir", d
        for d in self.datadirs:
            yield "datadir", d


def layers(m: Mount) -> Layers:
    lower: list[str] = []
    data: list[str] = []
    upper = work = None
    userxattr = False
    for key, value in _super_options(m.super_options):
        if key == "lowerdir":
            lo, da = split_lowerdir(value)
            lower += lo
            data += da
        elif key == "lowerdir+":
            lower.append(value)
        elif key == "datadir+":
            data.append(value)
        elif key == "upperdir":
            upper = value
        elif key == "workdir":
            work = value
        elif key == "userxattr":
            userxattr = True
    return Layers(m, tuple(lower), tuple(data), upper, work, userxattr)


# --- the guard --------------------------------------------------------------------------------

def _resolve(path: str) -> str:
    """realpath of the longest existing prefix, plus the rest (the path may not exist yet)."""
    path = os.path.abspath(path)
    rest: list[str] = []
    while not os.path.lexists(path) and path != "/":
        path, tail = os.path.split(path)
        rest.insert(0, tail)
    return os.path.join(os.path.realpath(path), *rest)


def _identities(path: str) -> set[tuple[int, int]]:
    """(st_dev, st_ino) of `path` (resolved) and of every directory above it."""
    out: set[tuple[int, int]] = set()
    p = path
    while True:
        try:
            st = os.stat(p)
            out.add((st.st_dev, st.st_ino))
        except OSError:
            pass
        if p == "/":
            return out
        p = os.path.dirname(p)


def _inside(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def _foreign_layers(path: str, table: MountTable) -> Iterator[tuple[Mount, Layers, str, str]]:
    """(mount, layers, role, layer dir as in mountinfo) of every layer of every mounted overlay
    whose merged view does not contain `path` (absolute, resolved).

    A path seen through an overlay's own merged view is written through the overlay, which is
    allowed; and that overlay's layer paths are in the *mounter's* namespace, so for a container
    whose root is overlay(lowerdir=/) they would otherwise match every path."""
    for m in table.overlays():
        if _inside(path, m.mount_point):
            continue
        lay = layers(m)
        for role, d in lay.roles():
            yield m, lay, role, d


def candidate_layers(path: str, table: MountTable) -> Iterator[tuple[Mount, Layers, str, str]]:
    """The absolute ones of `_foreign_layers`: the layers whose place is known."""
    for m, lay, role, d in _foreign_layers(path, table):
        if os.path.isabs(d):
            yield m, lay, role, d


def unknown_layers(path: str | os.PathLike[str],
                   table: MountTable | None = None) -> list[tuple[Mount, str, str]]:
    """(mount, role, layer as given) for each layer that `path` may be inside without anyone
    being able to tell: mountinfo shows the layer paths as the mounter passed them, and one
    given relative to the mounter's working directory (`-o upperdir=up` from a shell) may be any
    directory. Not stat'ed: safe for doctor (cannot trigger an automount)."""
    table = table if table is not None else MountTable.read()
    target = os.path.normpath(os.path.abspath(os.fspath(path)))
    return [(m, role, d) for m, _lay, role, d in _foreign_layers(target, table)
            if not os.path.isabs(d)]


def refuse_if_unknown_layers(path: str | os.PathLike[str], table: MountTable | None = None,
                             *, call: str = "write") -> None:
    """Fail (EX_CANTCREAT) when a mounted overlay has layers whose place is unknown (relative
    paths in mountinfo): `path` may be one of them, so writing there is refused as if it were."""
    hits = unknown_layers(_resolve(os.fspath(path)), table)
    if not hits:
        return
    m, role, d = hits[0]
    die(f"{call}({os.fspath(path)}): may be inside a layer of the overlay mounted on "
        f"{m.mount_point}, whose {role} is given relative to the directory it was mounted "
        f"from ({role}={d}), so where its layers are cannot be known",
        hint=f"{KERNEL_DOC_REASON}. Remount that overlay with absolute lowerdir=, upperdir= "
        "and workdir= paths (or unmount it), then rerun", code=Exit.CANTCREAT)


def lexical_layer_hits(path: str, table: MountTable) -> list[tuple[Mount, str, str]]:
    """(mount, role, layer dir) for each layer `path` lies in, by the path's text alone: no
    stat, so it cannot trigger an automount (doctor's check)."""
    return [(m, role, d) for m, _lay, role, d in candidate_layers(path, table)
            if _inside(path, os.path.normpath(d))]


def overlay_layer_of(path: str | os.PathLike[str],
                     table: MountTable | None = None) -> tuple[Layers, str, str] | None:
    """(layers, role, layer directory) when `path` is inside a layer of a mounted overlay."""
    table = table if table is not None else MountTable.read()
    target = _resolve(os.fspath(path))
    ids: set[tuple[int, int]] | None = None
    for _m, lay, role, d in candidate_layers(target, table):
        if _inside(target, os.path.realpath(d)):
            return lay, role, d
        # the same directory reached through another path (bind mount, symlink)
        try:
            st = os.stat(d)
        except OSError:
            continue
        if ids is None:
            ids = _identities(target)
        if (st.st_dev, st.st_ino) in ids:
            return lay, role, d
    return None


def layer_dirs_under(path: str | os.PathLike[str],
                     table: MountTable | None = None) -> list[tuple[Layers, str, str]]:
    """Layers of mounted overlays that lie strictly inside `path`."""
    table = table if table is not None else MountTable.read()
    top = _resolve(os.fspath(path))
    out = []
    for m in table.overlays():
        lay = layers(m)
        for role, d in lay.roles():
            if os.path.isabs(d):
                rd = os.path.realpath(d)
                if rd != top and _inside(rd, top):
                    out.append((lay, role, rd))
    return out


def refuse_if_overlay_layer(path: str | os.PathLike[str], table: MountTable | None = None,
                            *, call: str = "write") -> None:
    """Fail (EX_CANTCREAT) when `path` lies inside an upperdir, workdir, lowerdir or datadir
    of a mounted overlay. Every holdmount action that writes calls this first."""
    hit = overlay_layer_of(path, table)
    if hit is None:
        return
    lay, role, d = hit
    die(f"{call}({os.fspath(path)}): inside {role} {d} of the overlay mounted on "
        f"{lay.mount.mount_point}",
        hint=f"{KERNEL_DOC_REASON}. Write through the merged mount "
        f"({lay.mount.mount_point}) or unmount the overlay first",
        code=Exit.CANTCREAT)


# --- changes ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Renamed:
    path: str  # where the directory is now (relative to the overlay root)
    origin: str  # where its lower contents come from (relative to the overlay root)


@dataclasses.dataclass(frozen=True)
class OverlayChanges:
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
