"""User-facing failures: one line of what failed, one line of what to do, a sysexits code.

Every error that a user can cause ends up as a `Failure`; `__main__` prints it and exits with its
code. Nothing else in the package prints tracebacks (only `--debug` does).
"""

from __future__ import annotations

import enum
import errno
import os

TYPE_CHECKING = False  # typing costs ~1 MiB at run time; mypy reads this as True
if TYPE_CHECKING:
    from typing import NoReturn


class Exit(enum.IntEnum):
    """sysexits.h codes (the subset we use) — `Restart=` in units keys off 78."""

    OK = 0
    FAILURE = 1
    USAGE = 64  # bad command line
    DATAERR = 65  # input has the wrong shape (a file where a directory is needed)
    NOINPUT = 66  # a path does not exist
    UNAVAILABLE = 69  # a service we need is not there (automount daemon gone, holdmount daemon)
    SOFTWARE = 70  # internal error (a bug)
    OSERR = 71  # the system refused something unexpected
    CANTCREAT = 73  # cannot write where asked (read-only, full, quota, noexec)
    TEMPFAIL = 75  # try again later (trigger timed out, lock held by someone else)
    PROTOCOL = 76  # the peer spoke nonsense
    NOPERM = 77  # permission denied
    CONFIG = 78  # configuration error: systemd must not restart us in a loop
    CANNOT_EXEC = 126  # shell convention: the command exists but could not be executed
    NOT_FOUND = 127  # shell convention: the command was not found


class Failure(Exception):
    """A failure to report to the user: `message` names the call and the path."""

    def __init__(self, message: str, *, hint: str | None = None, code: Exit = Exit.FAILURE):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.code = code

    def __str__(self) -> str:
        return self.message


def die(message: str, *, hint: str | None = None, code: Exit = Exit.FAILURE) -> NoReturn:
    raise Failure(message, hint=hint, code=code)


# What an errno from opening/using a user-supplied path means to the user.
_ERRNO_CODES: dict[int, Exit] = {
    errno.ENOENT: Exit.NOINPUT,
    errno.ENOTDIR: Exit.DATAERR,
    errno.ELOOP: Exit.DATAERR,
    errno.EACCES: Exit.NOPERM,
    errno.EPERM: Exit.NOPERM,
    errno.EROFS: Exit.CANTCREAT,
    errno.ENOSPC: Exit.CANTCREAT,
    errno.EDQUOT: Exit.CANTCREAT,
    errno.EHOSTDOWN: Exit.UNAVAILABLE,
    errno.ENODEV: Exit.UNAVAILABLE,
    errno.ETIMEDOUT: Exit.TEMPFAIL,
    errno.EWOULDBLOCK: Exit.TEMPFAIL,
}

_ERRNO_HINTS: dict[int, str] = {
    errno.ENOENT: "check the path; a dangling symlink or an automount whose map has no entry "
    "also gives this",
    errno.ENOTDIR: "holdmount holds directories: name the mount point or a directory inside it",
    errno.ELOOP: "a symlink on the way loops back on itself (or the chain is over 40 links): "
    "`namei -l PATH` shows each step",
    errno.EACCES: "run as a user who may open the directory, or ask root / the holdmount daemon",
    errno.EPERM: "run as a user who may open the directory, or ask root / the holdmount daemon",
    errno.EHOSTDOWN: "the automount is catatonic (its daemon died): restart autofs or the "
    ".automount unit",
    errno.ENODEV: "the automount daemon could not mount it: see its log (journalctl -u autofs)",
}


def os_failure(call: str, path: str | os.PathLike[str], exc: OSError,
               *, hint: str | None = None, code: Exit | None = None) -> Failure:
    """`open(/boot): No such file or directory` with a code and hint chosen from errno."""
    num = exc.errno or 0
    reason = os.strerror(num) if num else str(exc)
    return Failure(
        f"{call}({os.fspath(path)}): {reason}",
        hint=hint or _ERRNO_HINTS.get(num),
        code=code if code is not None else _ERRNO_CODES.get(num, Exit.OSERR),
    )
