"""What the finalize actions did: this shutdown's results and skips, the failure stamp.

The stamp (`[daemon] stamp`) records the failed actions for `holdmount report` at the next boot;
it is removed when every action of a shutdown succeeded. The previous shutdown's stamp, read at
start, is what `holdmount status` shows for an action that has not run yet.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from holdmount import record
from holdmount.config import ActionConfig
from holdmount.errors import Failure
from holdmount.finalize import Result
from holdmount.log import log
from holdmount.stamp import clear_stamp, read_stamp, write_stamp

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:  # annotations only
    from typing import Any


class Outcomes:
    def __init__(self, stamp: str) -> None:
        self.stamp = stamp
        self.results: dict[str, Result] = {}
        self.skipped: dict[str, str] = {}  # action name -> why it was skipped
        self.previous = read_stamp(stamp) if os.path.exists(stamp) else None

    def skip(self, action: ActionConfig, reason: str) -> None:
        self.skipped[action.name] = reason
        log.info("action %s: skipped (%s)", action.name, reason)

    def record(self, results: Sequence[Result]) -> bool:
        """Keep `results` and write (or clear) the stamp; True when every action succeeded."""
        for r in results:
            self.results[r.name] = r
        failures = [r for r in results if not r.ok]
        try:
            if failures:
                write_stamp(self.stamp, failures)
                log.event("stamp-written", "%d of %d actions failed; recorded in %s",
                          len(failures), len(results), self.stamp, stamp=self.stamp,
                          failed=" ".join(r.name for r in failures))
            elif results and clear_stamp(self.stamp):
                log.event("stamp-cleared", "every action succeeded: removed the failure stamp %s",
                          self.stamp, stamp=self.stamp)
        except Failure as e:
            log.error("%s", e.message)
        return not failures

    def as_dict(self, action: ActionConfig) -> dict[str, Any]:
        """An action as `holdmount status` shows it, with its last result."""
        return {"name": action.name, "kind": action.kind, "when": str(action.when),
                "timeout": action.timeout,
                "argv": list(action.exec) if action.exec else None,
                "merge": record.asdict(action.merge) if action.merge else None,
                "last": self._last(action.name)}

    def _last(self, name: str) -> dict[str, Any] | None:
        if name in self.results:
            return {"when": "this shutdown", **self.results[name].as_dict()}
        if name in self.skipped:
            return {"when": "this shutdown", "ok": True,
                    "status": f"skipped: {self.skipped[name]}"}
        last: dict[str, Any] | None = None
        if self.previous is not None:
            for f in self.previous.get("failures", []):
                if isinstance(f, dict) and f.get("name") == name:
                    last = {"when": f"previous shutdown ({self.previous.get('time', '?')})",
                            "ok": False, "status": f.get("status", "?")}
        return last

    def stamp_dict(self) -> dict[str, Any]:
        return {"path": self.stamp, "exists": os.path.exists(self.stamp)}
