"""`holdmount daemon --check`: the configuration parsed, then what only the running system can
tell (the control group exists, each action's program is an executable file), every error
reported at once."""

from __future__ import annotations

import grp
import os
import stat

from holdmount.config.dropins import load
from holdmount.config.reader import CHECK_HINT, ConfigErrors, fail
from holdmount.errors import Failure

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:  # annotations only
    from collections.abc import Sequence

    from holdmount.config.model import Config


def load_checked(files: Sequence[str], *, extra_holds: Sequence[str] = ()) -> Config:
    """`daemon --check`: `load`, then `check` even when parsing failed (on what was valid);
    ConfigErrors names every error found. Hints that point at `--check` are reworded: the user
    is running it."""
    try:
        config = load(files, extra_holds=extra_holds)
        errors: list[Failure] = []
    except ConfigErrors as e:
        config, errors = e.partial, list(e.errors)
    except Failure as e:
        raise _checking(e) from None
    errors += check(config)
    if errors:
        raise _checking(ConfigErrors([_checking(e) for e in errors], config))
    return config


def _checking(e: Failure) -> Failure:
    if e.hint == CHECK_HINT:
        e.hint = "fix the key named above (holdmount.toml(5) lists every key), then check again"
    return e


def check(config: Config) -> list[Failure]:
    """What `daemon --check` adds to parsing: facts of this system the daemon will rely on
    (the control group exists, each action's program is an executable file). All of them."""
    errors: list[Failure] = []
    group = config.control.group
    if group is not None:
        try:
            grp.getgrnam(group)
        except (KeyError, UnicodeEncodeError):
            errors.append(fail(_origin(config), "control.group",
                                f"getgrnam({group}): no such group"))
    for a in config.actions:
        if a.exec is None:
            continue
        program = a.exec[0]
        try:
            st = os.stat(program)
        except (OSError, ValueError) as e:
            reason = os.strerror(e.errno or 0) if isinstance(e, OSError) else str(e)
            errors.append(fail(a.origin, f"action[{a.name}].exec",
                                f"stat({program}): {reason}",
                                hint="the daemon runs it at shutdown: install it or fix the "
                                "path"))
            continue
        if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o111:
            errors.append(fail(a.origin, f"action[{a.name}].exec",
                                f"{program}: not an executable file",
                                hint="the daemon runs it at shutdown: chmod +x it or name "
                                "the program itself"))
    return errors


def _origin(config: Config) -> str:
    return config.files[-1] if config.files else "<command line>"
