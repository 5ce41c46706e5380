"""A real Debian 12 machine under qemu (TCG) for shutdown tests: real kernel, GPT disk with an
EFI system partition that systemd-gpt-auto-generator automounts at /boot, real `systemctl poweroff`.

Built by the test set-up (`base_image()`), cached in $HOLDMOUNT_TEST_CACHE (default
/var/cache/holdmount-tests)/vm-KEY/ (KEY: hash of the package list and the guest set-up below):

    rootfs/              debootstrap --variant=minbase bookworm + kernel; /boot empty
    vmlinuz initrd.img   for qemu's direct kernel boot (small initrd: virtio_pci, virtio_blk, ext4)

Each test gets its own disk (`Disk`): rootfs as an overlay's lower layer in a private mount
namespace, holdmount's .deb (packaging/build-deb) installed into the upper layer with dpkg in a
chroot, then `mkfs.ext4 -d` of the merged tree as the root partition and an ESP made with
mkfs.vfat/mtools, written into a GPT image made by sfdisk — no loop devices. After the guest
powers off, the host reads the ESP with mtools and the root's journal through a read-only loop
mount.

Facts this relies on (measured): /dev/kvm on these machines cannot run stock guests, TCG can
(`-accel tcg,tb-size=256`, one vCPU, ~14 s to multi-user); gpt-auto mounts the ESP at an empty
/boot, not in fstab, as an automount even on a non-EFI boot; `boot.automount.d/` with
`TimeoutIdleSec=2s` cuts its idle timeout; e2scrub and the serial getty must be masked.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from debian13 import CACHE, host_mirror

SUITE = "bookworm"
PACKAGES = ("systemd", "systemd-sysv", "udev", "dbus", "linux-image-amd64", "initramfs-tools",
            "util-linux", "mount", "kmod", "procps", "python3", "python3-pystemd")
ESP_MB = 64
ROOT_MB = 1400
ESP_OFFSET = 1024 * 1024
ROOT_OFFSET = (1 + ESP_MB) * 1024 * 1024
# GPT partition types: EFI system partition; Linux root (x86-64), what gpt-auto looks for
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
ROOT_TYPE = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"

# The guest's fixed set-up (part of the cache key).
_MASKED = ("serial-getty@ttyS0.service", "getty@tty1.service", "e2scrub_reap.service",
           "e2scrub_all.timer", "apt-daily.timer", "apt-daily-upgrade.timer",
           "systemd-timesyncd.service")
_GUEST_FILES = {
    "etc/hostname": "vmtest\n",
    # /boot deliberately not in fstab: gpt-auto makes it an automount of the ESP
    "etc/fstab": "/dev/vda2 / ext4 rw,errors=remount-ro 0 1\n",
    "etc/initramfs-tools/conf.d/vmtest": "MODULES=list\n",
    "etc/initramfs-tools/modules": "virtio_pci\nvirtio_blk\next4\n",
    # gpt-auto's default idle timeout is 120 s
    "etc/systemd/system/boot.automount.d/10-idle.conf": "[Automount]\nTimeoutIdleSec=2s\n",
}


def _key() -> str:
    text = "\n".join([SUITE, *PACKAGES, *_MASKED, *(f"{k}={v}" for k, v in
                                                      sorted(_GUEST_FILES.items()))])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def run(args: Sequence[str], *, timeout: float = 600, check: bool = True,
        **kw: object) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                       **kw)  # type: ignore[call-overload]
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)[:200]}: exit {r.returncode}\n"
                           f"{(r.stdout + r.stderr)[-3000:]}")
    return r  # type: ignore[no-any-return]


def tools_available() -> list[str]:
    """The host tools the VM tests need that are missing."""
    return [t for t in ("qemu-system-x86_64", "debootstrap", "mkfs.vfat", "mcopy", "mtype",
                        "sfdisk", "mkfs.ext4") if shutil.which(t) is None]


@dataclasses.dataclass(frozen=True)
class BaseImage:
    rootfs: Path
    vmlinuz: Path
    initrd: Path


def _build_base(dest: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".build-", dir=CACHE))
    try:
        r = tmp / "rootfs"
        run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE,
             str(r), host_mirror()], timeout=1800)
        for path, text in _GUEST_FILES.items():
            (r / path).parent.mkdir(parents=True, exist_ok=True)
            (r / path).write_text(text)
        run(["chroot", str(r), "passwd", "-d", "root"])
        kver = next((r / "lib" / "modules").iterdir()).name
        run(["chroot", str(r), "update-initramfs", "-c", "-k", kver])
        shutil.move(r / "boot" / f"vmlinuz-{kver}", tmp / "vmlinuz")
        shutil.move(r / "boot" / f"initrd.img-{kver}", tmp / "initrd.img")
        for p in (r / "boot").iterdir():  # gpt-auto mounts the ESP only on an EMPTY /boot
            p.unlink() if p.is_symlink() or p.is_file() else shutil.rmtree(p)
        run(["chroot", str(r), "apt-get", "clean"])
        (r / "var" / "log" / "journal").mkdir(parents=True, exist_ok=True)
        for unit in _MASKED:
            link = r / "etc" / "systemd" / "system" / unit
            link.unlink(missing_ok=True)
            link.symlink_to("/dev/null")
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def base_image() -> BaseImage:
    """The cached base (built on first use: debootstrap + initramfs, ~2 min)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    dest = CACHE / f"vm-{_key()}"
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (dest / "vmlinuz").exists():
            _build_base(dest)
            for old in CACHE.glob("vm-*"):
                if old != dest:
                    shutil.rmtree(old, ignore_errors=True)
    return BaseImage(dest / "rootfs", dest / "vmlinuz", dest / "initrd.img")


_DISK_SCRIPT = r"""
set -eu
lower=$1 work=$2; shift 2
mkdir -p "$work/upper" "$work/w" "$work/merged"
mount -t overlay -o "lowerdir=$lower,upperdir=$work/upper,workdir=$work/w" vmdisk "$work/merged"
m=$work/merged
cp -a "$work/files/." "$m/"
if [ $# -gt 0 ]; then
    mkdir -p "$m/tmp/debs"; cp "$@" "$m/tmp/debs/"
    mount -t proc proc "$m/proc"
    chroot "$m" sh -c 'dpkg -i /tmp/debs/*.deb' >&2
    umount "$m/proc"; rm -rf "$m/tmp/debs"
fi
mkfs.ext4 -q -F -L root -d "$m" "$work/root.img" "$ROOT_MB"M
"""


class Disk:
    """One test's disk image: the base rootfs + FILES (path -> text or (text, mode)) + DEBS."""

    def __init__(self, base: BaseImage, workdir: Path, files: dict[str, str | tuple[str, int]],
                 debs: Sequence[Path] = ()) -> None:
        self.base = base
        self.path = workdir / "disk.raw"
        work = workdir / "build"
        (work / "files").mkdir(parents=True)
        for path, spec in files.items():
            text, mode = spec if isinstance(spec, tuple) else (spec, 0o644)
            p = work / "files" / path.lstrip("/")
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
            p.chmod(mode)
        run(["unshare", "-m", "--propagation", "private", "sh", "-c", _DISK_SCRIPT, "disk",
             str(base.rootfs), str(work), *map(str, debs)],
            env={**os.environ, "ROOT_MB": str(ROOT_MB)}, timeout=900)
        with open(self.path, "wb") as f:
            f.truncate((2 + ESP_MB + ROOT_MB) * 1024 * 1024)
        run(["sfdisk", "-q", str(self.path)], input=(
            "label: gpt\n"
            f"start=1MiB, size={ESP_MB}MiB, type={ESP_TYPE}, name=esp\n"
            f"size={ROOT_MB}MiB, type={ROOT_TYPE}, name=root\n"))
        esp = work / "esp.img"
        run(["mkfs.vfat", "-F", "32", "-n", "ESP", "-C", str(esp), str(ESP_MB * 1024)])
        marker = work / "from-host.txt"
        marker.write_text("written by the host\n")
        run(["mcopy", "-i", str(esp), str(marker), "::/from-host.txt"])
        for img, offset in ((esp, ESP_OFFSET), (work / "root.img", ROOT_OFFSET)):
            run(["dd", f"if={img}", f"of={self.path}", "bs=1M", f"seek={offset // 2**20}",
                 "conv=notrunc,sparse", "status=none"])
        shutil.rmtree(work)

    def boot(self, serial_log: Path, *, append: str = "", timeout: float = 300) -> float:
        """Boot until the guest powers itself off; return the wall time. qemu must exit 0."""
        t0 = time.monotonic()
        with open(serial_log, "wb") as log:
            r = subprocess.run(
                ["qemu-system-x86_64", "-accel", "tcg,tb-size=256", "-cpu", "max", "-smp", "1",
                 "-m", "1G", "-nographic", "-no-reboot", "-nic", "none",
                 "-kernel", str(self.base.vmlinuz), "-initrd", str(self.base.initrd),
                 "-append", f"root=/dev/vda2 rw console=ttyS0 panic=-1 quiet {append}",
                 "-drive", f"file={self.path},format=raw,if=virtio,cache=unsafe"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                timeout=timeout, start_new_session=True)
        if r.returncode != 0:
            raise RuntimeError(f"qemu exited {r.returncode}; serial log {serial_log}:\n"
                               + serial_log.read_text(errors="replace")[-3000:])
        return time.monotonic() - t0

    def esp_file(self, name: str) -> str | None:
        """The content of ::/NAME on the ESP (mtools; the host kernel has no vfat)."""
        r = run(["mtype", "-i", f"{self.path}@@{ESP_OFFSET}", f"::/{name}"], check=False)
        return r.stdout if r.returncode == 0 else None

    def journal(self, *args: str) -> str:
        """journalctl of the guest's persistent journal (root fs mounted read-only)."""
        script = ("set -eu; m=$(mktemp -d); "
                  f"mount -o ro,noload,loop,offset={ROOT_OFFSET},sizelimit={ROOT_MB * 2**20} "
                  f"{self.path} $m; journalctl -D $m/var/log/journal --no-pager \"$@\"; umount $m")
        return run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "j",
                    *args]).stdout
