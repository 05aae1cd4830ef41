"""The kernel's data port: how the gateway and the agent move bulk bytes beside messages.

Small values ride in comm messages over the kernel WebSocket. Large ones (over
`STAGE_THRESHOLD`) take three hops that each move bytes and nothing else:

    client ──HTTP PUT/GET /api/cumulus/kernels/{id}/data/{transfer}──▶ gateway
    gateway ──TCP or a Unix socket, one signed request per transfer──▶ the kernel's data port

Wire format gateway → kernel: ``u32 length | JSON | HMAC-SHA256(JSON)`` (`sign`, `verified`);
kernel → gateway: ``u32 length | JSON`` (`reply`, `read_reply`), then the bytes for a ``get``.
The JSON is a `request`: ``op`` (``put`` or ``get``), transfer ``id``, buffer ``sizes``, a
timestamp and a nonce (the kernel refuses stale and replayed requests). Between a gateway and a
kernel on the same host, the client's connection itself is handed over (`hand_over`,
`take_handover`) and the bytes go from the client into the kernel in one hop.

The kernel side is `cumulus_jupyter.agent.dataserver`, the gateway's `gateway.handlers.data`,
the client's `cumulus_jupyter.datapath`.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import socket
import struct
import time
from collections.abc import Sequence
from typing import Any

from cumulus_jupyter.errors import DataChannelError, InvalidArgument

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


def recv_exact(sock: socket.socket, n: int) -> bytes:
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


def read_frame(sock: socket.socket) -> bytes:
    (length,) = _LENGTH.unpack(recv_exact(sock, _LENGTH.size))
    if length > _MAX_HEADER:
        raise DataChannelError(f"header of {length} bytes is too large")
    return recv_exact(sock, length)


def sign(key: bytes, request: dict[str, Any]) -> bytes:
    """A request as the gateway sends it: framed JSON followed by its HMAC."""
    body = json.dumps(request, sort_keys=True).encode()
    return frame(body) + hmac.new(key, body, hashlib.sha256).digest()


SIGNATURE_BYTES = hashlib.sha256().digest_size


def verified(key: bytes, sock: socket.socket) -> dict[str, Any]:
    """The request `sign` framed, read from ``sock``, if its HMAC is right under ``key``."""
    body = read_frame(sock)
    signature = recv_exact(sock, SIGNATURE_BYTES)
    expected = hmac.new(key, body, hashlib.sha256).digest()
    if not hmac.compare_digest(signature, expected):
        raise DataChannelError("refused: bad signature")
    message = json.loads(body)
    if not isinstance(message, dict):
        raise DataChannelError("refused: the request is not an object")
    return message


def reply(sock: socket.socket, answer: dict[str, Any]) -> None:
    sock.sendall(frame(json.dumps(answer).encode()))


def read_reply(sock: socket.socket) -> dict[str, Any]:
    answer = json.loads(read_frame(sock))
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
