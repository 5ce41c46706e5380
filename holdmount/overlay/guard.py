"""The guard that keeps holdmount from writing into the layers of a mounted overlay.

The kernel's overlayfs documentation does not allow changes to the underlying filesystems of a
mounted overlay; every holdmount action that writes asks `refuse_if_overlay_layer` (and
`refuse_if_unknown_layers`) first; doctor asks the stat-free `lexical_layer_hits` and
`unknown_layers`.
"""

from __future__ import annotations

import os

from holdmount.errors import Exit, die
from holdmount.mounts import MountTable
from holdmount.overlay.layers import Layers, layers
from holdmount.paths import under

TYPE_CHECKING = False  # typing costs ~1 MiB at run time; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import Iterator

    from holdmount.mounts import Mount

KERNEL_DOC_REASON = (
    "the kernel's overlayfs documentation (Documentation/filesystems/overlayfs.rst, \"Changes "
    "to underlying filesystems\") does not allow changes to the underlying filesystems while "
    "they are part of a mounted overlay: if one is changed, the overlay's behaviour is "
    "undefined (though it will not crash or deadlock)"
)


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


def _foreign_layers(path: str, table: MountTable) -> Iterator[tuple[Mount, Layers, str, str]]:
    """(mount, layers, role, layer dir as in mountinfo) of every layer of every mounted overlay
    whose merged view does not contain `path` (absolute, resolved).

    A path seen through an overlay's own merged view is written through the overlay, which is
    allowed; and that overlay's layer paths are in the *mounter's* namespace, so for a container
    whose root is overlay(lowerdir=/) they would otherwise match every path."""
    for m in table.overlays():
        if under(path, m.mount_point):
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
            if under(path, os.path.normpath(d))]


def overlay_layer_of(path: str | os.PathLike[str],
                     table: MountTable | None = None) -> tuple[Layers, str, str] | None:
    """(layers, role, layer directory) when `path` is inside a layer of a mounted overlay."""
    table = table if table is not None else MountTable.read()
    target = _resolve(os.fspath(path))
    ids: set[tuple[int, int]] | None = None
    for _m, lay, role, d in candidate_layers(target, table):
        if under(target, os.path.realpath(d)):
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
                if rd != top and under(rd, top):
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
