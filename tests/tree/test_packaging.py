"""Distribution packages, built for real from the tree as a fresh clone has it.

One build of each kind per test session (session fixtures), each in a temporary copy of the
tree (packaging/export-tree: the files git tracks, with their working-tree content):
- Debian: packaging/build-deb -> holdmount_*.deb; lintian.
- RPM: packaging/build-rpm -> rpmbuild -bb --nodeps with Debian's rpm; rpmlint.
- Arch: makepkg --nodeps builds the PKGBUILD (Debian ships makepkg); shellcheck.
- Gentoo: no ebuild linter is installable here (pkgcheck needs a Gentoo repository): shellcheck,
  the variables distutils-r1 needs, and python_install_all run with stub eclass helpers that
  check every file it installs exists in the tree.
The build tools come from scripts/setup; a missing one fails (with the hint) instead of skipping.
Set HOLDMOUNT_PACKAGING_UNTRACKED=1 to build with untracked files too (work in progress).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from debs import SYSTEM_PATH, UNTRACKED, need
from nspawn import os_root_fixture as _os_root  # noqa: F401  (registers "os_root")

from holdmount import __version__

if TYPE_CHECKING:
    from nspawn import OsRoot

REPO = Path(__file__).resolve().parents[2]
PKG = REPO / "packaging"
UNITS = ("holdmount.service", "holdmount@.service", "holdmount-report.service")
# every module of the package: each must be in every package built (pyproject finds them)
MODULES = sorted((REPO / "holdmount").rglob("*.py"))


def run(args: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    kw.setdefault("timeout", 600)
    r = subprocess.run(args, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    assert r.returncode == 0, f"{' '.join(map(str, args))}: exit {r.returncode}\n" \
        f"{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r  # type: ignore[no-any-return]


def pyproject_version() -> str:
    return str(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"])


# --- Debian --------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def deb_root(debs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("debroot")
    for deb in debs.values():
        run(["dpkg-deb", "-x", str(deb), str(root)])
    return root


def deb_field(deb: Path, field: str) -> str:
    return run(["dpkg-deb", "-f", str(deb), field]).stdout.strip()


# the ostree integration (docs/ostree.md): the switch, the files it installs, holdmount's ordering
OSTREE_FILES = ["usr/libexec/holdmount/holdmount-ostree-switch",
                "usr/share/holdmount/ostree/holdmount-ostree.toml",
                "usr/share/holdmount/ostree/ostree-finalize-staged.service.d/50-holdmount.conf",
                "usr/lib/systemd/system/holdmount.service.d/50-ostree.conf"]


def test_deb_installs_the_files(deb_root: Path) -> None:
    expect = ["usr/bin/holdmount",
              *(f"usr/lib/systemd/system/{u}" for u in UNITS),
              "usr/lib/systemd/catalog/holdmount.catalog",
              "usr/share/man/man8/holdmount.8.gz", "usr/share/man/man5/holdmount.toml.5.gz",
              "usr/share/bash-completion/completions/holdmount",
              "usr/share/zsh/vendor-completions/_holdmount",
              "usr/share/doc/holdmount/examples/ostree.toml",
              *OSTREE_FILES,
              "usr/lib/python3/dist-packages/holdmount/cli.py"]
    expect += [f"usr/lib/python3/dist-packages/{p.relative_to(REPO)}" for p in MODULES]
    missing = [p for p in expect if not (deb_root / p).exists()]
    assert not missing, missing
    assert_launcher((deb_root / "usr/bin/holdmount").read_text())


LAUNCHER = PKG / "launcher/holdmount"


def assert_launcher(text: str) -> None:
    """/usr/bin/holdmount is packaging/launcher/holdmount (no `re`, no runpy: P2/P3/P9), not
    the console script pip/installer generate, which imports `re`."""
    assert text == LAUNCHER.read_text(), text[:300]
    assert text.startswith("#!/usr/bin/python3 -P\n") and "import re" not in text


def test_deb_units_documentation_exists(deb_root: Path) -> None:
    for unit in UNITS:
        text = (deb_root / "usr/lib/systemd/system" / unit).read_text()
        for url in re.findall(r"file:(/\S+)", text):
            assert (deb_root / url.lstrip("/")).is_file(), f"{unit}: Documentation={url} missing"
        for page in re.findall(r"man:([\w.@-]+)\((\d)\)", text):
            assert (deb_root / f"usr/share/man/man{page[1]}/{page[0]}.{page[1]}.gz").exists(), page


def test_deb_depends(debs: dict[str, Path]) -> None:
    depends = deb_field(debs["holdmount"], "Depends")
    assert "python3-pystemd (>= 0.11)" in depends
    assert "inotify" not in depends  # the marker watch uses inotify through holdmount.syscalls
    assert deb_field(debs["holdmount"], "Version").split("-")[0] == pyproject_version()


def test_deb_maintscripts(debs: dict[str, Path], tmp_path: Path) -> None:
    run(["dpkg-deb", "-e", str(debs["holdmount"]), str(tmp_path / "c")])
    postinst = (tmp_path / "c/postinst").read_text()
    prerm = (tmp_path / "c/prerm").read_text()
    # disabled by default: no `deb-systemd-helper enable` outside the was-enabled check
    assert "deb-systemd-helper --quiet was-enabled 'holdmount.service'" in postinst
    # stopped on removal, but never on upgrade (a stop runs the finalize actions)
    assert re.search(r'"\$1" = remove .*\n\s*deb-systemd-invoke stop .*holdmount.service', prerm)
    assert not (tmp_path / "c/preinst").exists()


def test_deb_packaged_python_works(deb_root: Path) -> None:
    """The packaged holdmount runs on Debian's python; its marker watch sees a file appear."""
    site = deb_root / "usr/lib/python3/dist-packages"
    env = {"PATH": SYSTEM_PATH, "PYTHONPATH": str(site), "HOME": "/nonexistent"}
    r = run(["/usr/bin/python3", str(deb_root / "usr/bin/holdmount"), "--version"], env=env)
    assert r.stdout.strip() == f"holdmount {__version__}"
    code = ("import holdmount.marker, os, tempfile\n"
            "assert holdmount.marker.__file__.startswith(os.environ['PYTHONPATH']), "
            "holdmount.marker.__file__\n"
            "d = tempfile.mkdtemp()\n"
            "w = holdmount.marker.MarkerWatch(os.path.join(d, 'm'))\n"
            "open(os.path.join(d, 'm'), 'w').close()\n"
            "print(w.handle(), w.armed)\n")
    # cwd /: `-c` puts the current directory first on sys.path, and this checkout has holdmount/
    assert run(["/usr/bin/python3", "-c", code], env=env, cwd="/").stdout.strip() == "True True"


def test_deb_lintian(debs: dict[str, Path]) -> None:
    need("lintian")
    # initial-upload-closes-no-bugs: not uploaded to Debian, there is no ITP bug to close
    run(["lintian", "--fail-on", "error,warning", "--suppress-tags",
         "initial-upload-closes-no-bugs", *map(str, debs.values())])


def test_units_verify(deb_root: Path, tmp_path: Path) -> None:
    """systemd-analyze verify on the installed units, in a root with the host's units."""
    need("systemd-analyze")
    root = tmp_path / "root"
    shutil.copytree(deb_root, root, symlinks=True)
    run(["cp", "-an", "/usr/lib/systemd/system/.", str(root / "usr/lib/systemd/system/")])
    shutil.copy2("/usr/bin/env", root / "usr/bin/env")  # ExecStart='s launcher (coreutils)
    r = run(["systemd-analyze", "verify", "--man=no", f"--root={root}", *UNITS[::2],
             "holdmount@boot.service", "holdmount@var-tmp-portage.service"], cwd=tmp_path)
    assert r.stderr.strip() == "", r.stderr
    # the check bites: a unit whose ExecStart= program is missing fails
    (root / "usr/bin/holdmount").unlink()
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", f"--root={root}",
                        "holdmount-report.service"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode != 0 and "/usr/bin/holdmount" in r.stderr
    (root / "usr/bin/env").unlink()
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", f"--root={root}",
                        "holdmount.service"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode != 0 and "/usr/bin/env" in r.stderr


# --- RPM -----------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def rpm_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need("rpmbuild", "rpm", "git")
    out = tmp_path_factory.mktemp("rpm")
    run([str(PKG / "build-rpm"), "-o", str(out), *UNTRACKED])  # as the README says: no --nodeps
    (found,) = out.glob("holdmount-*.noarch.rpm")
    return found


def test_rpm_contents(rpm_file: Path) -> None:
    files = run(["rpm", "-qlp", str(rpm_file)]).stdout.split()
    for path in ["/usr/bin/holdmount", *(f"/usr/lib/systemd/system/{u}" for u in UNITS),
                 "/usr/lib/systemd/catalog/holdmount.catalog",
                 "/usr/share/man/man8/holdmount.8", "/usr/share/man/man5/holdmount.toml.5",
                 "/usr/share/bash-completion/completions/holdmount",
                 "/usr/share/zsh/site-functions/_holdmount",
                 "/usr/share/doc/holdmount/examples/ostree.toml",
                 *(f"/{p}" for p in OSTREE_FILES)]:
        assert any(f == path or f.startswith(path + ".") for f in files), path
    missing = [p for p in MODULES if not any(f.endswith(f"/{p.relative_to(REPO)}") for f in files)]
    assert not missing, missing
    requires = run(["rpm", "-qp", "--requires", str(rpm_file)]).stdout
    assert "python3dist(pystemd) >= 0.11" in requires
    assert "inotify" not in requires
    assert run(["rpm", "-qp", "--qf", "%{VERSION}", str(rpm_file)]).stdout == __version__


def test_rpm_launcher(rpm_file: Path, tmp_path: Path) -> None:
    cpio = subprocess.run(["rpm2cpio", str(rpm_file)], capture_output=True, check=True).stdout
    subprocess.run(["cpio", "-idm", "--quiet", "./usr/bin/holdmount"], input=cpio,
                   cwd=tmp_path, check=True)
    assert_launcher((tmp_path / "usr/bin/holdmount").read_text())


def test_rpm_scriptlets(rpm_file: Path) -> None:
    scripts = run(["rpm", "-qp", "--scripts", str(rpm_file)]).stdout
    post = scripts.split("postinstall scriptlet")[1].split("scriptlet")[0]
    assert "preset holdmount.service holdmount-report.service" in post
    preun = scripts.split("preuninstall scriptlet")[1].split("scriptlet")[0]
    assert "disable --now holdmount.service" in preun
    postun = [line for line in scripts.split("postuninstall scriptlet")[1].splitlines()
              if not line.startswith("#")]
    assert "daemon-reload" in "\n".join(postun)
    assert "restart" not in "\n".join(postun)  # no restart on upgrade: a stop finalizes


def test_rpmlint(rpm_file: Path) -> None:
    need("rpmlint")
    r = run(["rpmlint", "-r", str(PKG / "rpm/rpmlintrc"), str(PKG / "rpm/holdmount.spec"),
             str(rpm_file)])
    assert re.search(r"\b0 errors, 0 warnings\b", r.stdout), r.stdout


# --- Arch ----------------------------------------------------------------------------------------

def _as_nobody(args: list[str], cwd: Path, env: dict[str, str]) -> list[str]:
    if os.geteuid() != 0:
        return args
    # makepkg refuses to run as root
    os.chown(cwd, 65534, 65534)
    for p in cwd.rglob("*"):
        os.lchown(p, 65534, 65534)
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *args]


@pytest.fixture(scope="session")
def arch_pkg() -> Iterator[Path]:
    need("makepkg", "pacman", "bsdtar", "fakeroot", "git")
    work = Path(tempfile.mkdtemp(prefix="holdmount-makepkg."))
    try:
        os.chmod(work, 0o755)
        tree = work / f"holdmount-{__version__}"
        run([str(PKG / "export-tree"), str(tree), *UNTRACKED])
        with tarfile.open(work / f"holdmount-{__version__}.tar.gz", "w:gz") as tar:
            tar.add(tree, arcname=tree.name)
        shutil.rmtree(tree)
        shutil.copy(PKG / "arch/PKGBUILD", work)
        (work / "bin").mkdir()
        (work / "bin/python").symlink_to("/usr/bin/python3")  # Arch's python is python3
        # Debian's python installs to /usr/local unless told the system layout
        env = {"PATH": f"{work}/bin:{SYSTEM_PATH}", "HOME": str(work), "LANG": "C.UTF-8",
               "DEB_PYTHON_INSTALL_LAYOUT": "deb_system", "PKGEXT": ".pkg.tar.gz"}
        args = _as_nobody(["makepkg", "--nodeps", "--noconfirm"], work, env)
        run(args, cwd=work, env=env)
        (pkg,) = work.glob("holdmount-*-any.pkg.tar.gz")
        yield pkg
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_pkgbuild_srcinfo() -> None:
    need("makepkg", "pacman")
    work = Path(tempfile.mkdtemp(prefix="holdmount-srcinfo."))
    try:
        os.chmod(work, 0o755)
        shutil.copy(PKG / "arch/PKGBUILD", work)
        env = {"PATH": SYSTEM_PATH, "HOME": str(work), "LANG": "C.UTF-8"}
        info = run(_as_nobody(["makepkg", "--printsrcinfo"], work, env), cwd=work,
                   env=env).stdout
    finally:
        shutil.rmtree(work, ignore_errors=True)
    fields: dict[str, list[str]] = {}
    for line in info.splitlines():
        if " = " in line:
            k, v = line.strip().split(" = ", 1)
            fields.setdefault(k, []).append(v)
    assert fields["pkgname"] == ["holdmount"]
    assert fields["pkgver"] == [__version__]
    assert fields["arch"] == ["any"]
    assert {"python", "python-pystemd"} <= set(fields["depends"])
    assert "python-inotify-simple" not in fields["depends"]


def test_arch_package_contents(arch_pkg: Path) -> None:
    with tarfile.open(arch_pkg) as tar:
        names = set(tar.getnames())
    for path in ["usr/bin/holdmount", *(f"usr/lib/systemd/system/{u}" for u in UNITS),
                 "usr/lib/systemd/catalog/holdmount.catalog",
                 "usr/share/man/man8/holdmount.8.gz", "usr/share/man/man5/holdmount.toml.5.gz",
                 "usr/share/bash-completion/completions/holdmount",
                 "usr/share/zsh/site-functions/_holdmount",
                 "usr/lib/holdmount/holdmount-ostree-switch", *OSTREE_FILES[1:],
                 "usr/share/doc/holdmount/examples/ostree.toml", ".PKGINFO"]:
        assert path in names, path
    missing = [p for p in MODULES if not any(n.endswith(f"/{p.relative_to(REPO)}") for n in names)]
    assert not missing, missing
    with tarfile.open(arch_pkg) as tar:
        launcher = tar.extractfile("usr/bin/holdmount")
        assert launcher is not None
        assert_launcher(launcher.read().decode())


def test_pkgbuild_shellcheck() -> None:
    need("shellcheck")
    # SC2034: PKGBUILD variables are read by makepkg; SC2154: $pkgdir/$srcdir come from it;
    # SC2164: makepkg runs build()/package() with errexit, a failing cd stops the build
    run(["shellcheck", "--shell=bash", "--exclude=SC2034,SC2154,SC2164",
         str(PKG / "arch/PKGBUILD")])


# --- Gentoo --------------------------------------------------------------------------------------

EBUILD = PKG / "gentoo/sys-apps/holdmount/holdmount-9999.ebuild"

# Stubs for the eclass helpers: each records what it would install and fails when a source file
# does not exist in the tree.
STUBS = r"""
inherit() { :; }
distutils_enable_tests() { :; }
_need() { for f in "$@"; do [ -e "$f" ] || { echo "missing: $f" >&2; exit 1; }; done; }
distutils-r1_python_install_all() { echo "python_install_all"; }
distutils-r1_python_install() { echo "python_install"; }
python_newscript() { _need "$1"; echo "script $2 $(sha256sum < "$1" | cut -d' ' -f1)"; }
systemd_dounit() { _need "$@"; for f in "$@"; do echo "unit $(basename "$f")"; done; }
doman() { _need "$@"; for f in "$@"; do echo "man $(basename "$f")"; done; }
newbashcomp() { _need "$1"; echo "bashcomp $2"; }
insinto() { INSDIR=$1; }
doins() { _need "$@"; for f in "$@"; do echo "ins $INSDIR/$(basename "$f")"; done; }
keepdir() { echo "keepdir $1"; }
docinto() { DOCDIR=$1; }
dodoc() { _need "$@"; for f in "$@"; do echo "doc $DOCDIR/$(basename "$f")"; done; }
docompress() { :; }
exeinto() { EXEDIR=$1; }
doexe() { _need "$@"; for f in "$@"; do echo "exe $EXEDIR/$(basename "$f")"; done; }
systemd_install_dropins() { local u=$1; shift; _need "$@"
    for f in "$@"; do echo "dropin $u.d/$(basename "$f")"; done; }
"""


def test_ebuild_variables() -> None:
    r = run(["bash", "-c", f'{STUBS}\nPYTHON_USEDEP=PYDEP; PF=holdmount-9999\nsource "$1"\n'
             'printf "%s\\n" "EAPI=$EAPI" "PEP517=$DISTUTILS_USE_PEP517" '
             '"COMPAT=${PYTHON_COMPAT[*]}" "LICENSE=$LICENSE" "SLOT=$SLOT" '
             '"KEYWORDS=${KEYWORDS-unset}"; echo "RDEPEND=$(echo $RDEPEND)"', "ebuild",
             str(EBUILD)])
    v = dict(line.split("=", 1) for line in r.stdout.splitlines())
    assert v["EAPI"] == "8"
    assert v["PEP517"] == "setuptools"
    assert "python3_{11..13}" in EBUILD.read_text() or "python3_11" in v["COMPAT"]
    assert v["SLOT"] == "0" and v["LICENSE"] == "LGPL-2.1+"
    assert v["KEYWORDS"] == "unset"  # a live ebuild has no keywords
    deps = v["RDEPEND"].split()
    assert "dev-python/pystemd[PYDEP]" in deps and "inotify" not in deps
    text = EBUILD.read_text()
    assert re.search(r"^inherit .*\bdistutils-r1\b.*\bsystemd\b", text, re.M)


def test_ebuild_installs_existing_files() -> None:
    r = run(["bash", "-c", f'{STUBS}\nPYTHON_USEDEP=PYDEP; PF=holdmount-9999\nsource "$1"\n'
             "set -e; python_install_all", "ebuild", str(EBUILD)], cwd=REPO)
    done = set(r.stdout.splitlines())
    assert {f"unit {u}" for u in UNITS} <= done
    assert {"man holdmount.8", "man holdmount.toml.5", "bashcomp holdmount",
            "ins /usr/share/zsh/site-functions/_holdmount", "python_install_all",
            "ins /usr/lib/systemd/catalog/holdmount.catalog",
            "doc examples/ostree.toml",
            "exe /usr/libexec/holdmount/holdmount-ostree-switch",
            "ins /usr/share/holdmount/ostree/holdmount-ostree.toml",
            "ins /usr/share/holdmount/ostree/ostree-finalize-staged.service.d/50-holdmount.conf",
            "dropin holdmount.service.d/50-ostree.conf"} <= done


def test_ebuild_installs_the_launcher() -> None:
    r = run(["bash", "-c", f'{STUBS}\nPYTHON_USEDEP=PYDEP; PF=holdmount-9999\nsource "$1"\n'
             "set -e; python_install", "ebuild", str(EBUILD)], cwd=REPO)
    digest = hashlib.sha256(LAUNCHER.read_bytes()).hexdigest()
    assert r.stdout.splitlines() == ["python_install", f"script holdmount {digest}"]


def test_ebuild_shellcheck() -> None:
    need("shellcheck")
    # SC2034: ebuild variables are read by portage
    run(["shellcheck", "--shell=bash", "--exclude=SC2034", str(EBUILD)])
    meta = EBUILD.parent / "metadata.xml"
    import xml.etree.ElementTree as ET
    assert ET.parse(meta).getroot().tag == "pkgmetadata"


# --- all of them ---------------------------------------------------------------------------------

def test_versions_agree() -> None:
    version = pyproject_version()
    assert version == __version__
    changelog = (PKG / "debian/changelog").read_text().splitlines()[0]
    assert re.match(rf"holdmount \({re.escape(version)}-\d+\)", changelog), changelog
    spec = (PKG / "rpm/holdmount.spec").read_text()
    assert re.search(rf"^Version:\s+{re.escape(version)}$", spec, re.M)
    assert re.search(rf"^pkgver={re.escape(version)}$", (PKG / "arch/PKGBUILD").read_text(), re.M)


# --- the packaged install in a real systemd ------------------------------------------------------

HELD_STORE = "/srv/hmt-store"
PKG_MARKER = "/run/hmt/staged"
PKG_CONFIG = f"""
[marker]
path = "{PKG_MARKER}"
[[hold]]
path = "/hmt/held"
[[action]]
name = "finalize"
exec = ["/usr/local/libexec/hmt-finalize"]
when = "staged"
timeout = "30s"
"""
# writes into the held path and records the mount table as the action saw it
PKG_FINALIZE = """#!/bin/sh
{ echo "finalize ran"; grep ' /hmt/held ' /proc/self/mountinfo; } > /hmt/held/finalized
sync
echo "finalize: done"
"""


@pytest.mark.nspawn
def test_packaged_install_in_systemd(debs: dict[str, Path], os_root: OsRoot) -> None:
    """apt-get install the .debs into a booted systemd (252 on Debian 12, 257 on Debian 13),
    enable the packaged units, hold an automount, and finalize at poweroff while it is still
    held."""
    import dataclasses
    import json

    from nspawn import Container, nspawn_available

    if not nspawn_available():
        pytest.skip("systemd-nspawn not installed (run scripts/setup)")
    files: dict[str, str | bytes | tuple[str | bytes, int]] = {
        f"/var/tmp/hm-debs/{p.name}": p.read_bytes() for p in debs.values()}
    files.update({"/etc/holdmount/holdmount.toml": PKG_CONFIG,
                  "/usr/local/libexec/hmt-finalize": (PKG_FINALIZE, 0o755),
                  f"{HELD_STORE}/.keep": ""})
    units = {"hmt-held.automount": "[Automount]\nWhere=/hmt/held\nTimeoutIdleSec=2s\n",
             "hmt-held.mount": f"[Mount]\nWhat={HELD_STORE}\nWhere=/hmt/held\nType=none\n"
                               "Options=bind\n"}
    # without the Debian 13 root's venv (bind and /usr/bin/holdmount link): the package's only
    c = Container("packaged", units=units, files=files, wants=["hmt-held.automount"],
                  os_root=dataclasses.replace(os_root, binds=()))
    if c.path("/usr/bin/holdmount").is_symlink():
        c.path("/usr/bin/holdmount").unlink()
    try:
        assert not c.path("/usr/bin/holdmount").exists(), "the root must not have it yet"
        c.boot()
        # the real install: apt resolves python3-pystemd from Debian, ours from the files
        r = c.exec(["apt-get", "install", "-y", "-q", "--no-install-recommends",
                    *(f"/var/tmp/hm-debs/{p.name}" for p in debs.values())],
                   env={"DEBIAN_FRONTEND": "noninteractive", "PATH": SYSTEM_PATH},
                   timeout=300)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert c.exec(["/usr/bin/holdmount", "--version"]).stdout.strip() == \
            f"holdmount {__version__}"
        # systemd's dpkg trigger rebuilt the catalog: journalctl -x knows holdmount's ids
        catalog = c.exec(["journalctl", "--list-catalog"]).stdout
        assert "holdmount finalize failed: recorded in" in catalog, catalog[-2000:]
        # installed disabled (the daemon needs a configuration first)
        assert c.systemctl("is-enabled", "holdmount.service").stdout.strip() == "disabled"
        r = c.exec(["systemd-analyze", "verify", "holdmount.service",
                    "holdmount-report.service", "holdmount@hmt-held.service"])
        assert r.returncode == 0 and "holdmount" not in r.stderr, r.stderr
        r = c.systemctl("enable", "--now", "holdmount.service", "holdmount-report.service")
        assert r.returncode == 0, r.stderr + c.journal("-u", "holdmount.service")
        active = c.systemctl("show", "-P", "ActiveState", "holdmount.service").stdout.strip()
        assert active == "active", c.journal("-u", "holdmount.service")
        # (the test root boots a target of its own, not multi-user.target: enabled, the units are
        # wanted by multi-user.target)
        wants = c.systemctl("show", "-P", "Wants", "multi-user.target").stdout.split()
        assert {"holdmount.service", "holdmount-report.service"} <= set(wants)
        report = c.systemctl("show", "-P", "ActiveState", "holdmount-report.service")
        assert report.stdout.strip() == "active"  # no failure stamp to report
        assert c.mountinfo().is_real_mounted("/hmt/held")
        # the packaged CLI talks to the packaged daemon, whose marker watch sees the marker appear
        c.exec(["mkdir", "-p", str(Path(PKG_MARKER).parent)], check=True)
        c.exec(["touch", PKG_MARKER], check=True)

        def armed() -> bool:
            r = c.exec(["/usr/bin/holdmount", "status", "--json"])
            return r.returncode == 0 and json.loads(r.stdout)["marker"]["state"] == "armed"

        assert c.wait_for(armed, 10), c.journal("-u", "holdmount.service")
        time.sleep(3)  # past TimeoutIdleSec=2s: only the hold keeps it mounted
        assert c.mountinfo().is_real_mounted("/hmt/held")
        assert c.poweroff() == 0
        finalized = c.path(f"{HELD_STORE}/finalized").read_text().splitlines()
        assert finalized[0] == "finalize ran" and " /hmt/held " in finalized[1], finalized
        log = c.journal("-b", "0", "-u", "holdmount.service")
        assert "finalize: done" in log, log[-3000:]
    finally:
        c.cleanup()
