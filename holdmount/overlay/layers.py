"""The layers of a mounted overlay, read from mountinfo.

Layers come from the superblock options (`lowerdir=a:b`, `lowerdir+=`, `datadir+=`, `upperdir=`,
`workdir=`); paths there are the strings the mounter passed, octal-escaped by the kernel
(`\\134` is `\\`), and in `lowerdir=` a backslash escapes a colon.
"""

from __future__ import annotations

from holdmount.record import Record

TYPE_CHECKING = False  # typing costs ~1 MiB at run time; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import Iterator

    from holdmount.mounts import Mount


def _unescape(value: str) -> str:
    """`\\ooo` (three octal digits) as the character it stands for: how mountinfo escapes."""
    if "\\" not in value:
        return value
    first, *rest = value.split("\\")
    out = [first]
    for part in rest:
        if len(part) >= 3 and all(c in "01234567" for c in part[:3]):
            out.append(chr(int(part[:3], 8)) + part[3:])
        else:
            out.append("\\" + part)
    return "".join(out)


def _super_options(text: str) -> list[tuple[str, str]]:
    """Superblock options in order, values unescaped (keys may repeat: lowerdir+=)."""
    out: list[tuple[str, str]] = []
    for opt in text.split(","):
        key, _, value = opt.partition("=")
        if key:
            out.append((key, _unescape(value)))
    return out


def split_lowerdir(value: str) -> tuple[list[str], list[str]]:
    """`lowerdir=` as the kernel splits it: `:` separates layers, `\\` escapes the next
    character, and after `::` come data-only layers. Returns (lowerdirs, datadirs)."""
    parts: list[str] = []
    cur: list[str] = []
    chars = iter(value)
    for ch in chars:
        if ch == "\\":
            cur.append(next(chars, ""))
        elif ch == ":":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    lower: list[str] = []
    data: list[str] = []
    seen_gap = False
    for p in parts:
        if not p:
            seen_gap = True
        elif seen_gap:
            data.append(p)
        else:
            lower.append(p)
    return lower, data


class Layers(Record):
    """The directories an overlay mount is made of (lowerdirs top first)."""

    mount: Mount
    lowerdirs: tuple[str, ...]
    datadirs: tuple[str, ...]
    upperdir: str | None
    workdir: str | None
    userxattr: bool

    @property
    def xattr_prefix(self) -> str:
        return "user.overlay." if self.userxattr else "trusted.overlay."

    def roles(self) -> Iterator[tuple[str, str]]:
        """(role, directory) for every layer: upperdir, workdir, lowerdir, datadir."""
        if self.upperdir:
            yield "upperdir", self.upperdir
        if self.workdir:
            yield "workdir", self.workdir
        for d in self.lowerdirs:
            yield "lowerdir", d
        for d in self.datadirs:
            yield "datadir", d


def layers(m: Mount) -> Layers:
    lower: list[str] = []
    data: list[str] = []
    upper = work = None
    userxattr = False
    for key, value in _super_options(m.super_options):
        if key == "lowerdir":
            lo, da = split_lowerdir(value)
            lower += lo
            data += da
        elif key == "lowerdir+":
            lower.append(value)
        elif key == "datadir+":
            data.append(value)
        elif key == "upperdir":
            upper = value
        elif key == "workdir":
            work = value
        elif key == "userxattr":
            userxattr = True
    return Layers(m, tuple(lower), tuple(data), upper, work, userxattr)
