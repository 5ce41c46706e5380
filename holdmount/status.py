"""`holdmount status`: ask the daemon over the control socket and render its answer."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping

from holdmount import control
from holdmount.paths import control_socket

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:  # annotations only
    from typing import Any

STATUS_FORMAT = 1


def main(*, as_json: bool = False, socket: str | None = None) -> int:
    reply = control.request(control_socket(socket), "status")
    status = reply.get("status", {})
    if as_json:  # a stable interface: docs/json.md; bump the number only for incompatible changes
        print(json.dumps({"holdmount_status": STATUS_FORMAT, **status}, indent=2,
                         sort_keys=True))
    else:
        for line in render(status):
            print(line)
    return 0


def _when(ts: object) -> str:
    if not isinstance(ts, (int, float)):
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _hold_lines(head: str, h: Mapping[str, Any], idle: str) -> list[str]:
    state = h.get("state")
    if h.get("held"):
        line = (f"{head}: {h.get('fstype')} from {h.get('source')} on "
                f"{h.get('mount_point')}{', automount' if h.get('automount') else ''}"
                f"{', protected' if h.get('protected') else ''}"
                f"{', adopted from the fd store' if h.get('adopted') else ''}, since "
                f"{_when(h.get('since'))}")
        if state and state != "held":
            line += f"; state: {state}"
        return [line]
    if state == "lost":
        return [f"{head}: state: lost: {h.get('error') or 'unmounted'}"]
    if h.get("error"):
        return [f"{head}: NOT HELD: {h['error']}"]
    return [f"{head}: {idle}"]


def render(s: Mapping[str, Any]) -> list[str]:
    ns = s.get("host_mount_namespace")
    out = [f"holdmount daemon {s.get('version', '?')}, pid {s.get('pid', '?')}: "
           f"{s.get('state', '?')}"
           + (f" (running action {s['finalizing']})" if s.get("finalizing") else ""),
           "mount namespace: " + ("PID 1's (host)" if ns is True else
                                  "FOREIGN: not PID 1's — holds do not keep host automounts "
                                  "alive" if ns is False else "unknown (cannot read /proc/1)")]
    marker = s.get("marker")
    if marker:
        extra = ""
        if marker.get("inhibit"):
            extra = (f"; {marker['inhibit']} exists: staged actions will be skipped"
                     if marker.get("inhibited") else "")
        out.append(f"marker: {marker.get('state', '?')} ({marker.get('path')}"
                   f"{'' if marker.get('present') else ', absent'}){extra}")
    else:
        out.append("marker: none configured")
    holds = s.get("holds", [])
    out.append(f"holds: {len(holds)}")
    for h in holds:
        out.extend(_hold_lines(f"  {h.get('path')} [{h.get('when')}]", h,
                               "not held (waiting for the marker)"))
    delegated = s.get("delegated") or []
    if delegated or "delegated" in s:
        out.append(f"delegated holds: {len(delegated)}"
                   + ("" if s.get("fdstore") is None else
                      f" (fd store {'on' if s.get('fdstore') else 'off'} for configured holds)"))
    for d in delegated:
        out.extend(_hold_lines(f"  {d.get('path')}", d, "not held"))
        for c in d.get("holders") or []:
            out.append(f"    for pid {c.get('pid')} (uid {c.get('uid')}), lease "
                       f"{c.get('lease')}, until {c.get('until')}")
    actions = s.get("actions", [])
    out.append(f"actions: {len(actions)} (run in this order at SIGTERM)")
    for a in actions:
        what = " ".join(a["argv"]) if a.get("argv") else \
            f"merge {a['merge']['source']} -> {a['merge']['dest']}" if a.get("merge") else "?"
        last = a.get("last")
        result = "not run yet" if not last else \
            f"{'ok' if last.get('ok') else 'FAILED'} ({last.get('when')}): {last.get('status')}"
        out.append(f"  {a.get('name')} [{a.get('when')}, timeout {a.get('timeout'):g}s]: "
                   f"{what} — last: {result}")
    stamp = s.get("stamp") or {}
    if stamp.get("exists"):
        out.append(f"failure stamp: {stamp.get('path')} exists (see `holdmount report`)")
    return out
