"""The bulk data path: large variables travel beside the kernel's messages, not inside them.

Small values ride in comm messages over the kernel WebSocket. Large ones (over
`STAGE_THRESHOLD`) take three hops that each move bytes and nothing else:

    client ──HTTP PUT/GET /api/cumulus/kernels/{id}/data/{transfer}──▶ gateway
    gateway ──TCP, one signed request per transfer──▶ the kernel's data port

- The **kernel side** (`DataServer`, a thread started by ``cumulus_jupyter.remote.register``)
  listens on the port the gateway assigned it (``CUMULUS_DATA_PORT``) and accepts only requests
  signed with the kernel's own HMAC key (the key of its connection file, which only the gateway
  and the kernel hold), fresh (`MAX_AGE_S`) and never seen before. A ``put`` lands in buffers
  *staged* under the transfer id until a ``cumulus.vars`` comm claims them; a ``get`` sends
  buffers a ``pull`` staged. Nothing here touches the user namespace: that stays the comm's job,
  on the kernel's main thread.
- The **gateway** (`gateway.data`) authenticates the HTTP request like any other, opens the
  kernel's data port, and then moves the body with `pump`: ``splice(2)`` through a pipe where
  the OS has it, so the bytes never enter the gateway's user space.
- The **client** (`upload`, `download`) speaks plain HTTP/1.1 with ``http.client`` and reads
  straight into the destination buffers.

Wire format gateway → kernel: ``u32 length | JSON | HMAC-SHA256(JSON)``; kernel → gateway:
``u32 length | JSON`` (then the bytes, for a ``get``).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import json
import os
import re
import socket
import struct
import threading
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cumulus_jupyter.errors import (
    CumulusError,
    DataChannelError,
    Internal,
    InvalidArgument,
    error_for_status,
)

STAGE_THRESHOLD = 1 << 20  # payloads at least this large take the data path
MAX_AGE_S = 120.0  # a signed request older than this is refused
STAGE_TTL_S = 600.0  # staged buffers nobody claimed are dropped after this
MAX_FRAMES = 4096
TRANSFER_ID = re.compile(r"[0-9a-f]{32}")
_LENGTH = struct.Struct("!I")
_MAX_HEADER = 1 << 20
_PIPE_SIZE = 1 << 20
_CHUNK = 1 << 20


# -- framing -----------------------------------------------------------------------------------


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = bytearray(n)
    view = memoryview(data)
    got = 0
    while got < n:
        count = sock.recv_into(view[got:])
        if count == 0:
            raise DataChannelError("the connection closed in the middle of a header")
        got += count
    return bytes(data)


def frame(body: bytes) -> bytes:
    return _LENGTH.pack(len(body)) + body


def _readframe(sock: socket.socket) -> bytes:
    (length,) = _LENGTH.unpack(_recv_exact(sock, _LENGTH.size))
    if length > _MAX_HEADER:
        raise DataChannelError(f"header of {length} bytes is too large")
    return _recv_exact(sock, length)


def sign(key: bytes, request: dict[str, Any]) -> bytes:
    """A request as the gateway sends it: framed JSON followed by its HMAC."""
    body = json.dumps(request, sort_keys=True).encode()
    return frame(body) + hmac.new(key, body, hashlib.sha256).digest()


def reply(sock: socket.socket, answer: dict[str, Any]) -> None:
    sock.sendall(frame(json.dumps(answer).encode()))


def read_reply(sock: socket.socket) -> dict[str, Any]:
    answer = json.loads(_readframe(sock))
    if not isinstance(answer, dict):
        raise DataChannelError("the kernel's data port answered something that is not an object")
    return answer


def request(op: str, transfer_id: str, sizes: Sequence[int] = ()) -> dict[str, Any]:
    return {
        "op": op, "id": transfer_id, "sizes": list(sizes), "ts": time.time(),
        "nonce": os.urandom(16).hex(),
    }  # fmt: skip


def check_transfer_id(transfer_id: str) -> str:
    if not TRANSFER_ID.fullmatch(transfer_id):
        raise InvalidArgument(f"Invalid transfer id {transfer_id!r}: 32 lowercase hex digits")
    return transfer_id


def parse_sizes(raw: str) -> list[int]:
    """The ``X-Cumulus-Frames`` header: comma-separated byte counts of the buffers."""
    try:
        sizes = [int(s) for s in raw.split(",")] if raw.strip() else []
    except ValueError:
        raise InvalidArgument(f"Invalid X-Cumulus-Frames {raw[:100]!r}: byte counts") from None
    if len(sizes) > MAX_FRAMES or any(s < 0 for s in sizes):
        raise InvalidArgument(f"Invalid X-Cumulus-Frames: at most {MAX_FRAMES} sizes, none < 0")
    return sizes


# -- moving bytes -------------------------------------------------------------------------------


def pump(src: socket.socket, dst: socket.socket, count: int) -> None:
    """Move exactly ``count`` bytes from ``src`` to ``dst`` (blocking sockets): ``splice(2)``
    through a pipe on Linux, a copy loop elsewhere."""
    if count <= 0:
        return
    if hasattr(os, "splice"):
        _splice(src, dst, count)
    else:
        copy(src, dst, count)


def copy(src: socket.socket, dst: socket.socket, count: int) -> None:
    buffer = memoryview(bytearray(min(count, _CHUNK)))
    while count:
        got = src.recv_into(buffer, min(count, len(buffer)))
        if got == 0:
            raise DataChannelError(f"the sender stopped {count} bytes short")
        dst.sendall(buffer[:got])
        count -= got


def _splice(src: socket.socket, dst: socket.socket, count: int) -> None:
    read_end, write_end = os.pipe()
    try:
        with contextlib.suppress(ImportError, OSError, AttributeError):
            import fcntl  # the default pipe size works too, with more calls

            fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        while count:
            got = os.splice(src.fileno(), write_end, min(count, _PIPE_SIZE))
            if got == 0:
                raise DataChannelError(f"the sender stopped {count} bytes short")
            count -= got
            while got:
                got -= os.splice(read_end, dst.fileno(), got)
    finally:
        os.close(read_end)
        os.close(write_end)


def allocate(size: int) -> Any:
    """A writable buffer for ``size`` incoming bytes. Large ones come from NumPy when it is
    there (``numpy.empty``: uninitialised, and NumPy asks for transparent huge pages, so the
    socket fills it about 3x faster than a ``bytearray``, which is zeroed first, or an
    anonymous ``mmap``, measured at 256 MiB on loopback)."""
    if size < _CHUNK:
        return bytearray(size)
    try:
        import numpy
    except ImportError:  # no NumPy on this side: a zeroed buffer works, only slower
        return bytearray(size)
    return numpy.empty(size, dtype=numpy.uint8)


# -- the kernel side ---------------------------------------------------------------------------


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
        self._seen: dict[str, float] = {}  # nonces of the last MAX_AGE_S
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
        for key in [k for k, s in self._staged.items() if now - s.at > STAGE_TTL_S]:
            del self._staged[key]
        wall = time.time()
        for nonce in [n for n, at in self._seen.items() if wall - at > MAX_AGE_S]:
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
                    reply(conn, {"ok": False, "error": f"unknown operation {message['op']!r}"})
            except (OSError, CumulusError, ValueError, KeyError, TypeError) as exc:
                with contextlib.suppress(OSError):  # the peer may be gone: nothing to tell
                    reply(conn, {"ok": False, "error": str(exc) or type(exc).__name__})

    def _verified(self, conn: socket.socket) -> dict[str, Any]:
        body = _readframe(conn)
        signature = _recv_exact(conn, hashlib.sha256().digest_size)
        expected = hmac.new(self.key, body, hashlib.sha256).digest()
        if not hmac.compare_digest(signature, expected):
            raise DataChannelError("refused: bad signature")
        message = json.loads(body)
        if abs(time.time() - float(message["ts"])) > MAX_AGE_S:
            raise DataChannelError("refused: request too old")
        with self._lock:
            self._expire()
            if message["nonce"] in self._seen:
                raise DataChannelError("refused: request replayed")
            self._seen[message["nonce"]] = time.time()
        check_transfer_id(message["id"])
        if len(message["sizes"]) > MAX_FRAMES:
            raise DataChannelError(f"refused: more than {MAX_FRAMES} buffers")
        return dict(message)

    def _receive(
        self, conn: socket.socket, handover: bool, transfer_id: str, sizes: list[int]
    ) -> None:
        with self._lock:
            if transfer_id in self._staged:
                raise DataChannelError(f"transfer {transfer_id} is already staged")
        buffers = [allocate(int(size)) for size in sizes]
        reply(conn, {"ok": True})  # ready: the bytes come now
        if handover:
            with take_handover(conn) as client:
                prefix = _readframe(conn)  # what the gateway had read before the handover
                _fill(buffers, prefix, client, transfer_id)
        else:
            _fill(buffers, b"", conn, transfer_id)
        self.stage(transfer_id, buffers)
        reply(conn, {"ok": True, "bytes": sum(sizes)})

    def _send(self, conn: socket.socket, handover: bool, transfer_id: str) -> None:
        views = [memoryview(b).cast("B") for b in self.claim(transfer_id)]
        reply(conn, {"ok": True, "sizes": [v.nbytes for v in views]})
        if handover:
            with take_handover(conn) as client:
                for view in views:
                    client.sendall(view)
            reply(conn, {"ok": True})
        else:
            for view in views:
                conn.sendall(view)


def hand_over(conn: socket.socket, client: socket.socket) -> None:
    """Pass ``client`` (a connected socket) over the Unix socket ``conn``."""
    socket.send_fds(conn, [b"H"], [client.fileno()])


def take_handover(conn: socket.socket) -> socket.socket:
    data, fds, _, _ = socket.recv_fds(conn, 1, 1)
    if data != b"H" or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise DataChannelError("refused: the handover carried no connection")
    client = socket.socket(fileno=fds[0])
    client.settimeout(None)  # blocking; the gateway set SO_RCVTIMEO/SO_SNDTIMEO for stalls
    return client


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


# -- the client side ---------------------------------------------------------------------------


def _connection(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    parts = urllib.parse.urlsplit(url)
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    return cls(parts.netloc, timeout=timeout), parts.path.rstrip("/")


def _failed(response: http.client.HTTPResponse) -> CumulusError:
    body = response.read()
    try:
        message = json.loads(body).get("message") or response.reason
    except (ValueError, AttributeError):
        message = response.reason
    if response.status in (401, 403) and message == "Forbidden":
        message = "the gateway refused the token; check CUMULUS_TOKEN"
    if response.status in (409, 502):  # the kernel's end: the caller may fall back to messages
        return DataChannelError(f"data transfer refused: {message}")
    return error_for_status(response.status)(f"data transfer refused: {message}")


def upload(
    url: str,
    headers: dict[str, str],
    kernel_id: str,
    transfer_id: str,
    buffers: Sequence[Any],
    timeout: float = 300.0,
) -> None:
    """PUT ``buffers`` to the kernel's staging area through the gateway (blocking)."""
    views = [memoryview(b).cast("B") for b in buffers]
    conn, base = _connection(url, timeout)
    try:
        conn.putrequest("PUT", f"{base}/api/cumulus/kernels/{kernel_id}/data/{transfer_id}")
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(sum(v.nbytes for v in views)))
        conn.putheader("X-Cumulus-Frames", ",".join(str(v.nbytes) for v in views))
        conn.endheaders()
        with contextlib.suppress(OSError):  # refused mid-body: the answer below says why
            for view in views:
                conn.send(view)
        response = conn.getresponse()
        if response.status >= 400:
            raise _failed(response)
        response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise DataChannelError(f"uploading to kernel {kernel_id} failed: {exc}") from exc
    finally:
        conn.close()


def download(
    url: str, headers: dict[str, str], kernel_id: str, transfer_id: str, timeout: float = 300.0
) -> list[Any]:
    """GET the buffers the kernel staged under ``transfer_id`` (blocking)."""
    conn, base = _connection(url, timeout)
    try:
        conn.request(
            "GET", f"{base}/api/cumulus/kernels/{kernel_id}/data/{transfer_id}", headers=headers
        )
        response = conn.getresponse()
        if response.status >= 400:
            raise _failed(response)
        sizes = parse_sizes(response.getheader("X-Cumulus-Frames") or "")
        buffers = [allocate(size) for size in sizes]
        for buffer in buffers:
            view, got = memoryview(buffer), 0
            while got < len(buffer):
                count = response.readinto(view[got:])
                if not count:
                    raise DataChannelError(f"download from kernel {kernel_id} broke off")
                got += count
        return buffers
    except (OSError, http.client.HTTPException) as exc:
        raise DataChannelError(f"downloading from kernel {kernel_id} failed: {exc}") from exc
    finally:
        conn.close()
