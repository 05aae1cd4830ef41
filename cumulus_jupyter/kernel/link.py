"""The link to the gateway: the remote kernel behind the proxy, and the proxy's own traffic to it.

`GatewayLink` starts a remote kernel in a new partition, or adopts the one a previous proxy
process handed over on restart (its id is kept in the `Sidecar` file next to the connection
file); it reconnects the WebSocket with backoff when it drops, hands the kernel over on restart
and shuts it down otherwise. It also sends the proxy's own requests, comms and kernel_info
probes (their answers are resolved by `OwnRequests`, never shown), syncs the notebook's
files and extends the partition (``%cumulus extend``). `KernelOptions` are what the
kernelspec asks for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import websockets
from jupyter_client.session import Session

from cumulus_jupyter import archive, partitions
from cumulus_jupyter.connection import GatewayClient, GatewaySettings
from cumulus_jupyter.errors import CumulusError, Unavailable
from cumulus_jupyter.kernel.routing import OwnRequests
from cumulus_jupyter.protocol import code, env
from cumulus_jupyter.protocol.messages import Parts, content_of
from cumulus_jupyter.remote_kernel import RemoteKernel

OWN_REQUEST_TIMEOUT_S = 120
PROBE_TIMEOUT_S = 2


@dataclass(frozen=True)
class KernelOptions:
    """What the Cumulus GPU kernelspec asks for (its ``CUMULUS_*`` environment)."""

    gpu: str = ""  # an amount ("0.5", "1"); empty: the gateway's default
    duration: str = ""  # "30m"; empty: the gateway's default
    sync: bool = False  # send the notebook's directory to the remote kernel

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KernelOptions:
        environ = os.environ if environ is None else environ
        return cls(
            gpu=environ.get(env.GPU, ""),
            duration=environ.get(env.DURATION, ""),
            sync=environ.get(env.SYNC, "").lower() in ("1", "true", "yes"),
        )


class Sidecar:
    """The file that keeps the remote kernel's id across a restart (``*.cumulus.json`` next to
    the connection file): the proxy process the front end starts next adopts that kernel."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, kernel_id: str) -> None:
        self.path.write_text(json.dumps({"kernel_id": kernel_id}))

    def read(self) -> str:
        return str(json.loads(self.path.read_text())["kernel_id"])

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


class GatewayLink:
    """The remote kernel on the gateway. ``deliver(channel, parts)`` is the proxy's handler for
    what the remote kernel sends, used while the proxy waits for an answer of its own."""

    def __init__(
        self,
        settings: GatewaySettings,
        options: KernelOptions,
        sidecar: Sidecar,
        session: Session,
        own: OwnRequests,
        deliver: Callable[[str, Parts], None],
    ) -> None:
        self.settings = settings
        self.options = options
        self.sidecar = sidecar
        self.session = session
        self.own = own
        self.deliver = deliver
        self.remote: RemoteKernel | None = None
        self.client: GatewayClient | None = None

    # -- the remote kernel's lifecycle -------------------------------------------------------

    async def open(self, on_progress: Callable[[str], None]) -> RemoteKernel:
        """Adopt the kernel handed over by the previous proxy process, or start one (reporting
        the wait to ``on_progress``), and connect its WebSocket. Raises `CumulusError`."""
        if self.client is None:
            self.client = GatewayClient(self.settings)
        self.remote = await self._adopted(self.client) or await RemoteKernel.start(
            self.client, gpu=self.options.gpu or None,
            duration=self.options.duration or None, on_progress=on_progress,
        )  # fmt: skip
        self.sidecar.write(self.remote.id)
        await self.remote.connect()
        return self.remote

    async def _adopted(self, client: GatewayClient) -> RemoteKernel | None:
        """The remote kernel a previous proxy process handed over on restart, if it lives."""
        try:
            return await RemoteKernel.attach(client, self.sidecar.read())
        except (OSError, ValueError, KeyError, CumulusError):
            self.sidecar.remove()
            return None

    async def reconnect(self, remote: RemoteKernel) -> None:
        """The WebSocket dropped: come back with the same session id (the gateway buffers what
        the kernel sent meanwhile). Raises `CumulusError` when the kernel itself is gone (and
        forgets it) or the gateway stays unreachable."""
        try:
            await remote.reconnect()
        except Unavailable:
            raise
        except CumulusError:
            self.remote = None
            raise

    async def hand_over(self) -> None:
        """Restart the remote kernel in the same partition and leave its id for the proxy
        process the front end starts next; this one forgets it without shutting it down."""
        assert self.remote is not None
        await self.remote.restart()
        self.sidecar.write(self.remote.id)
        await self.remote.close()
        self.remote = None

    async def drop(self) -> None:
        """Shut the remote kernel down (its partition is released) and forget it."""
        remote, self.remote = self.remote, None
        if remote is None:
            return  # none, or handed over to the next proxy process on restart
        self.sidecar.remove()
        with contextlib.suppress(CumulusError, websockets.WebSocketException, OSError):
            await remote.shutdown()

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    async def extend(self, duration: str) -> str:
        """Add ``duration`` to the remote kernel's partition; the line that says until when."""
        if self.remote is None or not self.remote.cumulus.get("partition_id"):
            raise Unavailable("The kernel has no partition to extend yet")
        partition_id = self.remote.cumulus["partition_id"]
        extended = await partitions.extend(self.remote.client, partition_id, duration)
        return partitions.describe(extended, duration)

    # -- the proxy's own traffic -------------------------------------------------------------

    def _message(self, msg_type: str, content: dict[str, Any]) -> tuple[str, Parts]:
        msg = self.session.msg(msg_type, content)
        parts = [
            self.session.pack(msg[k]) for k in ("header", "parent_header", "metadata", "content")
        ]
        return str(msg["header"]["msg_id"]), parts

    async def request(self, msg_type: str, content: dict[str, Any]) -> Parts:
        """A shell request of the proxy's own; its reply is not shown to the front end."""
        assert self.remote is not None
        msg_id, parts = self._message(msg_type, content)
        reply = self.own.request(msg_id)
        await self.remote.send("shell", parts)
        return await asyncio.wait_for(self._deliver_until(reply), OWN_REQUEST_TIMEOUT_S)

    async def comm(self, target: str, data: dict[str, Any], buffers: Parts) -> dict[str, Any]:
        """Open a comm to ``target`` with buffers; the first message back is the answer."""
        assert self.remote is not None
        comm_id = uuid.uuid4().hex
        answer = self.own.comm(comm_id)
        _, parts = self._message(
            "comm_open", {"comm_id": comm_id, "target_name": target, "data": data}
        )
        await self.remote.send("shell", [*parts, *buffers])
        reply = await asyncio.wait_for(self._deliver_until(answer), OWN_REQUEST_TIMEOUT_S)
        return dict(content_of(reply)["data"])

    async def _deliver_until(self, done: asyncio.Future[Parts]) -> Parts:
        # the relay loop waits for `ready`, which is not set yet: read the socket here
        assert self.remote is not None
        while not done.done():
            channel, parts = await self.remote.recv()
            self.deliver(channel, parts)
        return done.result()

    async def probe_until_ready(self, attempts: int = 60) -> None:
        """Ask the restarted remote kernel for kernel_info until its iopub answers (the
        gateway's iopub subscription to the new process comes up after its shell: output
        published before would be lost, and a cell would never see its idle)."""
        for _ in range(attempts):
            if self.remote is None:
                break
            msg_id, parts = self._message("kernel_info_request", {})
            answer = self.own.probe(msg_id)
            try:
                await self.remote.send("shell", parts)
                await asyncio.wait_for(answer, PROBE_TIMEOUT_S)
                break
            except (TimeoutError, websockets.ConnectionClosed):
                self.own.forget(msg_id)

    async def sync_files(self) -> str:
        """Send the notebook's directory (this process's working directory) to the remote
        kernel's work directory, which becomes its working directory; the line that says how
        it went. Size-capped, traversal-safe on the remote side; a failure is reported, not
        raised."""
        limit = int(float(os.environ.get(env.SYNC_MAX_MB, "100")) * 2**20)
        try:
            data, summary = archive.pack(Path.cwd(), limit)
            await self.request("execute_request", {
                "code": code.REGISTER, "silent": True, "store_history": False,
                "user_expressions": {}, "allow_stdin": False, "stop_on_error": False,
            })  # fmt: skip
            result = await self.comm(code.SYNC_TARGET, {"max_bytes": limit}, [data])
        except (CumulusError, OSError, TimeoutError) as exc:
            return f"could not sync {Path.cwd()}: {exc}"
        if result.get("ok"):
            return f"synced {summary} from {Path.cwd()} to {result['path']}"
        return f"sync refused: {result.get('error')}"
