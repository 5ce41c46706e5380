"""A Debian 13 root (systemd 257, ostree 2025.x, Python 3.13) for the nspawn tests, cached.

Built by the test set-up itself (`ensure_root()`; also `python3 tests/helpers/debian13.py` from
scripts/test), outside the checkout:

    $HOLDMOUNT_TEST_CACHE (default /var/cache/holdmount-tests)/
      debian13-KEY/             debootstrap --variant=minbase trixie; KEY = hash of the package
                                list below: a new list builds a new root (old ones are removed)
      debian13-venv-KEY/        a venv made by the root's python3.13, holdmount installed editable
                                from this checkout (KEY: checkout path + pyproject.toml), bound
                                into containers at /opt/holdmount

The root is the lower layer of a `tests/helpers/nspawn.py` container (as `/` is for the Debian 12
host root). Its /usr/bin/holdmount is a symlink to /opt/holdmount/bin/holdmount, so holdmount's own
unit files run unmodified. The editable install points at the checkout's own path, which every
container binds in: the code under test is always the checkout's.

Pitfalls (measured): pip in the chroot needs the host's CA bundle and must not inherit
PIP_FIND_LINKS; pystemd builds from source (gcc, pkg-config, libsystemd-dev, python3-dev in the
root); the host's systemd-nspawn 252 boots systemd 257 only with the unified cgroup hierarchy.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("HOLDMOUNT_TEST_CACHE", "/var/cache/holdmount-tests"))
SUITE = "trixie"
# ostree-boot: ostree's units; gcc, pkg-config, libsystemd-dev, python3-dev: pystemd's build
PACKAGES = ("systemd", "systemd-sysv", "dbus", "ostree", "ostree-boot", "python3",
            "python3-venv", "python3-dev", "gcc", "pkg-config", "libsystemd-dev", "udev", "kmod",
            "util-linux", "procps", "e2fsprogs")
VENV_IN_ROOT = "/opt/holdmount"


def _key(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def root_dir() -> Path:
    return CACHE / f"debian13-{_key(SUITE, *PACKAGES)}"


def venv_dir() -> Path:
    deps = (REPO / "pyproject.toml").read_text()
    return CACHE / f"debian13-venv-{_key(str(root_dir()), str(REPO), deps)}"


def host_mirror() -> str:
    """The host's Debian mirror: deb822 sources first, then a one-line sources.list (what a
    Debian 12 installed by its installer has)."""
    for f in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for line in f.read_text().splitlines():
            if line.startswith("URIs:"):
                return line.split()[1]
    lists = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]
    for f in (f for f in lists if f.exists()):
        for line in f.read_text().splitlines():
            if "[" in line:  # deb [arch=... signed-by=...] URL SUITE ...: drop the options
                line = line[:line.index("[")] + line[line.index("]", line.index("[")) + 1:]
            words = line.split()
            if words[:1] == ["deb"] and len(words) > 1:
                return words[1]
    raise RuntimeError("no mirror in /etc/apt/sources.list.d/*.sources or sources.list")


def _run(args: list[str], **kw: object) -> None:
    r = subprocess.run(args, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if r.returncode != 0:
        tail = (r.stdout + r.stderr)[-3000:]
        raise RuntimeError(f"{' '.join(args[:6])} ...: exit {r.returncode}\n{tail}")


def _build_root(dest: Path) -> None:
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap not installed (run scripts/setup)")
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".build-", dir=CACHE))
    try:
        _run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
              SUITE, str(tmp), host_mirror()], timeout=1800)
        (tmp / "opt" / "holdmount").mkdir(parents=True, exist_ok=True)
        (tmp / "usr" / "bin" / "holdmount").symlink_to(f"{VENV_IN_ROOT}/bin/holdmount")
        # the image's apt caches are not needed by the tests
        shutil.rmtree(tmp / "var" / "cache" / "apt" / "archives", ignore_errors=True)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # roots of other package lists, and every venv (each was made for an older root: the venv's
    # key includes the root's)
    for old in CACHE.glob("debian13-*"):
        if old != dest and not old.name.startswith(dest.name + "."):
            shutil.rmtree(old, ignore_errors=True)


_VENV_SCRIPT = r"""
set -eu
root=$1 venv=$2 repo=$3
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount --bind "$venv" "$root/opt/holdmount"
mkdir -p "$root$repo" && mount --bind "$repo" "$root$repo"
cp /etc/ssl/certs/ca-certificates.crt "$root/tmp/host-ca.crt"
cp /etc/resolv.conf "$root/etc/resolv.conf"
chroot "$root" /usr/bin/python3 -m venv /opt/holdmount
chroot "$root" env -u PIP_FIND_LINKS HOME=/root TMPDIR=/tmp PIP_CERT=/tmp/host-ca.crt \
    SSL_CERT_FILE=/tmp/host-ca.crt /opt/holdmount/bin/pip install -q --no-cache-dir \
    --disable-pip-version-check -e "$repo"
chroot "$root" /usr/bin/holdmount --version
rm -f "$root/tmp/host-ca.crt"
"""


def _build_venv(root: Path, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".build")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        # in a private mount namespace: the chroot's mounts vanish with it
        _run(["unshare", "-m", "--propagation", "private", "sh", "-c", _VENV_SCRIPT, "venv",
              str(root), str(tmp), str(REPO)], timeout=900)
        # the venv's scripts name /opt/holdmount, not the build path: it can be renamed
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prefix = "debian13-venv-"
    for old in CACHE.glob(prefix + "*"):
        if old != dest and not (old / "bin" / "python").exists():
            shutil.rmtree(old, ignore_errors=True)


def ensure_root() -> tuple[Path, Path]:
    """(root, venv): build what is missing, under a lock (parallel sessions wait)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        root = root_dir()
        if not (root / "usr" / "bin" / "ostree").exists():
            _build_root(root)
        venv = venv_dir()
        if not (venv / "bin" / "holdmount").exists():
            _build_venv(root, venv)
        return root, venv


if __name__ == "__main__":
    r, v = ensure_root()
    print(f"debian13 root: {r}\ndebian13 venv: {v}")
    sys.exit(0)
