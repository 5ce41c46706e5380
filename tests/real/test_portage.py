"""The Gentoo use, for real: PORTAGE_TMPDIR on a tmpfs automount (Debian's automount, short idle
timeout), the real `emerge` from PyPI's portage (the test extra) building and merging tiny
ebuilds into a throw-away EPREFIX, with and without `holdmount run --hold $PORTAGE_TMPDIR`.

The set-up a venv's portage needs (no Gentoo system here): PORTAGE_OVERRIDE_EPREFIX and
PORTAGE_CONFIGROOT pointing at the prefix, the venv's share/portage/config linked into it, a
hand-made repository and profile, PORTAGE_USERNAME/GRPNAME root, scanelf linked to /bin/true,
FEATURES without the sandboxes (they need Gentoo's sandbox binaries).
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from autofs import AutofsLab
from conftest import holdmount_cmd

pytestmark = pytest.mark.real

HM = holdmount_cmd()
VENV = Path(sys.executable).parent.parent
EMERGE = VENV / "bin" / "emerge"
# A tmpfs like the README's fstab line (mode 775 there, for the portage user; root here).
PTMP = "-fstype=tmpfs,size=64m,mode=0755 :tmpfs"
IDLE = 1  # seconds: the automount's idle timeout
# Each package sleeps in src_compile (files open in its build dir) and in pkg_postinst (after
# the merge, with the build dir still there), IDLE * 3 each.
EBUILD = """EAPI=8
DESCRIPTION="a tiny package for holdmount's tests"
HOMEPAGE="https://holdmount.invalid"
LICENSE="MIT"
SLOT="0"
KEYWORDS="~amd64"
S="${{WORKDIR}}"
src_compile() {{ echo "{name}" > {name}.txt; sleep {pause}; }}
src_install() {{ insinto /usr/share/{name}; doins {name}.txt; }}
pkg_postinst() {{ sleep {pause}; }}
"""
MAKE_CONF = """FEATURES="-sandbox -usersandbox -network-sandbox -ipc-sandbox -pid-sandbox \
-mount-sandbox -userpriv -usersync -userfetch -news -merge-wait -preserve-libs -xattr"
ACCEPT_KEYWORDS="~amd64"
ACCEPT_LICENSE="*"
PORTAGE_TMPDIR="{tmpdir}"
DISTDIR="{root}/distfiles"
PKGDIR="{root}/packages"
"""
MAKE_DEFAULTS = 'ARCH="amd64"\nCHOST="x86_64-pc-linux-gnu"\nACCEPT_KEYWORDS="amd64"\n' \
    'ELIBC="glibc"\nKERNEL="linux"\nUSERLAND="GNU"\n'
PACKAGES = ("app-misc/alpha", "app-misc/beta")


class Prefix:
    """A throw-away EPREFIX with its own repository, profile and make.conf."""

    def __init__(self, root: Path, tmpdir: str) -> None:
        self.root = root
        self.prefix = root / "prefix"
        repo = root / "repo"
        for d in ("prefix/etc/portage", "prefix/share/portage", "repo/metadata",
                  "repo/profiles/default", "distfiles", "bin"):
            (root / d).mkdir(parents=True)
        (self.prefix / "share/portage/config").symlink_to(VENV / "share/portage/config")
        (root / "bin/scanelf").symlink_to("/bin/true")
        (repo / "profiles/repo_name").write_text("holdmount_test\n")
        (repo / "profiles/arch.list").write_text("amd64\n")
        (repo / "profiles/categories").write_text("app-misc\n")
        (repo / "profiles/default/make.defaults").write_text(MAKE_DEFAULTS)
        (repo / "metadata/layout.conf").write_text("masters =\nthin-manifests = true\n")
        for atom in PACKAGES:
            name = atom.split("/")[1]
            (repo / atom).mkdir(parents=True)
            (repo / atom / f"{name}-1.ebuild").write_text(
                EBUILD.format(name=name, pause=3 * IDLE))
        (self.prefix / "etc/portage/make.profile").symlink_to(repo / "profiles/default")
        (self.prefix / "etc/portage/make.conf").write_text(
            MAKE_CONF.format(tmpdir=tmpdir, root=root))
        self.env = {
            "PATH": f"{root}/bin:{VENV}/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(root), "LANG": "C.UTF-8",
            "PORTAGE_OVERRIDE_EPREFIX": str(self.prefix),
            "PORTAGE_CONFIGROOT": str(self.prefix),
            "PORTAGE_USERNAME": "root", "PORTAGE_GRPNAME": "root",
            "PORTAGE_REPOSITORIES": f"[DEFAULT]\nmain-repo = holdmount_test\n"
                                    f"[holdmount_test]\nlocation = {repo}\n",
        }

    def merged(self) -> list[str]:
        return sorted(p.name for p in (self.prefix / "usr/share").glob("*/*.txt"))


@pytest.fixture
def prefix() -> Iterator[Callable[[str], Prefix]]:
    if not EMERGE.exists():
        pytest.skip("portage is not installed in the venv (pip install -e '.[test]')")
    roots: list[Path] = []

    def make(tmpdir: str) -> Prefix:
        root = Path(tempfile.mkdtemp(prefix="holdmount-portage-"))
        roots.append(root)
        return Prefix(root, tmpdir)

    yield make
    for root in roots:
        shutil.rmtree(root, ignore_errors=True)


def emerge_sampling(lab: AutofsLab, argv: list[str], env: dict[str, str]
                    ) -> tuple[subprocess.CompletedProcess[str], list[tuple[float, bool]]]:
    """Run argv in the lab's namespace, sampling the mount every 50 ms until it ends."""
    with tempfile.TemporaryFile("w+") as out:
        proc = lab.popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        t0 = time.monotonic()
        samples = []
        while proc.poll() is None:
            samples.append((time.monotonic() - t0, lab.mounted("ptmp")))
            time.sleep(0.05)
        out.seek(0)
        return subprocess.CompletedProcess(argv, proc.returncode, out.read(), ""), samples


def expiries(samples: list[tuple[float, bool]]) -> int:
    """How often the tmpfs went from mounted to not mounted."""
    return sum(1 for (_, a), (_, b) in itertools.pairwise(samples) if a and not b)


def test_emerge_with_holdmount_keeps_portage_tmpdir_mounted(
        autofs_factory: Callable[..., AutofsLab], prefix: Callable[[str], Prefix]) -> None:
    lab = autofs_factory({"ptmp": PTMP}, timeout=IDLE)
    p = prefix(lab.mp["ptmp"])
    assert not lab.mounted("ptmp")
    r, samples = emerge_sampling(
        lab, [*HM, "run", "--hold", lab.mp["ptmp"], "--require-writable", "--protect", "--",
              str(EMERGE), "--oneshot", *PACKAGES], p.env)
    assert r.returncode == 0, r.stdout[-3000:]
    assert p.merged() == ["alpha.txt", "beta.txt"]
    start = next(i for i, (_, m) in enumerate(samples) if m)  # holdmount's trigger
    assert all(m for _, m in samples[start:]), "expired during the emerge"
    assert samples[-1][0] > 12 * IDLE, "the emerge must outlast the idle timeout many times"
    assert lab.wait_expired("ptmp", 10 * IDLE) is not None, "expires once released"


def test_one_emerge_keeps_it_busy_by_itself(
        autofs_factory: Callable[..., AutofsLab], prefix: Callable[[str], Prefix]) -> None:
    """Measured, not wished: portage (3.0.83) keeps PORTAGE_TMPDIR busy (lock files, open
    logs, cwd) from its first access to its end, so within one emerge the automount does not
    expire even with a 1 s idle timeout; and its own temp-dir check creates a real file (the
    fix of bug 890812), so the trigger works without holdmount too."""
    lab = autofs_factory({"ptmp": PTMP}, timeout=IDLE)
    p = prefix(lab.mp["ptmp"])
    r, samples = emerge_sampling(lab, [str(EMERGE), "--oneshot", *PACKAGES], p.env)
    assert r.returncode == 0, r.stdout[-3000:]
    assert p.merged() == ["alpha.txt", "beta.txt"]
    assert samples[-1][0] > 12 * IDLE and any(m for _, m in samples)
    assert expiries(samples) == 0


# After a failed build, emerge points at its log under PORTAGE_TMPDIR; read it later, as a user
# (or a script) does. The job waits until the tmpfs expires (at most WAIT seconds), then reads.
JOB = """emerge --oneshot app-misc/broken
echo "emerge: $?"
i=0
# (read the mount table, not the path: a lookup through the path resets autofs' idle timer)
while awk -v mp="$PORTAGE_TMPDIR" '$5 == mp && / - tmpfs /' /proc/self/mountinfo | grep -q . \\
        && [ $i -lt {polls} ]; do
    sleep 0.2; i=$((i + 1))
done
cat "$PORTAGE_TMPDIR/portage/app-misc/broken-1/temp/build.log"
"""
WAIT = 10 * IDLE


@pytest.mark.parametrize("held", [False, True], ids=["without", "with-holdmount"])
def test_failed_build_log_survives_only_while_held(
        autofs_factory: Callable[..., AutofsLab], prefix: Callable[[str], Prefix],
        held: bool) -> None:
    """Without a hold the tmpfs expires once emerge has ended, and the build log emerge just
    pointed at is gone with it; `holdmount run` around the whole job keeps it."""
    lab = autofs_factory({"ptmp": PTMP}, timeout=IDLE)
    p = prefix(lab.mp["ptmp"])
    broken = p.root / "repo/app-misc/broken"
    broken.mkdir()
    (broken / "broken-1.ebuild").write_text(
        EBUILD.format(name="broken", pause=0).replace('sleep 0; }', 'die "broken on purpose"; }'))
    env = {**p.env, "PORTAGE_TMPDIR": lab.mp["ptmp"]}
    job = ["sh", "-c", JOB.format(polls=WAIT * 5)]
    argv = [*HM, "run", "--hold", lab.mp["ptmp"], "--", *job] if held else job
    r, samples = emerge_sampling(lab, argv, env)
    assert "emerge: 1" in r.stdout, r.stdout[-3000:]
    assert "broken on purpose" in r.stdout.split("emerge: 1")[0]  # emerge showed the failure
    log = r.stdout.split("emerge: 1")[1]
    if held:
        assert r.returncode == 0 and "die" in log and "broken on purpose" in log, log
        start = next(i for i, (_, m) in enumerate(samples) if m)
        assert all(m for _, m in samples[start:]), "expired while held"
    else:
        assert r.returncode == 1 and "No such file or directory" in log, log
        assert expiries(samples) >= 1
