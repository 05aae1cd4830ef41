"""The client's end of the data path: large variables to and from a kernel over HTTP(S).

``PUT``/``GET /api/cumulus/kernels/{id}/data/{transfer}`` on the gateway, with ``http.client``
reading straight into the destination buffers (`cumulus_jupyter.protocol.dataport` has the
path's design and the gateway-to-kernel wire format). Any refusal or break is a
`DataChannelError`, after which the caller sends the values in messages instead; other
statuses map to the error tree by `error_for_status`.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import ssl
import urllib.parse
from collections.abc import Sequence
from typing import Any

from cumulus_jupyter import tls
from cumulus_jupyter.errors import CumulusError, DataChannelError, error_for_status
from cumulus_jupyter.protocol import dataport

STAGE_THRESHOLD = dataport.STAGE_THRESHOLD


def _connection(
    url: str, timeout: float, context: ssl.SSLContext | None
) -> tuple[http.client.HTTPConnection, str]:
    parts = urllib.parse.urlsplit(url)
    base = parts.path.rstrip("/")
    if parts.scheme == "https":  # the same verifying context as the REST client's
        secure = context or tls.client_context()
        return http.client.HTTPSConnection(parts.netloc, timeout=timeout, context=secure), base
    return http.client.HTTPConnection(parts.netloc, timeout=timeout), base


def _failed(response: http.client.HTTPResponse) -> CumulusError:
    body = response.read()
    try:
        message = json.loads(body).get("message") or response.reason
    except (ValueError, AttributeError):
        message = response.reason
    if response.status in (401, 403) and message == "Forbidden":
        message = "the gateway refused the token; check CUMULUS_TOKEN"
    # a 502 (DataChannelError) is the kernel's end: the caller falls back to messages
    return error_for_status(response.status)(f"data transfer refused: {message}")


def upload(
    url: str,
    headers: dict[str, str],
    kernel_id: str,
    transfer_id: str,
    buffers: Sequence[Any],
    timeout: float = 300.0,
    context: ssl.SSLContext | None = None,
) -> None:
    """PUT ``buffers`` to the kernel's staging area through the gateway (blocking)."""
    views = [memoryview(b).cast("B") for b in buffers]
    conn, base = _connection(url, timeout, context)
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
    url: str,
    headers: dict[str, str],
    kernel_id: str,
    transfer_id: str,
    timeout: float = 300.0,
    context: ssl.SSLContext | None = None,
) -> list[Any]:
    """GET the buffers the kernel staged under ``transfer_id`` (blocking)."""
    conn, base = _connection(url, timeout, context)
    try:
        conn.request(
            "GET", f"{base}/api/cumulus/kernels/{kernel_id}/data/{transfer_id}", headers=headers
        )
        response = conn.getresponse()
        if response.status >= 400:
            raise _failed(response)
        sizes = dataport.parse_sizes(response.getheader("X-Cumulus-Frames") or "")
        buffers = [dataport.allocate(size) for size in sizes]
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
