"""What the daemon has imported when it says READY=1 (issue 15, P2/P3 in docs/performance.md).

The daemon is started the way its unit starts it (`holdmount daemon --config FILE`, signals
blocked), holding a directory, watching a marker, with a finalize action: the modules it has
loaded when it sends READY=1 are written out by a wrapper around Notifier.ready. The heavy ones
(each +0.5 to 2 MiB of idle RSS, or a fork of ldconfig) must not be among them; `json` arrives
with the first control request, and the finalize still works without `subprocess`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from conftest import holdmount_cmd
from daemon_harness import wait_for

REPO = Path(__file__).resolve().parents[2]

HEAVY = {"subprocess", "re", "json", "typing", "tomllib", "dataclasses", "inspect", "logging",
         "argparse", "pathlib", "datetime", "locale", "threading", "hashlib", "ctypes.util",
         "shutil", "tempfile", "runpy"}

WRAPPER = """
import sys
out = sys.argv.pop(1)
from holdmount import notify
ready = notify.Notifier.ready
def record(self, *args, **kwargs):
    with open(out, "w") as f:
        f.write(" ".join(sorted(sys.modules)))
    return ready(self, *args, **kwargs)
notify.Notifier.ready = record
from holdmount.__main__ import main
sys.exit(main())
"""


def test_ready_daemon_has_none_of_the_heavy_modules(tmp_path: Path) -> None:
    held = tmp_path / "held"
    held.mkdir()
    done = tmp_path / "done"
    cfg = tmp_path / "h.toml"
    cfg.write_text(f'[daemon]\nstamp = "{tmp_path}/stamp"\nallow_foreign_namespace = true\n'
                   f'[control]\npath = "{tmp_path}/control"\n'
                   f'[marker]\npath = "{tmp_path}/marker"\n'
                   f'[[hold]]\npath = "{held}"\nwhen = "always"\n'
                   f'[[action]]\nname = "touch"\nexec = ["/usr/bin/touch", "{done}"]\n'
                   'when = "always"\n')
    modules = tmp_path / "modules"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOLDMOUNT_SOCKET": str(tmp_path / "control")}
    # -S: the venv's site (its editable-install finder imports re and pathlib) is not the product
    proc = subprocess.Popen([sys.executable, "-S", "-c", WRAPPER, str(modules), "daemon",
                             "--config", str(cfg)], env=env, cwd="/",
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        ready = wait_for(lambda: proc.poll() is not None or
                         (modules.exists() and modules.stat().st_size > 0), 30)
        assert ready and proc.poll() is None, proc.communicate()
        loaded = set(modules.read_text().split())
        assert "holdmount.finalize" in loaded and "holdmount.control.server" in loaded
        assert sorted(HEAVY & loaded) == []
        status = subprocess.run([*holdmount_cmd(), "status", "--json"],
                                env=env, capture_output=True, text=True, timeout=30)
        assert status.returncode == 0 and str(held) in status.stdout, status.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert done.exists(), err  # the action ran: started by posix_spawn, not subprocess
