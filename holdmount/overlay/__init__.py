"""overlayfs: the layers of a mounted overlay (`layers`), the guard that keeps holdmount from
writing into them (`guard`), and the list of changes read from the upperdir alone
(`changelist`, `holdmount overlay changes`). The names below are the package's interface."""

from __future__ import annotations

from holdmount.overlay.changelist import OverlayChanges, Renamed, changes, find_overlay
from holdmount.overlay.guard import (
    KERNEL_DOC_REASON,
    candidate_layers,
    layer_dirs_under,
    lexical_layer_hits,
    overlay_layer_of,
    refuse_if_overlay_layer,
    refuse_if_unknown_layers,
    unknown_layers,
)
from holdmount.overlay.layers import Layers, layers, split_lowerdir

__all__ = ["KERNEL_DOC_REASON", "Layers", "OverlayChanges", "Renamed", "candidate_layers",
           "changes", "find_overlay", "layer_dirs_under", "layers", "lexical_layer_hits",
           "overlay_layer_of", "refuse_if_overlay_layer", "refuse_if_unknown_layers",
           "split_lowerdir", "unknown_layers"]
