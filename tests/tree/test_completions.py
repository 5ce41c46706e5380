"""Shell completions: generated from the argparse parser, and they really complete.

Expectations come from `holdmount.cli.build_parser()` walked here independently of
completions/generate: every verb (also nested: `overlay changes`) and every option string of
every (sub)command must be offered by bash and by zsh; option arguments complete as what they
are (a directory for `--hold`). zsh is driven for real through zsh/zpty.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from holdmount.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
BASH_FILE = REPO / "completions" / "holdmount.bash"
ZSH_FILE = REPO / "completions" / "_holdmount"
GENERATE = REPO / "completions" / "generate"


def commands(parser: argparse.ArgumentParser | None = None,
             path: tuple[str, ...] = ()) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every (sub)command by its verb path: () is `holdmount` itself."""
    parser = parser or build_parser()
    out = {path: parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.update(commands(sub, (*path, name)))
    return out


def verbs_of(parser: argparse.ArgumentParser) -> list[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    return []


def options_of(parser: argparse.ArgumentParser) -> list[str]:
    return [s for a in parser._actions for s in a.option_strings]


def arg_options(parser: argparse.ArgumentParser) -> dict[str, str | None]:
    """Options that take a value -> their metavar."""
    return {s: (str(a.metavar) if a.metavar else None) for a in parser._actions
            for s in a.option_strings if a.nargs != 0}


ALL = commands()


def test_parser_walk_finds_the_known_verbs() -> None:
    # the walk itself must not come up empty (that would make every check below vacuous)
    top = verbs_of(ALL[()])
    for verb in ("run", "daemon", "status", "doctor", "merge", "overlay"):
        assert verb in top
    assert ("overlay", "changes") in ALL
    assert "--hold" in options_of(ALL[("run",)])


def test_generated_files_are_current() -> None:
    r = subprocess.run([sys.executable, str(GENERATE), "--check"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, (
        "completions are out of date with the parser: run completions/generate\n"
        + r.stdout[-3000:] + r.stderr)


# --- bash ----------------------------------------------------------------------------------------

def bash_complete(*cases: list[str], cwd: Path = REPO) -> list[list[str]]:
    """Complete each word list (the last word is the one being completed) in one bash."""
    script = [f"source {BASH_FILE}"]
    for words in cases:
        quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in words)
        script += [f"COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; COMPREPLY=()",
                   "_holdmount; printf '%s\\n' \"${COMPREPLY[@]}\"; echo '<<END>>'"]
    r = subprocess.run(["bash", "--norc", "--noprofile", "-c", "\n".join(script)],
                       capture_output=True, text=True, timeout=60, cwd=cwd)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", r.stderr
    chunks = r.stdout.split("<<END>>\n")[:-1]
    assert len(chunks) == len(cases), r.stdout
    return [[w for w in c.splitlines() if w] for c in chunks]


def test_bash_syntax() -> None:
    r = subprocess.run(["bash", "-n", str(BASH_FILE)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_bash_offers_every_verb_and_option() -> None:
    cases, expect = [], []
    for path, parser in ALL.items():
        if verbs_of(parser):
            cases.append(["holdmount", *path, ""])
            expect.append(("verbs", path, set(verbs_of(parser))))
        cases.append(["holdmount", *path, "-"])
        expect.append(("options", path, set(options_of(parser))))
    results = bash_complete(*cases)
    for (what, path, wanted), got in zip(expect, results, strict=True):
        assert wanted, (what, path)
        assert set(got) == wanted, f"holdmount {' '.join(path)}: {what}: bash offers {got}"


def test_bash_option_values(tmp_path: Path) -> None:
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("")
    cases, expect = [], []
    for path, parser in ALL.items():
        choices = {o: a.choices for a in parser._actions for o in a.option_strings}
        for opt, metavar in arg_options(parser).items():
            if not opt.startswith("--"):
                continue
            cases.append(["holdmount", *path, opt, "a"])
            cases.append(["holdmount", *path, f"{opt}=a"])
            if choices.get(opt):  # --delegate auto|always|never: its words
                wanted = sorted(str(c) for c in choices[opt] if str(c).startswith("a"))
            elif metavar in ("DIR",):
                wanted = ["adir"]
            elif metavar in ("FILE", "PATH"):
                wanted = ["adir", "afile"]
            else:  # a time span, an address: nothing to offer
                wanted = []
            expect += [(path, opt, wanted)] * 2
    assert any(w == ["adir"] for _, _, w in expect)  # --hold DIR is among them
    for (path, opt, wanted), got in zip(expect, bash_complete(*cases, cwd=tmp_path),
                                        strict=True):
        assert sorted(got) == wanted, f"holdmount {' '.join(path)} {opt}: {got}"


def test_bash_run_command_and_positionals(tmp_path: Path) -> None:
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("")
    r = bash_complete(
        ["holdmount", "run", "--hold", "/", "--protect", "true"],       # COMMAND: commands
        ["holdmount", "run", "--hold", "/", "echo", "--pro"],           # COMMAND's own word
        ["holdmount", "run", "--", "a"],                                 # after --
        ["holdmount", "merge", "a"],                                     # STAGED: a directory
        ["holdmount", "--debug", "doctor", "a"],                         # PATH: any file
        ["holdmount", "overlay", "changes", "a"],                        # MERGED: a directory
        cwd=tmp_path)
    assert "true" in r[0]
    assert "--protect" not in r[1]  # options of run end at COMMAND
    assert all(not w.startswith("--") for w in r[1])
    assert "awk" in r[2] or "apt-get" in r[2]  # a command name after --
    assert r[3] == ["adir"]
    assert sorted(r[4]) == ["adir", "afile"]
    assert r[5] == ["adir"]


# --- zsh -----------------------------------------------------------------------------------------

ZSH_DRIVER = r"""
# zsh DRIVER FPATHDIR 'LINE' ...: complete each LINE in an interactive zsh on a pty, print the
# candidates compadd was given between <<< and >>>, and ==DONE== after each line
zmodload zsh/zpty
zpty z zsh -f -i
zpty -w z "PS1=''; PS2=''; fpath=($1 \$fpath); autoload -Uz compinit; compinit -u -D"
zpty -w z "zstyle ':completion:*' list-grouped false"
zpty -w z 'comptest () { compadd () { builtin compadd -O __hits "$@";'\
' print -rl -- "<<<" $__hits ">>>"; builtin compadd "$@" };'\
' zle complete-word; print -r -- "==DONE=="; }'
zpty -w z 'zle -N comptest; bindkey "^T" comptest; print READY'
zpty -r z line '*READY*'
zpty -r z line '*READY*'
shift
for cmdline in "$@"; do
    zpty -w -n z "$cmdline"$'\x14'
    zpty -r z out '*==DONE==*'
    print -r -- "$out"
    print -r -- "==CASE=="
    zpty -w -n z $'\x15'  # ^U: kill the line
done
zpty -d z
"""


def zsh_complete(*lines: str, cwd: Path = REPO, tmp: Path) -> list[set[str]]:
    fdir = tmp / "zfunc"
    fdir.mkdir(exist_ok=True)
    shutil.copy(ZSH_FILE, fdir / "_holdmount")
    driver = tmp / "driver.zsh"
    driver.write_text(ZSH_DRIVER)
    env = {**os.environ, "HOME": str(tmp), "TERM": "dumb"}
    r = subprocess.run(["zsh", "-f", str(driver), str(fdir), *lines], capture_output=True,
                       text=True, timeout=120, cwd=cwd, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    cases = r.stdout.replace("\r", "").split("==CASE==")[:-1]
    assert len(cases) == len(lines), r.stdout[-3000:]
    out = []
    for case in cases:
        words: set[str] = set()
        inside = False
        for line in case.splitlines():
            if line.endswith("<<<"):
                inside = True
            elif line == ">>>":
                inside = False
            elif inside and line:
                words.add(line)
        out.append(words)
    return out


@pytest.fixture(scope="module")
def zsh_bin() -> str:
    path = shutil.which("zsh")
    if path is None:  # scripts/setup installs zsh: a missing one is a set-up failure
        pytest.fail("zsh is not installed: run scripts/setup")
    return path


def test_zsh_syntax(zsh_bin: str) -> None:
    r = subprocess.run([zsh_bin, "-n", str(ZSH_FILE)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_zsh_offers_every_verb_and_option(zsh_bin: str, tmp_path: Path) -> None:
    lines, expect = [], []
    for path, parser in ALL.items():
        prefix = " ".join(["holdmount", *path]) + " "
        if verbs_of(parser):
            lines.append(prefix)
            expect.append(("verbs", path, set(verbs_of(parser))))
        lines.append(prefix + "-")
        expect.append(("options", path, set(options_of(parser))))
    for (what, path, wanted), got in zip(expect, zsh_complete(*lines, tmp=tmp_path),
                                         strict=True):
        missing = wanted - got
        assert not missing, f"holdmount {' '.join(path)}: {what}: zsh lacks {missing} ({got})"
        if what == "verbs":
            assert got == wanted, f"holdmount {' '.join(path)}: zsh offers extra {got - wanted}"


def test_zsh_option_values(zsh_bin: str, tmp_path: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    (work / "adir").mkdir()
    (work / "afile").write_text("")
    got = zsh_complete("holdmount run --hold a", "holdmount daemon --config a",
                       "holdmount run --hold / tr", "holdmount merge a",
                       cwd=work, tmp=tmp_path)
    assert "adir" in got[0] and "afile" not in got[0]
    assert {"adir", "afile"} <= got[1]
    assert "true" in got[2]
    assert "adir" in got[3] and "afile" not in got[3]
