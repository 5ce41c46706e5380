"""The man pages cannot drift from the program.

holdmount(8): every command of the argparse parser (leaf verbs, e.g. `overlay changes`) has a
subsection `.SS "holdmount VERB ..."` under COMMANDS, and its `.TP` entries name exactly the
options `holdmount VERB --help` has (with the same metavar, and the default of a time span).
holdmount.toml(5): every key the config loader accepts, per table, is documented (and no key
it rejects); the schema is read from the loader's own "known keys" answer to an unknown key, so
a key added to holdmount/config/ without docs fails here. Both pages pass mandoc -Tlint and
groff -ww, and the examples in holdmount.toml(5) load.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import holdmount_cmd

from holdmount import __version__, config
from holdmount.cli import build_parser
from holdmount.errors import Failure

REPO = Path(__file__).resolve().parents[2]
MAN8 = REPO / "man" / "holdmount.8"
MAN5 = REPO / "man" / "holdmount.toml.5"


# --- reading roff --------------------------------------------------------------------------------

def _escapes(text: str) -> str:
    text = re.sub(r"\\f[BIRP]", "", text)
    for a, b in (("\\-", "-"), ("\\(dq", '"'), ("\\(aq", "'"), ("\\(bu", "*"), ("\\&", ""),
                 ("\\e", "\\"), ("\\ ", " ")):
        text = text.replace(a, b)
    return text


def _args(rest: str) -> list[str]:
    """Macro arguments: blank-separated, double quotes group (roff's rules, without "")."""
    return [a[1:-1] if a.startswith('"') else a for a in re.findall(r'"[^"]*"|[^ ]+', rest)]


def unroff(text: str) -> str:
    """The words as a reader sees them: escapes resolved, font macros applied, one line per
    input line (request lines without text become empty)."""
    out = []
    for line in text.splitlines():
        m = re.match(r"\.([BIR]{1,2})(?: (.*))?$", line)
        if m:
            args = _args(m.group(2) or "")
            joined = ("" if len(m.group(1)) == 2 else " ").join(args)
            out.append(_escapes(joined))
        elif line.startswith((".", "'")):
            out.append("")
        else:
            out.append(_escapes(line))
    return "\n".join(out)


def prose(text: str) -> str:
    """unroff, with lines joined by blanks (filled text)."""
    return re.sub(r"\s+", " ", unroff(text))


def sections(path: Path, macro: str) -> dict[str, list[str]]:
    """Lines of each `.SH`/`.SS` section (by its unquoted title), in order."""
    out: dict[str, list[str]] = {}
    current = None
    for line in path.read_text().splitlines():
        if line.startswith(f".{macro} "):
            current = _escapes(line[len(macro) + 2:].strip().strip('"'))
            out[current] = []
        elif line.startswith(".SH ") and macro == "SS":
            current = None
        elif current is not None:
            out[current].append(line)
    return out


def tp_entries(lines: list[str]) -> list[str]:
    """The tag line (unroffed) of every .TP/.TQ entry."""
    return [unroff(lines[i + 1]) for i, line in enumerate(lines[:-1])
            if line in (".TP", ".TQ")]


OPTION_RE = re.compile(r"(?<![\w-])(--?[a-z][a-z0-9-]*)")


def documented_options(lines: list[str]) -> dict[str, str]:
    """option -> the tag line that documents it."""
    out = {}
    for tag in tp_entries(lines):
        words = tag.replace(",", " ").split()
        for word in words:
            if OPTION_RE.fullmatch(word):
                out[word] = tag
    return out


# --- the parser ----------------------------------------------------------------------------------

def commands(parser: argparse.ArgumentParser,
             path: tuple[str, ...] = ()) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every leaf command (a parser without subcommands) by its verb path."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return {path: parser}
    out = {}
    for name, sub in subs[0].choices.items():
        out.update(commands(sub, (*path, name)))
    return out


def parser_options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions for s in a.option_strings
            if s not in ("-h", "--help", "--debug")}  # --debug: global, documented once


def span_text(seconds: float) -> str:
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


PARSER = build_parser()
LEAVES = commands(PARSER)


def verb_sections() -> dict[tuple[str, ...], list[str]]:
    out = {}
    for title, lines in sections(MAN8, "SS").items():
        words = title.split()
        assert words[0] == "holdmount", f"holdmount(8): subsection {title!r}"
        verb = tuple(w for w in words[1:] if re.fullmatch(r"[a-z][a-z-]*", w))
        out[verb] = lines
    return out


# --- holdmount(8) --------------------------------------------------------------------------------

def test_every_command_has_a_section() -> None:
    documented = verb_sections()
    assert ("run",) in LEAVES and ("overlay", "changes") in LEAVES  # the walk found them
    missing = [" ".join(v) for v in LEAVES if v not in documented]
    extra = [" ".join(v) for v in documented if v not in LEAVES]
    assert not missing, f"holdmount(8) has no `.SS \"holdmount VERB ...\"` for: {missing}"
    assert not extra, f"holdmount(8) documents commands the parser does not have: {extra}"


@pytest.mark.parametrize("verb", sorted(LEAVES), ids=" ".join)
def test_every_option_is_documented(verb: tuple[str, ...]) -> None:
    parser = LEAVES[verb]
    lines = verb_sections().get(verb)
    assert lines is not None, f"holdmount(8): no section for {' '.join(verb)}"
    documented = documented_options(lines)
    wanted = parser_options(parser)
    name = "holdmount " + " ".join(verb)
    assert sorted(set(wanted) - set(documented)) == [], f"{name}: options without docs"
    assert sorted(set(documented) - set(wanted)) == [], f"{name}: documented, not in the parser"
    text = unroff("\n".join(lines))
    for opt, action in wanted.items():
        if action.nargs != 0 and action.metavar:
            assert f"{opt} {action.metavar}" in documented[opt], \
                f"{name} {opt}: tag should read `{opt} {action.metavar}`: {documented[opt]!r}"
        if isinstance(action.default, float):
            assert f"(default {span_text(action.default)})" in text, \
                f"{name} {opt}: default {span_text(action.default)} not in holdmount(8)"


def test_global_options_are_documented() -> None:
    lines = sections(MAN8, "SH")["OPTIONS"]
    documented = documented_options(lines)
    top = {s for a in PARSER._actions for s in a.option_strings}
    assert top == set(documented), f"OPTIONS of holdmount(8): {sorted(documented)} vs {top}"


def test_every_verb_in_help_is_named_in_the_synopsis_or_commands() -> None:
    r = subprocess.run([*holdmount_cmd(), "--help"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    block = r.stdout.split("COMMAND\n", 1)[1].split("\n\n", 1)[0]
    verbs = {line.split()[0] for line in block.splitlines() if line.startswith("    ")
             and not line.startswith("     ")}
    assert {"run", "daemon", "status"} <= verbs
    assert verbs == {v[0] for v in verb_sections()}


def test_version_matches() -> None:
    for page in (MAN8, MAN5):
        th = next(line for line in page.read_text().splitlines() if line.startswith(".TH "))
        assert f'"holdmount {__version__}"' in th, f"{page.name}: {th}"


# --- holdmount.toml(5) ---------------------------------------------------------------------------

def known_keys(doc: str) -> list[str]:
    """Ask the loader: an unknown key is refused with the list of the keys it knows there."""
    with pytest.raises(Failure) as err:
        config.loads(doc)
    hint = err.value.hint or ""
    assert "known keys here: " in hint, (doc, err.value.message, hint)
    return hint.split("known keys here: ", 1)[1].split(", ")


UNKNOWN = "zz_not_a_key = 1"
SCHEMA_PROBES = {
    "": UNKNOWN,
    "[daemon]": f"[daemon]\n{UNKNOWN}",
    "[marker]": f"[marker]\n{UNKNOWN}",
    "[control]": f"[control]\n{UNKNOWN}",
    "[[hold]]": f"[[hold]]\n{UNKNOWN}",
    "[[action]]": f"[[action]]\n{UNKNOWN}",
    "merge": f'[[action]]\nname = "a"\nmerge = {{ {UNKNOWN} }}',
}


def schema() -> dict[str, list[str]]:
    return {table: known_keys(doc) for table, doc in SCHEMA_PROBES.items()}


def test_schema_probe_sees_the_keys() -> None:
    s = schema()
    assert {"daemon", "marker", "hold", "action"} <= set(s[""])
    assert "path" in s["[[hold]]"] and "exec" in s["[[action]]"]
    assert s["merge"] == ["from", "to"]


def toml5_keys() -> dict[str, list[str]]:
    """Documented keys per table; keys in the .RS block under `merge` belong to "merge"."""
    out: dict[str, list[str]] = {}
    for title, lines in sections(MAN5, "SS").items():
        keys, nested, in_rs = [], [], False
        for i, line in enumerate(lines):
            if line == ".RS":
                in_rs = True
            elif line == ".RE":
                in_rs = False
            elif line in (".TP", ".TQ") and i + 1 < len(lines):
                m = re.fullmatch(r"\.B (\w+)", lines[i + 1])
                if m:
                    (nested if in_rs else keys).append(m.group(1))
        out[title] = keys
        if nested:
            out["merge"] = nested
    return out


def test_every_config_key_is_documented() -> None:
    documented = toml5_keys()
    for table, keys in schema().items():
        if table == "":
            top = prose("\n".join(sections(MAN5, "SH")["TOP LEVEL"]))
            missing = [k for k in keys if not re.search(rf"\b{k}\b", top)]
            assert not missing, f"holdmount.toml(5) TOP LEVEL does not name {missing}"
            for k in keys:  # every top-level table has its own subsection
                assert f"[{k}]" in documented or f"[[{k}]]" in documented, k
            continue
        got = documented.get(table)
        assert got is not None, f"holdmount.toml(5): no subsection {table}"
        assert sorted(set(keys) - set(got)) == [], f"{table}: keys without docs"
        assert sorted(set(got) - set(keys)) == [], f"{table}: documented, loader rejects"


def test_defaults_in_toml5() -> None:
    text = prose(MAN5.read_text())
    sec = {t: prose("\n".join(lines)) for t, lines in sections(MAN5, "SS").items()}
    assert f"Default: {config.DEFAULT_STAMP}." in sec["[daemon]"]
    assert f"Default: {config.DEFAULT_SOCKET}." in sec["[control]"]
    assert f'Default: "{span_text(config.DaemonConfig().trigger_timeout)}".' in sec["[daemon]"]
    assert f'Default: "{span_text(config.DEFAULT_ACTION_TIMEOUT)}".' in sec["[[action]]"]
    assert f'Default: "0{config.ControlConfig().mode:o}".' in sec["[control]"]
    assert str(config.MAIN_FILE) in text and f"{config.DROPIN_DIR}/" in text
    assert config.SOCKET_ENV in text


def examples() -> list[str]:
    lines = sections(MAN5, "SH")["EXAMPLES"]
    out, block = [], None
    for line in lines:
        if line == ".EX":
            block = []
        elif line == ".EE":
            assert block is not None
            out.append("\n".join(_escapes(x) for x in block) + "\n")
            block = None
        elif block is not None:
            block.append(line)
    return out


def test_toml5_examples_load() -> None:
    main, dropin = examples()
    docs = {"/etc/holdmount/holdmount.toml": main,
            "/etc/holdmount/conf.d/50-portage.toml": dropin}
    import tomllib
    cfg = config.load(list(docs), reader=lambda f: tomllib.loads(docs[f]))
    assert [h.path for h in cfg.holds] == ["/boot", "/var/tmp/portage"]
    assert cfg.actions[0].timeout == 15 * 60
    assert cfg.marker is not None and cfg.marker.inhibit


# --- roff lint -----------------------------------------------------------------------------------

@pytest.mark.parametrize("page", [MAN8, MAN5], ids=lambda p: p.name)
def test_lint(page: Path) -> None:
    mandoc = shutil.which("mandoc")
    if mandoc is None:  # scripts/setup installs mandoc
        pytest.fail("mandoc is not installed: run scripts/setup")
    r = subprocess.run([mandoc, "-Tlint", "-W", "warning", str(page)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == "", r.stdout + r.stderr
    r = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(page)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr
