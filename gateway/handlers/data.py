"""``/api/cumulus/kernels/{id}/data/{transfer}``: bulk bytes between a client and a kernel.

``PUT`` stages the request body (the buffers named by ``X-Cumulus-Frames``) in the kernel;
``GET`` returns the buffers the kernel staged for a pull. See `cumulus_jupyter.protocol.dataport`
for the whole path. The request is authenticated and scoped like every kernel request; the gateway
then signs a request to the kernel's data port with the kernel's own key, waits for the kernel
to accept it, takes the client's socket from tornado and moves the body kernel-side with
``splice(2)``: the bytes never enter this process's memory, and the event loop never sees them.
Over HTTPS the client's socket carries TLS records, which neither ``splice`` nor a kernel handed
the socket could read: the gateway then takes tornado's TLS socket itself and decrypts and
relays the body in a worker thread (``dataport.copy``), over the kernel's TCP data port.

A kernel with no data port, or whose port is not listening, refuses or fails, is
`DataChannelError` (502): the client then sends the values in messages. A pull of nothing staged
is `NotFound` (404); a transfer over ``max_transfer_bytes`` is `TooLarge` (413).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
from dataclasses import dataclass
from typing import Any

from tornado import iostream, web

from cumulus_jupyter.errors import (
    CumulusError,
    DataChannelError,
    InvalidArgument,
    NotFound,
    TooLarge,
    Unauthenticated,
)
from cumulus_jupyter.protocol import dataport
from gateway import metrics
from gateway.handlers.base import CumulusHandler

_CONNECT_TIMEOUT_S = 10.0
_STALL_TIMEOUT_S = 120.0  # a transfer that moves no byte for this long is cut off


def _stall_timeout(sock: socket.socket) -> None:
    sock.settimeout(None)  # blocking, as splice(2) needs; stalls end by SO_*TIMEO instead
    seconds = int(_STALL_TIMEOUT_S)
    value = struct.pack("ll", seconds, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


def _http_head(status: int, reason: str, content_type: str, length: int, extra: str = "") -> bytes:
    """The head of a response written on a connection taken from tornado (closed after)."""
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\n{extra}Connection: close\r\n\r\n"
    ).encode()


def _http_response(status: int, reason: str, body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    return _http_head(status, reason, "application/json", len(data)) + data


@web.stream_request_body
class DataHandler(CumulusHandler):
    """Both directions are served from `prepare`: the body must not reach tornado's buffers."""

    SUPPORTED_METHODS = ("GET", "PUT")  # tornado answers any other with 405

    async def prepare(self) -> None:  # type: ignore[override]
        await super().prepare()
        if not self.current_user:
            raise Unauthenticated("The data path needs the gateway's token or a user's")
        kernel_id, transfer_id = self.path_kwargs["kernel_id"], self.path_kwargs["transfer_id"]
        self.check_kernel_access(kernel_id)
        dataport.check_transfer_id(transfer_id)
        # the socket itself, not request.protocol (which X-Scheme from a proxy can set)
        stream = getattr(self.request.connection, "stream", None)
        self._tls = isinstance(stream, iostream.SSLIOStream)
        if self.request.method == "PUT":
            await self._put(kernel_id, transfer_id)
        else:
            await self._get(kernel_id, transfer_id)

    # -- the kernel's end ------------------------------------------------------------------------

    async def _open_kernel(self, kernel_id: str, message: dict[str, Any]) -> _KernelEnd:
        """Send the signed request to the kernel's data port and wait for it to accept:
        through its Unix socket when the kernel is on this host (the client's connection will
        be handed over), else, and always for a client on TLS, over TCP (the bytes will be
        relayed)."""
        km = self.kernels
        if kernel_id not in km:
            raise NotFound(f"No kernel {kernel_id}")
        kernel = km.get_kernel(kernel_id)
        provisioner = kernel.provisioner
        port = getattr(provisioner, "data_port", None)
        unix_path = None if self._tls else getattr(provisioner, "data_socket", None)
        if not port:
            raise DataChannelError(f"Kernel {kernel_id} has no data port; send through messages")
        # over ipc, ``ip`` is the path of its ZMQ sockets; its data port is on loopback
        host = "127.0.0.1" if kernel.transport == "ipc" else kernel.ip
        key = kernel.session.key

        def connect() -> _KernelEnd:
            try:
                if unix_path and os.path.exists(unix_path):
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    sock.settimeout(_CONNECT_TIMEOUT_S)
                    sock.connect(unix_path)
                else:
                    sock = socket.create_connection((host, port), timeout=_CONNECT_TIMEOUT_S)
            except OSError as exc:
                raise DataChannelError(
                    f"Kernel {kernel_id} is not listening on its data port ({exc.strerror}); "
                    "send through messages"
                ) from exc
            try:
                sock.sendall(dataport.sign(key, message))
                answer = dataport.read_reply(sock)
            except (OSError, CumulusError, ValueError) as exc:
                sock.close()
                raise DataChannelError(f"Kernel {kernel_id}'s data port failed: {exc}") from exc
            if not answer.get("ok"):
                sock.close()
                refusal = f"Kernel {kernel_id} refused: {answer.get('error')}"
                if "no data staged" in str(answer.get("error")):
                    raise NotFound(refusal)
                raise DataChannelError(refusal)
            _stall_timeout(sock)
            return _KernelEnd(sock, answer)

        return await asyncio.to_thread(connect)

    def _take_client(self, stream: Any) -> socket.socket:
        """The client's socket, out of tornado's hands, blocking, for the relay's thread. A TLS
        socket cannot be duplicated: the event loop stops watching it instead (tornado's
        buffer is empty by now) and the relay closes it."""
        if self._tls:
            stream.io_loop.remove_handler(stream.socket)
            client: socket.socket = stream.socket
        else:
            client = socket.socket(fileno=stream.socket.dup().detach())
            stream.close()
        _stall_timeout(client)
        return client

    def _move(self, src: socket.socket, dst: socket.socket, count: int) -> None:
        """``splice(2)`` between plain sockets; through this process for a TLS client."""
        (dataport.copy if self._tls else dataport.pump)(src, dst, count)

    # -- the two directions ----------------------------------------------------------------------

    async def _put(self, kernel_id: str, transfer_id: str) -> None:
        sizes = dataport.parse_sizes(self.request.headers.get("X-Cumulus-Frames", ""))
        total = sum(sizes)
        declared = self.request.headers.get("Content-Length")
        if declared is None or int(declared) != total:
            raise InvalidArgument("Content-Length must equal the sum of X-Cumulus-Frames")
        self._check_cap(total)
        kernel = await self._open_kernel(kernel_id, dataport.request("put", transfer_id, sizes))
        stream = self.detach()
        try:
            first = await stream.read_bytes(total, partial=True) if total else b""
            client = self._take_client(stream)
        except Exception:
            kernel.sock.close()
            stream.close()
            raise

        def relay() -> None:
            with client, kernel.sock:
                try:
                    if kernel.handover:
                        dataport.hand_over(kernel.sock, client)
                        kernel.sock.sendall(dataport.frame(first))
                    else:
                        kernel.sock.sendall(first)
                        self._move(client, kernel.sock, total - len(first))
                    answer = dataport.read_reply(kernel.sock)
                except (OSError, CumulusError, ValueError) as exc:
                    answer = {"ok": False, "error": f"transfer broke off: {exc}"}
                if answer.get("ok"):
                    metrics.TRANSFERRED.labels(direction="push").inc(total)
                    client.sendall(_http_response(200, "OK", {"bytes": total}))
                else:
                    self.log.warning("push to kernel %s failed: %s", kernel_id, answer["error"])
                    client.sendall(_http_response(502, "Bad Gateway", {"message": answer["error"]}))

        await self._relay(relay)

    async def _get(self, kernel_id: str, transfer_id: str) -> None:
        kernel = await self._open_kernel(kernel_id, dataport.request("get", transfer_id))
        sizes = [int(s) for s in kernel.answer.get("sizes", [])]
        total = sum(sizes)
        try:
            self._check_cap(total)
            client = self._take_client(self.detach())
        except Exception:
            kernel.sock.close()
            raise

        def relay() -> None:
            with client, kernel.sock:
                frames = f"X-Cumulus-Frames: {','.join(map(str, sizes))}\r\n"
                client.sendall(_http_head(200, "OK", "application/octet-stream", total, frames))
                if kernel.handover:
                    dataport.hand_over(kernel.sock, client)
                    dataport.read_reply(kernel.sock)  # the kernel wrote the body itself
                else:
                    self._move(kernel.sock, client, total)
                metrics.TRANSFERRED.labels(direction="pull").inc(total)

        await self._relay(relay)

    def _check_cap(self, total: int) -> None:
        cap = self.services.settings.max_transfer_bytes
        if cap and total > cap:
            raise TooLarge(
                f"This transfer is {total / 2**20:.0f} MiB; the gateway accepts at most "
                f"{cap / 2**20:.0f} MiB (CumulusGateway.max_transfer_bytes)"
            )

    async def _relay(self, work: Any) -> None:
        try:
            await asyncio.to_thread(work)
        except (OSError, CumulusError) as exc:  # the response has started: only the log can say
            self.log.warning("data transfer %s broke off: %s", self.request.path, exc)


@dataclass
class _KernelEnd:
    """A connection to a kernel's data port that accepted a request."""

    sock: socket.socket
    answer: dict[str, Any]

    @property
    def handover(self) -> bool:
        return self.sock.family == socket.AF_UNIX


default_handlers = [  # loaded by jupyter_server as an extra service
    (r"/api/cumulus/kernels/(?P<kernel_id>[\w-]+)/data/(?P<transfer_id>[^/]+)", DataHandler),
]
