"""A call in a short-lived child process, for what the daemon should not keep in memory: the
TOML parse (`tomllib` costs the idle daemon ~1.9 MiB, imported once and kept for good).

`run(fn, *args)` forks, calls `fn` in the child, and sends its value back through a pipe with
`marshal` (built in: nothing to import). A `Failure` the call raises is raised again here with
its message, hint and code. Values `marshal` cannot carry — TOML's dates and times — arrive as
`Opaque`: their type's name and repr, all that an error message says about a value of the wrong
type. When the child cannot deliver (it crashed, or the fork failed), the call runs here.
"""

from __future__ import annotations

import marshal
import os

from holdmount.errors import Exit, Failure

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:  # annotations only
    from collections.abc import Callable
    from typing import Any


class Opaque:
    """A value that did not survive the trip: its type's name and its repr."""

    __slots__ = ("text", "type_name")

    def __init__(self, type_name: str, text: str) -> None:
        self.type_name = type_name
        self.text = text

    def __repr__(self) -> str:
        return self.text


def carry(value: object) -> object:
    """`value` with everything marshal cannot carry as a tuple (type name, repr); TOML has no
    tuples, so a tuple is always one of these."""
    if isinstance(value, dict):
        return {k: carry(v) for k, v in value.items()}
    if isinstance(value, list):
        return [carry(v) for v in value]
    if value is None or isinstance(value, (str, int, float)):
        return value
    return (type(value).__name__, repr(value))


def arrived(value: Any) -> Any:
    """The inverse of `carry`: each tuple (type name, repr) back as an `Opaque`."""
    if isinstance(value, dict):
        return {k: arrived(v) for k, v in value.items()}
    if isinstance(value, list):
        return [arrived(v) for v in value]
    if isinstance(value, tuple):
        return Opaque(*value)
    return value


def _child(write_fd: int, fn: Callable[..., Any], args: tuple[object, ...],
           after: Callable[[Any], object] | None) -> None:
    try:
        value: Any = None
        try:
            value = fn(*args)
            answer: Any = ("value", carry(value))
        except Failure as e:
            answer = ("failure", e.message, e.hint, int(e.code))
        data = marshal.dumps(answer)
        with open(write_fd, "wb", closefd=True) as pipe:
            pipe.write(data)
        if after is not None and answer[0] == "value":
            after(value)  # the answer is out: the parent decodes it meanwhile
    finally:
        os._exit(0)  # no atexit handlers, no buffers of the parent's flushed twice


def run(fn: Callable[..., Any], *args: object,
        after: Callable[[Any], object] | None = None) -> Any:
    """`fn(*args)` computed in a child process (see the module's docstring). `after(value)`
    runs in the child once the value is sent (not after a Failure, nor when the call runs
    here): work the caller should not wait for the answer to do, such as keeping it."""
    try:
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
    except OSError:
        return fn(*args)
    if pid == 0:  # pragma: no cover - in the child, which never returns
        os.close(read_fd)
        _child(write_fd, fn, args, after)
    os.close(write_fd)
    with open(read_fd, "rb", closefd=True) as pipe:
        data = pipe.read()
    try:  # decoded while the child may still be at `after`
        answer = marshal.loads(data)
        value = arrived(answer[1]) if answer[0] == "value" else None
    except (EOFError, ValueError, TypeError):  # the child died before it answered
        answer = None
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:  # reaped already (SIGCHLD ignored): its answer is in `data`
        pass
    if answer is None:
        return fn(*args)
    if answer[0] == "failure":
        _, message, hint, code = answer
        raise Failure(message, hint=hint, code=Exit(code))
    return value
