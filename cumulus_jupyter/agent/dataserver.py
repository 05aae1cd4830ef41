"""The kernel's data port (`cumulus_jupyter.protocol.dataport` has the wire format).

`DataServer` runs in threads of the remote kernel, started by `cumulus_jupyter.agent.register`.
It listens on the port the gateway assigned (``CUMULUS_DATA_PORT``) and accepts only requests
signed with the kernel's own HMAC key (the key of its connection file, which only the gateway
and the kernel hold), fresh (`dataport.MAX_AGE_S`) and never seen before. A ``put`` lands in
buffers *staged* under the transfer id until a ``cumulus.vars`` comm claims them; a ``get``
sends buffers a ``pull`` staged. Nothing here touches the user namespace: that stays the
comm's job, on the kernel's main thread.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from cumulus_jupyter.errors import CumulusError, DataChannelError, Internal, InvalidArgument
from cumulus_jupyter.protocol import dataport, env


@dataclass
class _Staged:
    buffers: list[Any]
    at: float


class DataServer:
    """The kernel's data port: receives and serves staged buffers for signed requests.

    It listens on TCP (``host``, ``port``), where the bytes follow the request on the same
    connection, and, when ``unix_path`` is given, on a Unix socket beside it: a gateway on the
    same host sends its request there and then *hands over* the client's own connection
    (``SCM_RIGHTS``), so the bytes go from the client straight into this process, one hop,
    as if the client were local."""

    def __init__(self, key: bytes, host: str, port: int, unix_path: str | None = None) -> None:
        if not key:
            raise InvalidArgument("the data port needs the kernel's HMAC key")
        self.key = key
        self._listeners = [socket.create_server((host, port))]
        self.address = self._listeners[0].getsockname()[:2]
        self.unix_path = unix_path
        if unix_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(unix_path)  # left by a previous run of this kernel
            unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old_umask = os.umask(0o177)  # only this user (and root) may connect
            try:
                unix.bind(unix_path)
            finally:
                os.umask(old_umask)
            unix.listen()
            self._listeners.append(unix)
        self._staged: dict[str, _Staged] = {}
        self._seen: dict[str, float] = {}  # nonces of the last dataport.MAX_AGE_S
        self._lock = threading.Lock()
        for listener in self._listeners:
            threading.Thread(
                target=self._serve, args=(listener,), name="cumulus-data", daemon=True
            ).start()

    def close(self) -> None:
        for listener in self._listeners:
            with contextlib.suppress(OSError):  # wakes the thread blocked in accept()
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        if self.unix_path:
            with contextlib.suppress(OSError):
                os.unlink(self.unix_path)

    # staging, for the comm handlers on the main thread

    def stage(self, transfer_id: str, buffers: list[Any]) -> None:
        with self._lock:
            self._expire()
            self._staged[transfer_id] = _Staged(list(buffers), time.monotonic())

    def claim(self, transfer_id: str) -> list[Any]:
        with self._lock:
            staged = self._staged.pop(transfer_id, None)
        if staged is None:
            raise Internal(f"no data staged under transfer {transfer_id} (expired or never sent)")
        return staged.buffers

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, s in self._staged.items() if now - s.at > dataport.STAGE_TTL_S]:
            del self._staged[key]
        wall = time.time()
        for nonce in [n for n, at in self._seen.items() if wall - at > dataport.MAX_AGE_S]:
            del self._seen[nonce]

    # serving

    def _serve(self, listener: socket.socket) -> None:
        handover = listener.family == socket.AF_UNIX
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._handle, args=(conn, handover), daemon=True).start()

    def _handle(self, conn: socket.socket, handover: bool) -> None:
        with conn:
            try:
                message = self._verified(conn)
                if message["op"] == "put":
                    self._receive(conn, handover, message["id"], message["sizes"])
                elif message["op"] == "get":
                    self._send(conn, handover, message["id"])
                else:
                    unknown = f"unknown operation {message['op']!r}"
                    dataport.reply(conn, {"ok": False, "error": unknown})
            except (OSError, CumulusError, ValueError, KeyError, TypeError) as exc:
                with contextlib.suppress(OSError):  # the peer may be gone: nothing to tell
                    dataport.reply(conn, {"ok": False, "error": str(exc) or type(exc).__name__})

    def _verified(self, conn: socket.socket) -> dict[str, Any]:
        message = dataport.verified(self.key, conn)
        if abs(time.time() - float(message["ts"])) > dataport.MAX_AGE_S:
            raise DataChannelError("refused: request too old")
        with self._lock:
            self._expire()
            if message["nonce"] in self._seen:
                raise DataChannelError("refused: request replayed")
            self._seen[message["nonce"]] = time.time()
        dataport.check_transfer_id(message["id"])
        if len(message["sizes"]) > dataport.MAX_FRAMES:
            raise DataChannelError(f"refused: more than {dataport.MAX_FRAMES} buffers")
        return message

    def _receive(
        self, conn: socket.socket, handover: bool, transfer_id: str, sizes: list[int]
    ) -> None:
        with self._lock:
            if transfer_id in self._staged:
                raise DataChannelError(f"transfer {transfer_id} is already staged")
        buffers = [dataport.allocate(int(size)) for size in sizes]
        dataport.reply(conn, {"ok": True})  # ready: the bytes come now
        if handover:
            with dataport.take_handover(conn) as client:
                prefix = dataport.read_frame(conn)  # what the gateway had read before the handover
                _fill(buffers, prefix, client, transfer_id)
        else:
            _fill(buffers, b"", conn, transfer_id)
        self.stage(transfer_id, buffers)
        dataport.reply(conn, {"ok": True, "bytes": sum(sizes)})

    def _send(self, conn: socket.socket, handover: bool, transfer_id: str) -> None:
        views = [memoryview(b).cast("B") for b in self.claim(transfer_id)]
        dataport.reply(conn, {"ok": True, "sizes": [v.nbytes for v in views]})
        if handover:
            with dataport.take_handover(conn) as client:
                for view in views:
                    client.sendall(view)
            dataport.reply(conn, {"ok": True})
        else:
            for view in views:
                conn.sendall(view)


def _fill(buffers: list[Any], prefix: bytes, src: socket.socket, transfer_id: str) -> None:
    """Fill ``buffers`` in order: first from ``prefix``, then from ``src``."""
    taken = 0
    for buffer in buffers:
        view, got = memoryview(buffer), 0
        if taken < len(prefix):
            part = prefix[taken : taken + len(buffer)]
            view[: len(part)] = part
            got, taken = len(part), taken + len(part)
        while got < len(buffer):
            count = src.recv_into(view[got:])
            if count == 0:
                raise DataChannelError(f"transfer {transfer_id} broke off")
            got += count


_OPEN: list[DataServer] = []  # this kernel's data port, once `open_port` opened it


def open_port(key: bytes) -> None:
    """Open this kernel's data port where the gateway said (``CUMULUS_DATA_PORT``, its host and
    Unix socket); a failure is printed, and variables then travel in messages."""
    port = os.environ.get(env.DATA_PORT)
    if _OPEN or not port:
        return
    try:
        host = os.environ.get(env.DATA_HOST, "127.0.0.1")
        unix = os.environ.get(env.DATA_SOCKET) or None
        _OPEN.append(DataServer(key, host, int(port), unix))
    except (OSError, ValueError, CumulusError) as exc:
        print(f"cumulus: no data port ({exc}); large variables travel in messages",
              file=sys.stderr)  # fmt: skip


def current() -> DataServer:
    """This kernel's data port; `InvalidArgument` when it has none."""
    if not _OPEN:
        raise InvalidArgument(f"this kernel has no data port ({env.DATA_PORT} was not set)")
    return _OPEN[0]


def port() -> int | None:
    """The data port this kernel listens on, or None (then variables travel in messages)."""
    return int(_OPEN[0].address[1]) if _OPEN else None
