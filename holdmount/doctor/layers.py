"""The Overlay section: is the path inside a layer (upper, work, lower, data) of a mounted
overlay, where changing it is undefined behaviour. Judged by the path's text alone (no stat, so
nothing is triggered)."""

from __future__ import annotations

from holdmount import overlay
from holdmount.doctor.report import Finding, Section, Severity
from holdmount.doctor.walk import Walk
from holdmount.mounts import Mount, MountTable


def overlay_findings(w: Walk, table: MountTable) -> list[Finding]:
    out = [_in_layer(w, m, role, layer)
           for m, role, layer in overlay.lexical_layer_hits(w.resolved, table)]
    # Overlays whose layers mountinfo shows as relative paths (relative to the mounter's cwd at
    # mount time, unknowable here): the same answer the merge's layer guard refuses on.
    unknown: dict[int, tuple[Mount, list[str]]] = {}
    for m, _role, d in overlay.unknown_layers(w.resolved, table):
        unknown.setdefault(m.mnt_id, (m, []))[1].append(d)
    out += [_layers_unknown(w, m, dirs) for m, dirs in unknown.values()]
    if not out:
        out.append(Finding(Section.OVERLAY, Severity.OK, "no-overlay-layer",
                           "not inside a layer of a mounted overlay"))
    return out


def _in_layer(w: Walk, m: Mount, role: str, layer: str) -> Finding:
    return Finding(
        Section.OVERLAY, Severity.WARNING, "overlay-layer",
        f"{w.resolved} is inside the {role} {layer} of the overlay mounted on {m.mount_point}: "
        "changing a layer while the overlay is mounted is undefined behaviour (kernel overlayfs "
        "documentation)",
        remedy=f"make changes through {m.mount_point}, or unmount the overlay first; reading the "
        "upperdir to list changes (holdmount overlay changes) is fine",
        details={"role": role, "layer": layer, "overlay": m.mount_point, "mnt_id": m.mnt_id})


def _layers_unknown(w: Walk, m: Mount, dirs: list[str]) -> Finding:
    return Finding(
        Section.OVERLAY, Severity.WARNING, "overlay-layers-unknown",
        f"the overlay mounted on {m.mount_point} names layers by relative paths "
        f"({', '.join(dirs)}): relative to its mounter's directory at mount time, which the "
        f"mount table does not record, so whether {w.resolved} is inside one is unknown",
        remedy=f"make changes through {m.mount_point}; remount the overlay with absolute layer "
        "paths so doctor (and holdmount's layer guard) can tell",
        details={"overlay": m.mount_point, "mnt_id": m.mnt_id, "relative_layers": dirs})
