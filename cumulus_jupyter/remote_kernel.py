"""`RemoteKernel`: one kernel on a gateway, the async core every client drives.

It starts (or attaches to) a kernel through the REST API, showing what it waits for while the
partition is queued, then speaks the Jupyter protocol over the gateway's WebSocket in the
``v1.kernel.websocket.jupyter.org`` framing: each message travels as its raw JSON parts plus
binary buffers, so bulk data is never base64'd and nothing is re-encoded on the way.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import websockets

from cumulus_jupyter import tls
from cumulus_jupyter.connection import GatewayClient
from cumulus_jupyter.errors import CumulusError, Unauthenticated, Unavailable
from cumulus_jupyter.protocol import env as names
from cumulus_jupyter.protocol.messages import V1, Parts, decode_v1, encode_v1


def describe(cumulus: dict[str, Any]) -> str:
    left = int(cumulus.get("seconds_left", 0))
    return (
        f"partition {cumulus['partition_id']} on {cumulus['device']} ready "
        f"({cumulus['amount']:g} GPU, {cumulus['memory_bytes'] / 2**30:.1f} GiB, "
        f"{left // 60}m{left % 60:02d}s left)"
    )


#: seconds between tries to reconnect a dropped kernel WebSocket (about a minute in all)
RECONNECT_BACKOFF_S = (0.5, 1, 2, 4, 8, 15, 30)


def estimated_start(entry: dict[str, Any]) -> str:
    """``", estimated start 11:42:07 (in 25 min)"`` from a queue entry's ``eta_s`` (seconds
    from now, planned by the gateway from the partitions' expiries); ``""`` when unknown."""
    eta = entry.get("eta_s")
    if not isinstance(eta, int | float) or isinstance(eta, bool):
        return ""
    at = time.strftime("%H:%M:%S", time.localtime(time.time() + eta))
    after = f"{eta:.0f} s" if eta < 120 else f"{eta / 60:.0f} min"
    return f", estimated start {at} (in {after})"


def own_entry(queue: list[dict[str, Any]], tag: str) -> dict[str, Any]:
    """This client's entry of a ``/api/cumulus/queue`` listing: the one with its request's
    ``tag``; the last one when none carries it (a gateway without tags)."""
    return next((entry for entry in queue if tag and entry.get("tag") == tag), queue[-1])


class RemoteKernel:
    """A kernel on the gateway: start, connect, send, receive, interrupt, restart, shut down."""

    def __init__(self, client: GatewayClient, model: dict[str, Any]) -> None:
        self.client = client
        self.model = model
        self.session_id = uuid.uuid4().hex  # stable across reconnects: the gateway buffers
        self._ws: Any = None

    @property
    def id(self) -> str:
        return str(self.model["id"])

    @property
    def cumulus(self) -> dict[str, Any]:
        return dict(self.model.get("cumulus") or {})

    @classmethod
    async def start(
        cls,
        client: GatewayClient,
        *,
        gpu: str | float | None = None,
        duration: str | int | None = None,
        name: str = "cumulus-gpu",
        env: dict[str, str] | None = None,
        launch_timeout: float = 600,
        on_progress: Callable[[str], None] = lambda line: None,
    ) -> RemoteKernel:
        """Ask the gateway for a kernel in a new partition; report queue position meanwhile."""
        await client.check()
        request_env = dict(env or {})
        if gpu is not None:
            request_env["KERNEL_GPU"] = str(gpu)
        if duration is not None:
            request_env["KERNEL_DURATION"] = str(duration)
        request_env.setdefault("KERNEL_LAUNCH_TIMEOUT", str(int(launch_timeout)))
        tag = request_env.setdefault(names.KERNEL_REQUEST_TAG, uuid.uuid4().hex)
        started = time.monotonic()
        creating = asyncio.ensure_future(
            client.request(
                "POST", "/api/kernels", json={"name": name, "env": request_env},
                timeout=launch_timeout + 30,
            )
        )  # fmt: skip
        try:
            while not creating.done():
                done, _ = await asyncio.wait({creating}, timeout=1.0)
                if not done:
                    waited = time.monotonic() - started
                    on_progress(await cls._waiting_line(client, waited, tag))
            model = creating.result()
        finally:
            if not creating.done():
                creating.cancel()
        kernel = cls(client, model)
        on_progress(describe(kernel.cumulus) + f" after {time.monotonic() - started:.1f} s")
        return kernel

    @staticmethod
    async def _waiting_line(client: GatewayClient, waited: float, tag: str = "") -> str:
        try:
            queue = await client.request("GET", "/api/cumulus/queue")
        except CumulusError:
            queue = []
        if queue:
            head = own_entry(queue, tag)
            return (
                f"waiting for a partition: queue position {head['position']} "
                f"({head['waiting_for']}){estimated_start(head)}, waited {waited:.0f} s"
            )
        return f"starting the remote kernel, waited {waited:.0f} s"

    @classmethod
    async def attach(cls, client: GatewayClient, kernel_id: str) -> RemoteKernel:
        return cls(client, await client.request("GET", f"/api/kernels/{kernel_id}"))

    async def connect(self) -> None:
        url = (
            f"{self.client.settings.ws_url}/api/kernels/{self.id}/channels"
            f"?session_id={self.session_id}"
        )
        try:
            self._ws = await websockets.connect(
                url,
                subprotocols=[V1],  # type: ignore[list-item]
                additional_headers=self.client.settings.headers,
                max_size=None,
                ping_interval=20,
                # jupyter_server reads no frame (a ping neither) until the kernel answered its
                # kernel_info, up to its kernel_info_timeout (60 s): a slow kernel on a loaded
                # host is not a dead link
                open_timeout=120,
                ping_timeout=120,
                compression=None,
                ssl=self.client.settings.ssl_context,
            )
        except websockets.InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                raise Unauthenticated(
                    f"The gateway refused the WebSocket for kernel {self.id}"
                ) from exc
            await self.client.request("GET", f"/api/kernels/{self.id}")  # raises 404/410 reason
            raise Unavailable(
                f"The gateway refused the WebSocket for kernel {self.id}: {status}"
            ) from exc
        except (OSError, websockets.WebSocketException) as exc:
            raise Unavailable(
                tls.refusal(exc, url) or f"Cannot open the kernel WebSocket at {url}: {exc}"
            ) from exc

    async def reconnect(self) -> None:
        """The WebSocket dropped: come back with the same session id (the gateway buffers what
        the kernel sent meanwhile), retrying with backoff (`RECONNECT_BACKOFF_S`, about a
        minute) while the gateway cannot be reached. Raises the gateway's `CumulusError` when
        the kernel itself is gone, `Unavailable` when the gateway stays unreachable."""
        for delay in RECONNECT_BACKOFF_S:
            try:
                await self.client.request("GET", f"/api/kernels/{self.id}")
                await self.connect()
            except Unavailable:
                await asyncio.sleep(delay)
                continue
            return
        raise Unavailable(f"Lost the connection to the gateway at {self.client.settings.url}")

    @property
    def connected(self) -> bool:
        return self._ws is not None

    async def send(self, channel: str, parts: Parts) -> None:
        await self._ws.send(encode_v1(channel, parts))

    async def recv(self) -> tuple[str, Parts]:
        frame = await self._ws.recv()
        return decode_v1(frame)

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
            self._ws = None

    async def interrupt(self) -> None:
        await self.client.request("POST", f"/api/kernels/{self.id}/interrupt")

    async def restart(self) -> None:
        self.model = await self.client.request(
            "POST", f"/api/kernels/{self.id}/restart", timeout=120
        )

    async def shutdown(self) -> None:
        await self.close()
        await self.client.request("DELETE", f"/api/kernels/{self.id}", timeout=120)
