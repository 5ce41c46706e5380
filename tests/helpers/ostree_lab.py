"""A throw-away ostree sysroot, booted in systemd-nspawn the way ostree believes it is booted.

Facts this relies on (measured with Debian's ostree 2022.7; docs/ostree.md has the rest):

- ostree decides it is booted from `/run/ostree-booted` plus the device/inode of `/` matching a
  deployment directory (it does not read /proc/cmdline for that). So the container's root is the
  deployment directory itself: `OstreeContainer` bind-mounts it over the harness's overlay root
  (inside the harness's private keeper namespace), and an early oneshot touches /run/ostree-booted.
- `--bind=S:/sysroot:norbind`: without `norbind` the `/usr` bind below leaks into the deployment
  as seen through /sysroot and finalize fails ("Failed to find kernel in /usr/lib/modules").
- `--bind=S/ostree/deploy/debian/var:/var` (the stateroot's var, shared by all deployments: the
  persistent journal and holdmount's stamp live there), `--bind-ro=/usr:/usr` (the committed tree
  has only a placeholder kernel in usr; the programs come from the host).
- The repository is bound in read-only at its own path (`--bind-ro=REPO:REPO`): the venv's
  scripts and its editable install name absolute paths. The deployment root is immutable
  (ostree sets FS_IMMUTABLE_FL), so nspawn cannot create that mount point: the committed tree
  carries the repository's directories.
- /boot is a bind of /sysroot/boot behind a `.automount` with a short idle timeout.

Caching: the ostree repository with the lab's commits is built once per test session
(`lab_repo` fixture, ~1 s); each test gets a fresh sysroot (init-fs, os-init, pull-local, deploy:
~0.5 s) in a temp dir on the root fs, removed afterwards (`sysroot_factory`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from nspawn import HOST_ROOT, Container, ContainerError, FileSpec, OsRoot
from nspawn import os_root_fixture as _os_root  # noqa: F401  (registers "os_root")

REPO = Path(__file__).resolve().parents[2]
OSNAME = "debian"
KVER = "6.1.0-holdmount-lab"
REF_BASE = "holdmount-lab/base"
REF_NEXT = "holdmount-lab/next"
MARKER = "/run/ostree/staged-deployment"
LOCK = "/run/ostree/staged-deployment-locked"
OSTREE_STAMP = "/boot/ostree/finalize-failure.stamp"
# ostree's three units that holdmount replaces (see packaging/ostree/ and docs/ostree.md)
OSTREE_PATH_UNIT = "ostree-finalize-staged.path"
OSTREE_FINALIZE_UNIT = "ostree-finalize-staged.service"
OSTREE_HOLD_UNIT = "ostree-finalize-staged-hold.service"
PACKAGING = REPO / "packaging" / "ostree"
SWITCH_DROPIN = f"/etc/systemd/system/{OSTREE_FINALIZE_UNIT}.d/50-holdmount.conf"
HOLDMOUNT = HOST_ROOT.holdmount  # Debian 12 (the host's venv); OsRoot.holdmount in general
# holdmount's units come from the checkout's units/; this variable points the tests at another
# directory (e.g. a distribution's /usr/lib/systemd/system) to check the integration against it
UNITS_ENV = "HOLDMOUNT_TEST_UNITS_DIR"
HOLDMOUNT_STAMP = "/var/lib/holdmount/failure.stamp"  # the daemon's default ([daemon] stamp)
WORKDIR = Path("/var/tmp")  # on the root fs: the deployment must be a real directory tree
BOOTED_UNIT = "ostree-lab-booted.service"

_BOOTED_SERVICE = f"""\
[Unit]
Description=ostree lab: mark this container as an ostree-booted system
DefaultDependencies=no
# before anything that checks ConditionPathExists=/run/ostree-booted
Before=sysinit.target local-fs.target {OSTREE_HOLD_UNIT} {OSTREE_FINALIZE_UNIT} holdmount.service
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/touch /run/ostree-booted
"""

_BOOT_MOUNT = """\
[Unit]
Description=ostree lab: /boot, a bind of /sysroot/boot (what ostree-prepare-root would set up)
[Mount]
What=/sysroot/boot
Where=/boot
Type=none
Options=bind
"""


def boot_automount(idle: str) -> str:
    return ("[Unit]\n"
            "Description=ostree lab: /boot behind an automount (like systemd-gpt-auto's ESP)\n"
            "[Automount]\n"
            "Where=/boot\n"
            f"TimeoutIdleSec={idle}\n")


def run(args: Sequence[str], *, check: bool = True, timeout: float = 120,
        **kw: Any) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: exit {r.returncode}\n{r.stdout}{r.stderr}")
    return r


def ostree_available() -> bool:
    """The host's ostree (it builds the sysroots) and ostree-boot's units."""
    return shutil.which("ostree") is not None and \
        Path("/lib/systemd/system", OSTREE_FINALIZE_UNIT).exists()


def ostree_version(root: OsRoot) -> str:
    """The version of the root's ostree (from its dpkg status), e.g. "2025.2-1"."""
    status = root.host_path("/var/lib/dpkg/status").read_text()
    m = re.search(r"^Package: ostree\n(?:[^\n]+\n)*?Version: (\S+)", status, re.M)
    return m.group(1) if m else "?"


def _unimmutable(tree: Path) -> None:
    """Clear ostree's immutable flag on deployment roots so the tree can be removed."""
    deploy = tree.glob("ostree/deploy/*/deploy/*")
    dirs = [str(d) for d in deploy if d.is_dir() and not d.is_symlink()]
    if dirs:
        run(["chattr", "-i", *dirs], check=False)


# --- the repository with the lab's commits (once per session) ---------------------------------

@dataclasses.dataclass(frozen=True)
class LabRepo:
    path: Path  # a bare repo holding REF_BASE and REF_NEXT
    commits: Mapping[str, str]  # ref -> checksum
    os: OsRoot  # the root whose /usr the deployments run (its /etc is the tree's usr/etc)

    @classmethod
    def build(cls, workdir: Path, root: OsRoot) -> LabRepo:
        tree = workdir / "tree"
        usr = tree / "usr"
        mods = usr / "lib" / "modules" / KVER
        mods.mkdir(parents=True)
        # placeholders: ostree only copies them to /boot (and hashes them into the bootcsum)
        (mods / "vmlinuz").write_text("holdmount lab: not a kernel\n")
        (mods / "initramfs.img").write_text("holdmount lab: not an initramfs\n")
        # the host's /etc becomes the tree's default /etc (ostree merges usr/etc into /etc)
        run(["cp", "-a", str(root.host_path("/etc")), str(usr / "etc")])
        shutil.copy(root.host_path("/usr/lib/os-release"), usr / "lib" / "os-release")
        # opt/holdmount: the Debian 13 root's venv is bound there
        for d in ("boot", "dev", "proc", "sys", "run", "tmp", "var", "sysroot", "home", "root",
                  "mnt", "opt", "opt/holdmount", "srv", "media"):
            (tree / d).mkdir(exist_ok=True)
        # the repository's own path, bound in by OstreeContainer (the deployment root is
        # immutable, so nspawn could not create the mount point)
        repo_parts = REPO.parts[1:]
        if repo_parts and repo_parts[0] not in ("usr", "var", "sysroot", "boot", "etc"):
            (tree.joinpath(*repo_parts)).mkdir(parents=True, exist_ok=True)
        for name, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"),
                             ("lib64", "usr/lib64"), ("ostree", "sysroot/ostree")):
            (tree / name).symlink_to(target)
        repo = workdir / "repo"
        run(["ostree", f"--repo={repo}", "init", "--mode=bare"])
        run(["ostree", f"--repo={repo}", "config", "set", "core.fsync", "false"])
        commits = {}
        for ref in (REF_BASE, REF_NEXT):
            if ref == REF_NEXT:  # differ by one file: a new commit, the same kernel
                (usr / "share" / "holdmount-lab").mkdir(parents=True, exist_ok=True)
                (usr / "share" / "holdmount-lab" / "next").write_text("next\n")
            run(["ostree", f"--repo={repo}", "commit", f"--branch={ref}", f"--tree=dir={tree}",
                 "--no-xattrs", f"--subject={ref}"])
            commits[ref] = run(["ostree", f"--repo={repo}", "rev-parse", ref]).stdout.strip()
        shutil.rmtree(tree)
        return cls(repo, commits, root)


# --- one sysroot -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LoaderEntry:
    version: int
    commit: str  # the deployment's commit checksum
    file: str


class Sysroot:
    """`ostree admin init-fs` + `os-init` + the lab's commits + one deployment of REF_BASE."""

    def __init__(self, lab: LabRepo) -> None:
        self.lab = lab
        self.base = Path(tempfile.mkdtemp(prefix="holdmount-ostree-", dir=WORKDIR))
        self.path = self.base / "sysroot"
        self.path.mkdir()
        try:
            s = str(self.path)
            run(["ostree", "admin", "init-fs", s])
            run(["ostree", "admin", "os-init", f"--sysroot={s}", OSNAME])
            repo = f"--repo={self.path / 'ostree/repo'}"
            run(["ostree", repo, "config", "set", "core.fsync", "false"])
            run(["ostree", repo, "pull-local", str(lab.path), REF_BASE, REF_NEXT])
            run(["ostree", "admin", "deploy", f"--sysroot={s}", f"--os={OSNAME}", REF_BASE])
            deployments = self.deployments()
            if len(deployments) != 1:
                raise RuntimeError(f"expected one deployment in {s}, found {deployments}")
            self.first_deployment = deployments[0]
        except BaseException:
            self.remove()
            raise

    @property
    def var(self) -> Path:
        return self.path / "ostree" / "deploy" / OSNAME / "var"

    @property
    def boot(self) -> Path:
        return self.path / "boot"

    def deployments(self) -> list[Path]:
        """Deployment directories, in `ostree admin status` order (the default first)."""
        out = self.status()
        names = re.findall(rf"^\W*{OSNAME} ([0-9a-f]{{64}}\.\d+)", out, re.M)
        return [self.path / "ostree" / "deploy" / OSNAME / "deploy" / n for n in names]

    def status(self) -> str:
        return run(["ostree", "admin", "status", f"--sysroot={self.path}"]).stdout

    def status_commits(self) -> list[str]:
        return [d.name.split(".")[0] for d in self.deployments()]

    def loader_entries(self) -> list[LoaderEntry]:
        """/boot/loader/entries, highest version (the default) first, each with its commit."""
        entries = []
        for f in sorted((self.boot / "loader" / "entries").glob("*.conf")):
            text = f.read_text()
            version = int(re.search(r"^version (\d+)", text, re.M).group(1))  # type: ignore[union-attr]
            m = re.search(r"ostree=(/ostree/boot\.\d/\S+)", text)
            link = self.path / m.group(1).lstrip("/") if m else None
            target = link.resolve() if link is not None else Path("?")
            entries.append(LoaderEntry(version, target.name.split(".")[0], f.name))
        return sorted(entries, key=lambda e: -e.version)

    def staged_deployment_dirs(self) -> list[Path]:
        """Deployment directories that no bootloader entry names (a staged, unfinalized one)."""
        known = {e.commit for e in self.loader_entries()}
        d = self.path / "ostree" / "deploy" / OSNAME / "deploy"
        return [p for p in sorted(d.iterdir())
                if p.is_dir() and p.name.split(".")[0] not in known]

    def remove(self) -> None:
        _unimmutable(self.path)
        shutil.rmtree(self.base, ignore_errors=True)


# --- the container -----------------------------------------------------------------------------

class OstreeContainer(Container):
    """A `Container` whose root is a deployment of `sysroot` (the first one), booted as ostree.

    Container paths under /var, /sysroot and /boot map to the sysroot on the host (`path()`),
    and `journal()` reads the stateroot's persistent journal.
    """

    def __init__(self, name: str, sysroot: Sysroot, *, idle: str = "2s",
                 units: Mapping[str, str] = {}, files: Mapping[str, FileSpec] = {},
                 wants: Sequence[str] = (), binds: Sequence[str] = (),
                 extra_args: Sequence[str] = ()) -> None:
        self.sysroot = sysroot
        self.deployment = sysroot.first_deployment
        (sysroot.var / "log" / "journal").mkdir(parents=True, exist_ok=True)
        s = sysroot.path
        lab_units = {BOOTED_UNIT: _BOOTED_SERVICE, "boot.mount": _BOOT_MOUNT,
                     "boot.automount": boot_automount(idle)}
        usr = sysroot.lab.os.host_path("/usr")
        super().__init__(
            name, units={**lab_units, **units}, files=files,
            wants=[BOOTED_UNIT, "boot.automount", *wants],
            binds=[f"{s}:/sysroot:norbind", f"{sysroot.var}:/var", *binds],
            extra_args=[f"--bind-ro={usr}:/usr", f"--bind-ro={REPO}:{REPO}", *extra_args],
            os_root=sysroot.lab.os)
        # ostree >= 2023's ostree-boot-complete.service has ConditionKernelCommandLine=ostree; in
        # a container systemd reads its "kernel command line" from PID 1's arguments
        self.init_args.append("ostree")

    def _start_keeper(self) -> None:
        super()._start_keeper()
        # the deployment directory itself over the harness's overlay root, in the keeper's
        # private namespace only: `/` in the container has the deployment's device/inode
        r = subprocess.run(["nsenter", "-t", str(self.keeper_pid), "-m", "--", "mount",
                            "--bind", str(self.deployment), str(self.ns_dir / "root")],
                           capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise ContainerError(f"mount --bind {self.deployment}: {r.stderr.strip()}")

    def path(self, container_path: str) -> Path:
        for prefix, host in (("/var", self.sysroot.var), ("/sysroot", self.sysroot.path),
                             ("/boot", self.sysroot.boot)):
            if container_path == prefix or container_path.startswith(prefix + "/"):
                return host / container_path[len(prefix):].lstrip("/")
        return super().path(container_path)

    def mask(self, *units: str) -> None:
        for unit in units:
            p = self.path(f"/etc/systemd/system/{unit}")
            if p.is_symlink() or p.exists():
                p.unlink()
            p.symlink_to("/dev/null")

    def journal(self, *args: str) -> str:
        r = subprocess.run(["journalctl", "-D", str(self.sysroot.var / "log" / "journal"),
                            "--no-pager", *args], capture_output=True, text=True, timeout=60)
        if r.returncode != 0 and not r.stdout:
            raise ContainerError(f"journalctl {' '.join(args)}: rc={r.returncode}: {r.stderr}")
        return r.stdout

    def stage(self, *extra: str) -> subprocess.CompletedProcess[str]:
        """`ostree admin deploy --stage REF_NEXT` inside the container."""
        return self.exec(["ostree", "admin", "deploy", "--stage", f"--os={OSNAME}", *extra,
                          REF_NEXT], check=True, timeout=120)

    def boot_mounted(self) -> bool:
        """Is /boot (the bind of /sysroot/boot) mounted over the automount right now?"""
        return self.mountinfo().is_real_mounted("/boot")


# --- fixtures ----------------------------------------------------------------------------------

@pytest.fixture(scope="session", name="lab_repo")
def lab_repo(os_root: OsRoot) -> Iterator[LabRepo]:
    """The lab's commits for one root (tests using it run once per root)."""
    if not ostree_available():
        pytest.skip("ostree / ostree-boot not installed (run scripts/setup)")
    work = Path(tempfile.mkdtemp(prefix="holdmount-ostree-repo-", dir=WORKDIR))
    try:
        yield LabRepo.build(work, os_root)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(name="sysroot_factory")
def sysroot_factory(lab_repo: LabRepo) -> Iterator[Callable[[], Sysroot]]:
    made: list[Sysroot] = []

    def make() -> Sysroot:
        s = Sysroot(lab_repo)
        made.append(s)
        return s

    yield make
    for s in made:
        s.remove()


# --- holdmount in the container ----------------------------------------------------------------

def localize(text: str, root: OsRoot) -> str:
    """Unit text with /usr/bin/holdmount replaced by the root's holdmount (the Debian 12 root
    runs the checkout's venv; the Debian 13 root has /usr/bin/holdmount)."""
    return re.sub(r"(?m)^(Exec\w*=.*?)/usr/s?bin/holdmount\b", rf"\g<1>{root.holdmount}",
                  text)


def holdmount_units(root: OsRoot = HOST_ROOT) -> dict[str, str]:
    """holdmount.service (+ holdmount-report.service) with ExecStart= on the root's holdmount."""
    d = Path(os.environ.get(UNITS_ENV) or REPO / "units")
    service = d / "holdmount.service"
    if not service.exists():
        pytest.skip(f"{service} does not exist yet (holdmount is not installed in this sysroot)")
    units = {}
    for name in ("holdmount.service", "holdmount-report.service"):
        p = d / name
        if p.exists():
            units[name] = localize(p.read_text(), root)
    return units


def install_holdmount_dropin(c: OstreeContainer) -> None:
    """holdmount.service.d/50-ostree.conf: the package's part (under /etc here: the container's
    /usr is the root's, read-only), not the switch's."""
    c.write_file("/etc/systemd/system/holdmount.service.d/50-ostree.conf",
                 (PACKAGING / "holdmount.service.d" / "50-ostree.conf").read_text())


def switch_on(c: OstreeContainer) -> str:
    """What an admin does (docs/ostree.md), offline on the deployment's /etc: the unit drop-in
    (under /etc: the container's /usr is the root's, read-only), then `holdmount-ostree-switch
    on` (config, ostree-finalize-staged.service drop-in, enable), its drop-in pointed at the
    root's holdmount."""
    install_holdmount_dropin(c)
    r = run([str(PACKAGING / "holdmount-ostree-switch"), "on", f"--root={c.deployment}"])
    dropin = c.path(SWITCH_DROPIN)
    dropin.write_text(localize(dropin.read_text(), c.os))
    return r.stdout + r.stderr


def switch_off(c: OstreeContainer) -> str:
    r = run([str(PACKAGING / "holdmount-ostree-switch"), "off", f"--root={c.deployment}"])
    return r.stdout + r.stderr


# --- one cycle: boot, stage, wait, power off ---------------------------------------------------

# ostree-finalize-staged.service stops with TimeoutStopSec=5m upstream: a hanging ExecStop would
# hold every failing cycle for 5 minutes. 5 s keeps a hanging cycle at ~30 s.
FINALIZE_TIMEOUT_DROPIN = (f"/etc/systemd/system/{OSTREE_FINALIZE_UNIT}.d/lab-timeout.conf",
                           "[Service]\nTimeoutStopSec=5s\n")


@dataclasses.dataclass
class Timings:
    boot: float = 0.0
    stage: float = 0.0
    wait: float = 0.0
    poweroff: float = 0.0

    def line(self, what: str) -> str:
        return (f"[ostree cycle] {what}: boot {self.boot:.1f}s, stage {self.stage:.1f}s, "
                f"wait {self.wait:.1f}s, poweroff {self.poweroff:.1f}s")


def cycle(c: OstreeContainer, *, wait: float, stage_args: Sequence[str] = (),
          between: Callable[[OstreeContainer], None] | None = None,
          poweroff_timeout: float = 180) -> Timings:
    """Boot, stage REF_NEXT, wait `wait` seconds (past the idle timeout), power off."""
    t = Timings()
    t0 = time.monotonic()
    c.boot()
    t.boot = time.monotonic() - t0
    t0 = time.monotonic()
    c.stage(*stage_args)
    t.stage = time.monotonic() - t0
    t0 = time.monotonic()
    time.sleep(wait)
    if between is not None:
        between(c)
    t.wait = time.monotonic() - t0
    t0 = time.monotonic()
    c.poweroff(timeout=poweroff_timeout)
    t.poweroff = time.monotonic() - t0
    return t
