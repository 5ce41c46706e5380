"""The control socket: one JSON object per SOCK_SEQPACKET message, daemon side and client side.

Protocol (version 1):

- transport: AF_UNIX SOCK_SEQPACKET at /run/holdmount/control ($HOLDMOUNT_SOCKET overrides it
  for the daemon and for clients). Message boundaries are kept by the kernel; one message is one
  UTF-8 JSON object of at most 64 KiB. A connection may carry any number of requests; each gets
  exactly one reply, in order. The daemon knows each connection's peer from SO_PEERCRED (pid, uid,
  gid at connect time).
- request: {"op": NAME, ...fields}; fds may ride along as SCM_RIGHTS (at most 16 per message).
  A path that is not UTF-8 travels as Python's surrogateescape spells it: each byte that is not
  part of a UTF-8 sequence is the escape \\udc80..\\udcff (os.fsdecode); the daemon turns those
  back into the bytes. No other lone surrogate is a path.
- reply: {"ok": true, ...fields} or {"ok": false, "error": "one line"}, always strict UTF-8
  JSON: in a reply such a byte is written as the four characters \\xNN (for display; the
  client keeps its own copy of the paths it asked for).
- cost: connections per uid (`[control] connections_per_uid`) and idle connections
  (`idle_timeout`) are bounded by the server (`admission`), leases and paths per uid by the
  daemon (holdmount.leases); a refusal is a reply with a "code", then the connection is closed
  (docs/security.md).
- ops now: "ping" -> {"ok": true, "protocol": 1, "version": "..."}; "status" -> {"ok": true,
  "status": {...}} (see holdmount.daemon.Daemon.status_dict); "hold" / "release" (delegated
  holds, holdmount.leases, docs/delegation.md). A refusal may carry "code" (a sysexits number
  for the client).
- replies may carry fds too (a handler returns them under REPLY_FDS; the server sends and then
  closes them); `Client.call_fds` receives them close-on-exec.

The parts: `wire` (the format, shared), `server` (connections, ops by name, the error
boundary), `admission` (who may connect), `listen` (the socket file), `client`. What other
modules use is importable from here.
"""

from __future__ import annotations

from holdmount.control.client import Client, refusal, request
from holdmount.control.server import Connection, Request, Server
from holdmount.control.wire import (
    MAX_MESSAGE,
    MAX_REPLY,
    PROTOCOL,
    REPLY_FDS,
    Peer,
    RequestError,
    encode,
    encode_request,
)

__all__ = ["MAX_MESSAGE", "MAX_REPLY", "PROTOCOL", "REPLY_FDS", "Client",
           "Connection", "Peer", "Request", "RequestError", "Server", "encode",
           "encode_request", "refusal", "request"]
