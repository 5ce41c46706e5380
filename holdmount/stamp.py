"""The failure stamp a finalize leaves behind, and `holdmount report`, which shows it.

ostree's finalize-failure.stamp pattern: when an action fails, the daemon writes a JSON file
recording the action, its status and its last output lines (docs/json.md);
`holdmount report` (holdmount-report.service) shows it at the next boot and fails. A later
finalize in which every action succeeds removes it.
"""

from __future__ import annotations

import contextlib
import errno
import os

from holdmount.errors import Exit, Failure, os_failure
from holdmount.log import log

TYPE_CHECKING = False  # typing costs ~1 MiB at run time; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

    from holdmount.finalize import Result

STAMP_FORMAT = 1


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


# json and datetime are imported where they are used: the daemon's start path needs neither
# (a stamp is read at start only when one exists). Both are the standard library's.


def _now() -> str:
    import datetime

    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def write_stamp(path: str, failures: Sequence[Result]) -> None:
    """Atomically write the failure stamp (tmp file + rename in the same directory)."""
    data = {
        "holdmount_stamp": STAMP_FORMAT,
        "time": _now(),
        "boot_id": _boot_id(),
        "failures": [r.as_dict() for r in failures],
    }
    import json

    directory = os.path.dirname(path)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _stamp_failure("write", path, e) from e


def clear_stamp(path: str) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as e:
        raise _stamp_failure("unlink", path, e) from e
    return True


# The stamp is a file the daemon writes as root: the generic hints (about held directories) do
# not fit it.
_STAMP_HINTS = {
    errno.EACCES: "the daemon writes the stamp as root: run this as root",
    errno.EPERM: "the daemon writes the stamp as root: run this as root",
    errno.ENOTDIR: "a part of the stamp's path is a file, not a directory: --stamp / "
    "daemon.stamp name the file itself",
    errno.EISDIR: "--stamp / daemon.stamp name the stamp file itself, not its directory",
    errno.EROFS: "the stamp's filesystem is read-only at that moment: put daemon.stamp on a "
    "filesystem that is writable at shutdown (e.g. /var/lib/holdmount)",
}


def _stamp_failure(call: str, path: str, exc: OSError) -> Failure:
    code = Exit.DATAERR if exc.errno in (errno.ENOTDIR, errno.EISDIR) else None
    return os_failure(call, path, exc, hint=_STAMP_HINTS.get(exc.errno or 0), code=code)


def read_stamp(path: str, *, strict: bool = False) -> dict[str, Any] | None:
    """The stamp's content, None when there is none. A file that is not a stamp raises a
    Failure (65) when `strict` (`holdmount report`); otherwise (the daemon's status) it still
    counts as a failure, "unreadable stamp", without repeating the file's content."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise _stamp_failure("open", path, e) from e
    import json

    try:
        data = json.loads(text)
        why = "" if isinstance(data, dict) and isinstance(data.get("holdmount_stamp"), int) \
            and isinstance(data.get("failures"), list) else "JSON, but not a holdmount stamp"
    except ValueError:
        why = "not JSON"
    if not why:
        return dict(data)
    if strict:
        raise Failure(f"read({path}): not a holdmount failure stamp ({why})",
                      hint="--stamp names the file the daemon writes when an action fails "
                      "(daemon.stamp in holdmount.toml); a damaged stamp can be removed",
                      code=Exit.DATAERR)
    return {"holdmount_stamp": 0, "time": "", "failures": [
        {"name": "?", "status": f"unreadable stamp ({why})", "output": []}]}


def render_stamp(path: str, data: Mapping[str, Any]) -> list[str]:
    """Human-readable lines for `holdmount report` and status."""
    out = []
    for f in data.get("failures", []):
        if not isinstance(f, dict):
            continue
        out.append(f"action {f.get('name', '?')} failed at shutdown ({data.get('time') or '?'}):"
                   f" {f.get('status', '?')}")
        for line in f.get("output", []) or []:
            out.append(f"  | {line}")
    out.append(f"(stamp {path}; removed by the next finalize in which every action succeeds)")
    return out


REPORT_FORMAT = 1  # `report --json`: docs/json.md; bump only for an incompatible change


def report(path: str, *, as_json: bool = False) -> int:
    """`holdmount report`: print the stamp and fail when it exists."""
    data = read_stamp(path, strict=True)
    if as_json:
        import json

        failures = data.get("failures", []) if data else []
        print(json.dumps({
            "holdmount_report": REPORT_FORMAT, "stamp": path, "failed": data is not None,
            "time": data.get("time") if data else None,
            "boot_id": data.get("boot_id") if data else None,
            "failures": [f for f in failures if isinstance(f, dict)],
        }, indent=2, sort_keys=True))
        return int(Exit.FAILURE if data is not None else Exit.OK)
    if data is None:
        log.info("no finalize failure recorded (%s does not exist)", path)
        return int(Exit.OK)
    lines = render_stamp(path, data)
    for line in lines:
        log.error("%s", line)
    return int(Exit.FAILURE)
