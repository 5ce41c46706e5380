"""Configuration: schema, drop-in merging, every error path (one line naming file and key, exit
78), and fuzzing (no traceback, ever: exit 0 or 78)."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import holdmount_cmd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from holdmount import __main__, config
from holdmount.config import When
from holdmount.errors import Exit, Failure

HM = holdmount_cmd()

OSTREE = Path(__file__).resolve().parents[2] / "packaging" / "examples" / "ostree.toml"
GENERIC = Path(__file__).resolve().parents[2] / "packaging" / "examples" / "holdmount.toml"


def load(tmp: Path, *docs: str) -> config.Config:
    files = []
    for i, doc in enumerate(docs):
        f = tmp / f"{i:02d}.toml"
        f.write_text(doc)
        files.append(str(f))
    return config.load(files)


def test_full_schema(tmp_path: Path) -> None:
    c = load(tmp_path, """
[daemon]
stamp = "/var/lib/x/stamp"
allow_foreign_namespace = true
trigger_timeout = "10s"
[control]
path = "/run/x/sock"
mode = "0660"
[marker]
path = "/run/ostree/staged-deployment"
inhibit = "/run/ostree/staged-deployment-locked"
[[hold]]
path = "/boot"
when = "staged"
protect = false
[[hold]]
path = "/sysroot/"
[[action]]
name = "finalize"
exec = ["/usr/bin/ostree", "admin", "finalize-staged"]
when = "staged"
timeout = "5min"
[[action]]
name = "merge-etc"
merge = { from = "/var/lib/staged/etc", to = "/etc" }
when = "always"
timeout = 30
""")
    assert c.daemon == config.DaemonConfig("/var/lib/x/stamp", True, 10.0)
    assert c.control == config.ControlConfig("/run/x/sock", 0o660, None)
    assert c.marker == config.MarkerConfig("/run/ostree/staged-deployment",
                                           "/run/ostree/staged-deployment-locked")
    assert [(h.path, h.when, h.protect) for h in c.holds] == [
        ("/boot", When.STAGED, False), ("/sysroot", When.ALWAYS, False)]
    fin, merge = c.actions
    assert fin.exec == ("/usr/bin/ostree", "admin", "finalize-staged") and fin.timeout == 300
    assert merge.kind == "merge" and merge.merge == config.MergeSpec("/var/lib/staged/etc",
                                                                      "/etc")
    assert merge.timeout == 30.0


def test_defaults(tmp_path: Path) -> None:
    c = load(tmp_path, '[[action]]\nname = "a"\nexec = ["/bin/true"]\nwhen = "always"\n')
    assert c.daemon.stamp == config.DEFAULT_STAMP and not c.daemon.allow_foreign_namespace
    assert c.actions[0].timeout == config.DEFAULT_ACTION_TIMEOUT
    assert c.socket_path({}) == "/run/holdmount/control"
    assert c.socket_path({"HOLDMOUNT_SOCKET": "/tmp/s"}) == "/tmp/s"
    assert config.load([]) == config.Config()


def test_dropins_merge_by_identity_and_keep_order(tmp_path: Path) -> None:
    c = load(tmp_path, """
[marker]
path = "/run/m"
[[hold]]
path = "/boot"
[[hold]]
path = "/var/tmp"
[[action]]
name = "first"
exec = ["/bin/echo", "1"]
[[action]]
name = "second"
exec = ["/bin/echo", "2"]
""", """
[marker]
inhibit = "/run/m-locked"
[[hold]]
path = "/boot"
protect = true
[[hold]]
path = "/var/tmp"
enabled = false
[[action]]
name = "first"
timeout = "1min"
[[action]]
name = "third"
exec = ["/bin/echo", "3"]
""", """
[[action]]
name = "second"
merge = { from = "/a", to = "/b" }
""")
    assert c.marker == config.MarkerConfig("/run/m", "/run/m-locked")
    assert [(h.path, h.protect) for h in c.holds] == [("/boot", True)]
    assert [a.name for a in c.actions] == ["first", "second", "third"]
    assert c.actions[0].exec == ("/bin/echo", "1") and c.actions[0].timeout == 60
    assert c.actions[1].exec is None and c.actions[1].merge == config.MergeSpec("/a", "/b")


def test_default_files_sorted(tmp_path: Path) -> None:
    main = tmp_path / "holdmount.toml"
    d = tmp_path / "conf.d"
    d.mkdir()
    for name in ("20-b.toml", "10-a.toml", "README", "30-c.toml.disabled"):
        (d / name).write_text("")
    assert config.default_files(main, d) == [str(d / "10-a.toml"), str(d / "20-b.toml")]
    main.write_text("")
    assert config.default_files(main, d)[0] == str(main)
    assert config.default_files(main, tmp_path / "none") == [str(main)]


def test_examples_are_valid() -> None:
    for example in (OSTREE, GENERIC):
        c = config.load([str(example)])
        assert c.files == (str(example),)
    c = config.load([str(OSTREE)])
    assert c.marker is not None and c.marker.inhibit == "/run/ostree/staged-deployment-locked"
    assert [h.path for h in c.holds] == ["/boot"]


# --- every error path: one line naming the file and the key, exit 78 ------------------------

ERRORS: list[tuple[str, str, str]] = [
    # (document, key in the message, text in the message)
    ('[[hold]]\npath = "/boot"\nprotext = true\n', "hold[/boot].protext", "unknown key"),
    ('[daemon]\nstamps = "/x"\n', "daemon.stamps", "unknown key"),
    ('[extra]\n', "extra", "unknown key"),
    ('[[hold]]\npath = "/boot"\nprotect = "yes"\n', "hold[/boot].protect",
     "must be true or false, not a string 'yes'"),
    ('[[hold]]\npath = 5\n', "hold[1].path", "must be a string, not an integer 5"),
    ('hold = 3\n', "hold", "must be an array of tables"),
    ('[[action]]\nname = "a"\nexec = "/bin/true"\n', "action[a].exec", "must be a list"),
    ('[[action]]\nname = "a"\nexec = []\n', "action[a].exec", "non-empty list of strings"),
    ('[[action]]\nname = "a"\nexec = ["true"]\n', "action[a].exec", "absolute path"),
    ('[[hold]]\npath = "boot"\n', "hold[boot].path", "must be an absolute path, not 'boot'"),
    ('[marker]\npath = "run/m"\n', "marker.path", "must be an absolute path"),
    ('[daemon]\nstamp = "stamp"\n', "daemon.stamp", "must be an absolute path"),
    ('[[action]]\nname = "a"\nexec = ["/bin/true"]\nwhen = "always"\n'
     '[[action]]\nname = "a"\nexec = ["/bin/false"]\nwhen = "always"\n',
     "action[a].name", "duplicate action name 'a'"),
    ('[[hold]]\npath = "/boot"\n[[hold]]\npath = "/boot/"\n', "hold[/boot/].path",
     "duplicate hold '/boot'"),
    ('[[action]]\nname = "a"\nexec = ["/bin/true"]\ntimeout = "5 fortnights"\n',
     "action[a].timeout", "invalid time span '5 fortnights'"),
    ('[[action]]\nname = "a"\nexec = ["/bin/true"]\ntimeout = "infinity"\n',
     "action[a].timeout", "finite time span"),
    ('[[action]]\nname = "a"\nexec = ["/bin/true"]\ntimeout = 0\n', "action[a].timeout",
     "finite time span > 0"),
    ('[daemon]\ntrigger_timeout = true\n', "daemon.trigger_timeout", "must be a time span"),
    ('[[action]]\nname = "a"\nexec = ["/bin/true"]\nwhen = "sometimes"\n', "action[a].when",
     'must be "always" or "staged"'),
    ('[[action]]\nname = "a"\nwhen = "always"\n', "action[a].exec", "missing"),
    ('[[action]]\nexec = ["/bin/true"]\n', "action[1].name", "missing"),
    ('[[action]]\nname = "a b"\nexec = ["/bin/true"]\n', "action[a b].name", "letters, digits"),
    ('[[action]]\nname = "a"\nexec = ["/bin/true"]\nmerge = {from = "/a", to = "/b"}\n',
     "action[a].merge", "either exec or merge"),
    ('[[action]]\nname = "a"\nmerge = {from = "/a"}\n', "action[a].merge.to", "missing"),
    ('[[action]]\nname = "a"\nexec = ["/bin/true"]\n', "action[a].when",
     '"staged" needs a marker'),
    ('[[hold]]\npath = "/boot"\nwhen = "staged"\n', "hold[/boot].when",
     '"staged" needs a marker'),
    ('[marker]\ninhibit = "/run/x"\n', "marker.path", "missing"),
    ('[control]\nmode = "rw"\n', "control.mode", "octal mode"),
    ('[[hold]]\n', "hold[1].path", "missing"),
]


@pytest.mark.parametrize(("doc", "key", "text"), ERRORS)
def test_error_names_file_and_key(tmp_path: Path, doc: str, key: str, text: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(doc)
    with pytest.raises(Failure) as exc:
        config.load([str(f)])
    assert exc.value.code == Exit.CONFIG
    message = exc.value.message
    assert message.startswith(f"config({f}): {key}: "), message
    assert text in message and "\n" not in message


@pytest.mark.parametrize("case", ["syntax", "missing", "directory", "unreadable", "binary"])
def test_file_level_errors_exit_78_in_one_line(tmp_path: Path, case: str) -> None:
    f = tmp_path / "c.toml"
    if case == "syntax":
        f.write_text('[[hold]\npath = "/boot"\n')
    elif case == "directory":
        f.mkdir()
    elif case == "unreadable":
        f.write_text("")
        f.chmod(0)
    elif case == "binary":
        f.write_bytes(b"\xff\xfe[x]\n")
    cmd = [*HM, "daemon", "--check", "--config", str(f)]
    if case == "unreadable":  # root reads anything: drop to nobody for this one
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
        tmp_path.chmod(0o755)
    r = subprocess.run(cmd, capture_output=True, text=True, cwd="/")
    assert r.returncode == 78, r.stderr
    lines = r.stderr.splitlines()
    assert lines[0].startswith(f"holdmount: config({f}): "), lines
    assert len(lines) == 2 and lines[1].startswith("hint: ")
    expect = {"syntax": "TOML syntax error", "missing": "No such file or directory",
              "directory": "Is a directory", "unreadable": "Permission denied",
              "binary": "not UTF-8"}[case]
    assert expect in lines[0]


def test_cli_error_line_names_dropin(tmp_path: Path) -> None:
    good = tmp_path / "a.toml"
    good.write_text('[[hold]]\npath = "/boot"\n')
    bad = tmp_path / "b.toml"
    bad.write_text('[[hold]]\npath = "/boot"\nwhen = 1\n')
    r = subprocess.run([*HM, "daemon", "--check", "--config", str(good), "--config", str(bad)],
                       capture_output=True, text=True)
    assert r.returncode == 78
    assert r.stderr.splitlines()[0] == (f"holdmount: config({bad}): hold[/boot].when: must be a "
                                        "string, not an integer 1")


# --- fuzzing ------------------------------------------------------------------------------------

def _check(doc_path: Path) -> int:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = __main__.main(["daemon", "--check", "--config", str(doc_path)])
    text = err.getvalue()
    assert "Traceback" not in text and "internal error" not in text, text
    assert rc in (0, 78), (rc, text)
    if rc == 78:
        assert text.startswith(f"holdmount: config({doc_path}): "), text
    return rc


KEYS = ["daemon", "marker", "control", "hold", "action", "path", "when", "protect", "name",
        "exec", "merge", "timeout", "stamp", "inhibit", "enabled", "from", "to", "mode", "group",
        "trigger_timeout", "allow_foreign_namespace", "x"]
# lone surrogates: \udc80..\udcff is what os.fsdecode makes of a byte that is not UTF-8
_surrogatey = st.lists(st.sampled_from(["\udcff", "\udc80", "\udce9", "\ud800", "/", "a", "\n",
                                        "\x7f"]), max_size=6).map("".join)
_scalar = st.one_of(st.booleans(), st.integers(-5, 10**12), st.floats(allow_nan=True),
                    st.sampled_from(["/boot", "boot", "always", "staged", "5min", "infinity",
                                     "0", "", "/bin/true", "0660", "a\x00b", "-1s", "nan",
                                     "/b\udcffoot", "/bin/\udce9", "\ud800"]),
                    st.text(max_size=8), _surrogatey)
_value = st.recursive(_scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)),
    max_leaves=12)
_doc = st.dictionaries(st.sampled_from(KEYS), _value, max_size=5)


def _toml(value: Any, raw: bool = False) -> str:
    """TOML for `value`; with `raw`, lone surrogates are written as they are (for bytes that
    are not UTF-8, or for `config.loads`), not as \\u escapes (which TOML refuses)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(repr(value), repr(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return '"' + "".join(c if (c.isprintable() or (raw and 0xD800 <= ord(c) < 0xE000))
                             and c not in '"\\' else f"\\u{ord(c):04x}"
                             for c in value) + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v, raw) for v in value) + "]"
    return "{" + ", ".join(f"{k} = {_toml(v, raw)}" for k, v in value.items()) + "}"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(doc=_doc)
def test_fuzz_structured_documents(tmp_path: Path, doc: dict[str, Any]) -> None:
    f = tmp_path / "fuzz.toml"
    f.write_text("".join(f"{k} = {_toml(v)}\n" for k, v in doc.items()))
    _check(f)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_fuzz_raw_bytes(tmp_path: Path, data: bytes) -> None:
    f = tmp_path / "fuzz.toml"
    f.write_bytes(data)
    _check(f)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(entries=st.lists(st.dictionaries(st.sampled_from(
    ["path", "when", "protect", "name", "exec", "timeout", "enabled", "merge"]), _value,
    max_size=5), max_size=4), kind=st.sampled_from(["hold", "action"]))
def test_fuzz_array_entries(tmp_path: Path, entries: list[dict[str, Any]], kind: str) -> None:
    f = tmp_path / "fuzz.toml"
    f.write_text('[marker]\npath = "/run/m"\n' + "".join(
        f"[[{kind}]]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in e.items())
        for e in entries))
    _check(f)


def test_subprocess_never_tracebacks_on_garbage(tmp_path: Path) -> None:
    f = tmp_path / "g.toml"
    f.write_bytes(os.urandom(300))
    r = subprocess.run([*HM, "daemon", "--check", "--config", str(f)], capture_output=True,
                       text=True)
    assert r.returncode == 78 and "Traceback" not in r.stderr


def _raw_bytes(text: str) -> bytes:
    """\\udc80..\\udcff as the byte each stands for, other lone surrogates as CESU-8."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(entries=st.lists(st.dictionaries(st.sampled_from(
    ["path", "when", "name", "exec", "timeout", "group", "mode", "inhibit"]), _value,
    max_size=5), max_size=3), kind=st.sampled_from(["hold", "action", "control", "marker"]))
def test_fuzz_strings_not_utf8(tmp_path: Path, entries: list[dict[str, Any]], kind: str) -> None:
    """Lone surrogates and bytes that are not UTF-8 in every string field: written raw into
    the file (exit 78 "not UTF-8", or 0 when the bytes happen to be UTF-8), and parsed from
    text by `config.loads` (a Config, whose `check` reports and never raises, or a one-line
    config error)."""
    header = f"[[{kind}]]\n" if kind in ("hold", "action") else f"[{kind}]\n"
    text = '[marker]\npath = "/run/m"\n' * (kind != "marker") + "".join(
        header + "".join(f"{k} = {_toml(v, raw=True)}\n" for k, v in e.items())
        for e in (entries if kind in ("hold", "action") else entries[:1]))
    f = tmp_path / "fuzz.toml"
    f.write_bytes(_raw_bytes(text))
    _check(f)
    try:
        cfg = config.loads(text, name="fuzz")
    except Failure as e:
        assert e.code in (Exit.CONFIG, Exit.USAGE) and "\n" not in e.message, e.message
        assert e.message.startswith("config(fuzz): "), e.message
        return
    for problem in config.check(cfg):
        assert problem.code == Exit.CONFIG and problem.message.startswith("config(fuzz): ")


def test_reading_the_configuration_imports_only_what_the_daemon_uses(tmp_path: Path) -> None:
    """The daemon's start path (issue 15): the configuration, the records, errors, the kernel
    wrappers and the hold engine load none of these modules at import (each costs the idle
    daemon memory and start-up time), and reading a file parses its TOML in a child, so the
    daemon never holds `tomllib` (and the typing, re and datetime it imports). `-S`: the venv's
    site (its editable-install finder imports pathlib and re) is not the product."""
    root = Path(config.__file__).resolve().parents[2]
    conf = tmp_path / "h.toml"
    conf.write_text('[daemon]\ntrigger_timeout = "5s"\n[[hold]]\npath = "/tmp"\n')
    probe = f"""
import sys
from holdmount import config, errors, hold, marker, mounts, notify, paths, syscalls, timespan
heavy = ("dataclasses", "inspect", "typing", "re", "pathlib", "tomllib", "json", "subprocess",
         "datetime", "logging")
c = config.load(config.default_files({str(tmp_path / "none.toml")!r}, {str(tmp_path / "conf.d")!r}))
print(c.holds == () and "tomllib" not in sys.modules, *[m for m in heavy if m in sys.modules])
c = config.load([{str(conf)!r}])
print(c.daemon.trigger_timeout, c.holds[0].path, *[m for m in heavy if m in sys.modules])
"""
    out = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(root)}, check=True).stdout
    assert out.splitlines() == ["True", "5.0 /tmp"]


@pytest.mark.parametrize("doc", [
    '[daemon]\nstamp = "/s"\ntrigger_timeout = "5s"\n[[hold]]\npath = "/boot"\nwhen = "always"\n',
    '[daemon]\nstamp = 1979-05-27T07:32:00Z\n',  # a datetime where a path belongs
    '[[action]]\nname = "a"\nexec = [1979-05-27, 07:32:00]\n',  # a date and a time
    '[[hold]]\npath = "/x"\nwhen = 1979-05-27T07:32:00.999999-07:00\nprotect = [[1], {a = 2}]\n',
    "[daemon\nstamp = ",  # a TOML syntax error: a Failure raised in the child
    "a = " + "[" * 40 + "]" * 40 + "\n",  # nested too deep
    "x = 1.5e3\ny = inf\nz = -0\nw = 'lit'\n[t.u]\nv = true\n",
], ids=["valid", "datetime", "date-time", "offset", "syntax", "deep", "scalars"])
def test_parsing_in_a_child_answers_as_parsing_here(doc: str) -> None:
    """read_file parses in a child when the process has no tomllib yet (the daemon): the
    document, or the error, is the same as parsing in this process, to the message; a date or
    time arrives as its type's name and repr, all an error message says of it."""
    from holdmount.config import isolated, reader

    def outcome(run: Any) -> object:
        try:
            cfg: object = config.load(["f.toml"], reader=lambda f: run(reader.parse, f, doc))
        except Failure as e:
            return [(x.message, x.hint, x.code) for x in getattr(e, "errors", [e])]
        return cfg

    here = outcome(lambda fn, *args: fn(*args))
    assert outcome(isolated.run) == here
    try:
        doc_here = reader.parse("f.toml", doc)
    except Failure:
        return  # compared above, as the error
    assert repr(isolated.run(reader.parse, "f.toml", doc)) == repr(doc_here)


def test_a_child_that_cannot_answer_leaves_the_call_to_this_process() -> None:
    """The child dies before answering (or the call raises something that is not a Failure):
    the call runs here, so the answer, or the exception, is this process's own."""
    from holdmount.config import isolated

    me = os.getpid()

    def dies_in_the_child() -> str:
        if os.getpid() != me:
            os._exit(3)
        return "here"

    assert isolated.run(dies_in_the_child) == "here"

    def bug() -> None:
        raise ValueError(f"in {'this process' if os.getpid() == me else 'the child'}")

    with pytest.raises(ValueError, match="in this process"):
        isolated.run(bug)


def test_a_child_reaped_by_the_kernel_still_answers() -> None:
    """With SIGCHLD ignored the kernel reaps the child itself (waitpid: ECHILD); what it wrote
    before it exited is the answer."""
    import signal

    from holdmount.config import isolated

    me = os.getpid()
    old = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        assert isolated.run(lambda: "child" if os.getpid() != me else "here") == "child"
    finally:
        signal.signal(signal.SIGCHLD, old)
