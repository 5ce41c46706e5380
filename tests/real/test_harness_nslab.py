"""The merge/overlay namespace lab itself (helpers/merge_nslab.py): what it mounts stays in
its namespace, and is readable from here through the keeper's root."""

from __future__ import annotations

from pathlib import Path

import merge_nslab as _lab
import pytest
from merge_nslab import NsLab

cgroup = _lab.cgroup  # the shared fixture
nslab = _lab.nslab  # the shared fixture


@pytest.mark.real
def test_lab_mounts_stay_in_the_lab(nslab: NsLab, tmp_path: Path) -> None:
    where = tmp_path / "m"
    nslab.mount_tmpfs(where, "size=1m")
    nslab.sh(f"echo inside > '{where}/f'")
    assert str(where) in nslab.mountinfo()
    assert str(where) not in Path("/proc/self/mountinfo").read_text()
    assert not (where / "f").exists()  # the host sees the empty directory
    assert (nslab.path(where) / "f").read_text() == "inside\n"
