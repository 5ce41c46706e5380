"""Peer holders the harness runs as `/usr/bin/python3 -m bench.holder MODE LISTFILE`.

- `raw`: open every listed directory `O_RDONLY|O_DIRECTORY` in this process (which triggers an
  automount) and keep the fds — the floor any holder pays: interpreter start + N opens.
- `engine`: `holdmount.hold.take(paths)` once for all of them — the hold engine batched (one
  helper, one mount-table read), what the daemon costs if it took its holds in one batch.

Then READY=1 to $NOTIFY_SOCKET (the same listener as the daemon's) and sleep in pause().
"""

from __future__ import annotations

import os
import signal
import socket
import sys


def main() -> None:
    mode, listfile = sys.argv[1], sys.argv[2]
    with open(listfile) as f:
        paths = f.read().split("\n")[:-1]
    if mode == "raw":
        fds = [os.open(p, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) for p in paths]
    else:
        from holdmount import hold

        fds = [h.fd for h in hold.take(paths)]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.sendto(f"READY=1\nSTATUS=holding {len(fds)}".encode(), os.environ["NOTIFY_SOCKET"])
    signal.pause()


if __name__ == "__main__":
    main()
