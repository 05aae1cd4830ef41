"""The Cumulus GPU kernel: a local proxy that relays a Jupyter front end to a remote kernel.

``python -m cumulus_jupyter.kernel -f CONNECTION_FILE`` binds the five ZMQ channels the front end
expects and relays every message to a kernel on the gateway (through `RemoteKernel`'s
WebSocket), re-signing on the way back with the local session key. Messages travel as their raw
JSON parts: nothing is decoded but the headers needed for routing.

It answers ``kernel_info_request`` at once, even while the partition is being allocated or
queued, and shows that progress in the first cell's output. Interrupt and restart go to the
gateway's REST API (same partition); shutdown releases the partition. When the partition expires
or the gateway cannot be reached, cells say why in the notebook, and "restart kernel" asks for a
new partition.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import sys
import threading
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

import websockets
import zmq
import zmq.asyncio
from jupyter_client.session import Session

from cumulus_jupyter import archive
from cumulus_jupyter.connection import GatewayClient, GatewaySettings
from cumulus_jupyter.errors import CumulusError, KernelDied, PartitionExpired, Unavailable
from cumulus_jupyter.protocol.messages import Parts, header_of, parent_of
from cumulus_jupyter.remote_kernel import RemoteKernel

DELIM = b"<IDS|MSG>"
ROUTED = ("shell", "control", "stdin")
MAX_ROUTES = 10_000
RECONNECT_BACKOFF_S = (0.5, 1, 2, 4, 8, 15, 30)

LANGUAGE_INFO = {
    "name": "python",
    "version": platform.python_version(),
    "mimetype": "text/x-python",
    "file_extension": ".py",
    "pygments_lexer": "ipython3",
    "codemirror_mode": {"name": "ipython", "version": 3},
    "nbconvert_exporter": "python",
}


class ProxyKernel:
    def __init__(
        self,
        connection: dict[str, Any],
        settings: GatewaySettings,
        options: dict[str, str],
        sidecar: Path,
    ) -> None:
        self.connection = connection
        self.sidecar = sidecar  # the remote kernel's id, kept across a restart
        self.settings = settings
        self.options = options
        self.session = Session(
            key=connection["key"].encode(),
            signature_scheme=connection.get("signature_scheme", "hmac-sha256"),
            username="cumulus",
        )
        self.context = zmq.asyncio.Context()
        self.sockets: dict[str, zmq.asyncio.Socket] = {}
        self.routes: OrderedDict[str, list[bytes]] = OrderedDict()
        self.remote: RemoteKernel | None = None
        self.client: GatewayClient | None = None
        self.ready = asyncio.Event()
        self.accepting = asyncio.Event()  # cleared while a restarted remote kernel comes up
        self.accepting.set()
        self.failure: CumulusError | None = None
        self.pending: list[tuple[str, Parts]] = []
        self.progress_parents: list[dict[str, Any]] = []
        self.stopping = asyncio.Event()
        self.background: set[asyncio.Future[None]] = set()
        self.announcement = ""  # "partition p-... on gpu0 ready", for a first cell that missed it
        self.busy_sent: set[str] = set()  # requests we said busy for before the remote did
        self.internal: dict[str, asyncio.Future[Parts]] = {}  # the proxy's own requests/comms
        self.own_comms: set[str] = set()
        self.probes: set[str] = set()  # kernel_info probes: answered by their iopub, not shell
        self.outstanding: dict[str, tuple[list[bytes], dict[str, Any]]] = {}  # unanswered executes

    # -- local sockets -------------------------------------------------------------------------

    def _address(self, channel: str) -> str:
        transport, ip = self.connection.get("transport", "tcp"), self.connection["ip"]
        port = self.connection[f"{channel}_port"]
        return f"{transport}://{ip}:{port}" if transport == "tcp" else f"{transport}://{ip}-{port}"

    def bind(self) -> None:
        for channel in ROUTED:
            sock = self.context.socket(zmq.ROUTER)
            sock.linger = 0
            sock.bind(self._address(channel))
            self.sockets[channel] = sock
        iopub = self.context.socket(zmq.PUB)
        iopub.linger = 0
        iopub.bind(self._address("iopub"))
        self.sockets["iopub"] = iopub
        threading.Thread(target=self._heartbeat, daemon=True).start()

    def _heartbeat(self) -> None:
        # the proxy's own liveness: echo, as ipykernel does
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        hb: zmq.Socket[bytes] = context.socket(zmq.REP)
        hb.linger = 0
        hb.bind(self._address("hb"))
        with contextlib.suppress(zmq.ContextTerminated):
            zmq.proxy(hb, hb)

    def sign(self, parts: Parts) -> bytes:
        return self.session.sign(parts[:4])

    def send_raw(self, channel: str, idents: list[bytes], parts: Parts) -> None:
        self.sockets[channel].send_multipart([*idents, DELIM, self.sign(parts), *parts], copy=False)

    def publish_raw(self, parts: Parts) -> None:
        msg_type = header_of(parts).get("msg_type", "")
        topic = f"kernel.{self.remote.id if self.remote else 'cumulus'}.{msg_type}".encode()
        self.send_raw("iopub", [topic], parts)

    def reply(
        self,
        channel: str,
        idents: list[bytes],
        parent: dict[str, Any],
        msg_type: str,
        content: dict[str, Any],
    ) -> None:
        self.session.send(self.sockets[channel], msg_type, content, parent=parent, ident=idents)

    def publish(self, msg_type: str, content: dict[str, Any], parent: dict[str, Any]) -> None:
        self.session.send(
            self.sockets["iopub"],
            msg_type,
            content,
            parent=parent,
            ident=[f"kernel.cumulus.{msg_type}".encode()],
        )

    def status(self, state: str, parent: dict[str, Any]) -> None:
        self.publish("status", {"execution_state": state}, parent)

    def stderr(self, text: str, parent: dict[str, Any]) -> None:
        self.publish("stream", {"name": "stderr", "text": text}, parent)

    # -- from the front end --------------------------------------------------------------------

    async def serve(self, channel: str) -> None:
        sock = self.sockets[channel]
        while True:
            frames = await sock.recv_multipart()
            idents, rest = self.session.feed_identities(frames)
            rest = [part if isinstance(part, bytes) else part.bytes for part in rest]
            if len(rest) < 5 or (self.session.auth and self.sign(rest[1:5]) != rest[0]):
                continue  # unsigned or malformed: ignore, as ipykernel does
            parts = rest[1:]
            header = header_of(parts)
            self.routes[header.get("msg_id", "")] = idents
            if channel == "shell" and header.get("msg_type") == "execute_request":
                self.outstanding[header.get("msg_id", "")] = (idents, header)
            while len(self.routes) > MAX_ROUTES:
                self.routes.popitem(last=False)
            await self.handle(channel, idents, header, parts)

    async def handle(
        self, channel: str, idents: list[bytes], header: dict[str, Any], parts: Parts
    ) -> None:
        msg_type = header.get("msg_type", "")
        if msg_type == "kernel_info_request" and not self.ready.is_set():
            self.kernel_info(channel, idents, header)
        elif msg_type == "interrupt_request":
            await self.interrupt(channel, idents, header)
        elif msg_type == "shutdown_request":
            await self.shutdown(channel, idents, header, json.loads(parts[3]))
        elif self.failure is not None:
            self.fail(channel, idents, header, self.failure)
        elif not self.ready.is_set() or not self.accepting.is_set():
            self.pending.append((channel, parts))
            if msg_type == "execute_request":
                self.own_busy(header)
                self.progress_parents.append(header)
        else:
            if msg_type == "execute_request" and self.announcement:
                self.own_busy(header)
                self.stderr(self.announcement, header)  # the first cell says where it runs
                self.announcement = ""
            await self.forward(channel, parts)

    def own_busy(self, header: dict[str, Any]) -> None:
        """Say busy now (progress lines follow) and drop the remote kernel's own busy for the
        same request later, so the front end sees exactly one busy ... idle."""
        self.status("busy", header)
        self.busy_sent.add(header.get("msg_id", ""))

    async def forward(self, channel: str, parts: Parts) -> None:
        assert self.remote is not None
        try:
            await self.remote.send(channel, parts)
        except websockets.ConnectionClosed:
            self.pending.append((channel, parts))  # sent once the connection is back

    def kernel_info(self, channel: str, idents: list[bytes], parent: dict[str, Any]) -> None:
        self.status("busy", parent)
        gpu = self.options.get("gpu") or "default"
        self.reply(channel, idents, parent, "kernel_info_reply", {
            "status": "ok", "protocol_version": "5.3", "implementation": "cumulus",
            "implementation_version": "0.1.0", "language_info": LANGUAGE_INFO,
            "banner": f"Cumulus GPU kernel ({gpu} GPU) on {self.settings.url}", "help_links": [],
        })  # fmt: skip
        self.status("idle", parent)

    def fail(
        self, channel: str, idents: list[bytes], parent: dict[str, Any], exc: CumulusError
    ) -> None:
        name, text = type(exc).__name__, str(exc)
        msg_type = parent.get("msg_type", "")
        error: dict[str, Any] = {
            "status": "error", "ename": name, "evalue": text, "traceback": [f"{name}: {text}"]
        }  # fmt: skip
        self.status("busy", parent)
        if msg_type == "execute_request":
            self.publish("error", {k: error[k] for k in ("ename", "evalue", "traceback")}, parent)
            error["execution_count"] = 0
        if msg_type.endswith("_request"):
            self.reply(channel, idents, parent, msg_type.replace("_request", "_reply"), error)
        self.status("idle", parent)

    async def interrupt(self, channel: str, idents: list[bytes], parent: dict[str, Any]) -> None:
        content: dict[str, Any] = {"status": "ok"}
        if self.remote is not None and self.failure is None:
            try:
                await self.remote.interrupt()
            except CumulusError as exc:
                content = {
                    "status": "error",
                    "ename": type(exc).__name__,
                    "evalue": str(exc),
                    "traceback": [],
                }
        self.reply(channel, idents, parent, "interrupt_reply", content)

    async def shutdown(
        self, channel: str, idents: list[bytes], parent: dict[str, Any], content: dict[str, Any]
    ) -> None:
        """Shutdown ends the remote kernel and its partition. Restart restarts the remote kernel
        in the same partition and leaves its id for the proxy process the front end starts next
        (same connection file); after an expiry, restart means a new partition."""
        restart = bool(content.get("restart"))
        if restart and self.failure is None and self.remote is not None:
            try:
                await self.remote.restart()
                self.sidecar.write_text(json.dumps({"kernel_id": self.remote.id}))
                await self.remote.close()
                self.remote = None  # handed over, not shut down
            except CumulusError:
                await self._drop_remote()
        else:
            await self._drop_remote()
        self.reply(channel, idents, parent, "shutdown_reply", {"status": "ok", "restart": restart})
        self.stopping.set()

    async def _drop_remote(self) -> None:
        """Shut the remote kernel down (its partition is released) and forget it."""
        remote, self.remote = self.remote, None
        if remote is None:
            return  # none, or handed over to the next proxy process on restart
        self.sidecar.unlink(missing_ok=True)
        with contextlib.suppress(CumulusError, websockets.WebSocketException, OSError):
            await remote.shutdown()

    # -- the remote side -----------------------------------------------------------------------

    def progress(self, line: str, keep: bool = False) -> None:
        """Show a line in the cells waiting for the kernel; a line worth keeping ("ready",
        "synced") is kept for the first cell when none is waiting yet. Lines kept before a cell
        came go out first, so the cell reads them in order."""
        self._announce_to_waiting()
        for parent in self.progress_parents:
            self.stderr(f"Cumulus: {line}\n", parent)
        if not self.progress_parents and (keep or "ready" in line):
            self.announcement += f"Cumulus: {line}\n"

    async def connect_remote(self) -> None:
        try:
            if self.client is None:
                self.client = GatewayClient(self.settings)
            self.remote = await self._adopted(self.client) or await RemoteKernel.start(
                self.client, gpu=self.options.get("gpu") or None,
                duration=self.options.get("duration") or None, on_progress=self.progress,
            )  # fmt: skip
            self.sidecar.write_text(json.dumps({"kernel_id": self.remote.id}))
            await self.remote.connect()
        except CumulusError as exc:
            self.give_up(exc)
            return
        self._announce_to_waiting()
        if self.options.get("sync", "").lower() in ("1", "true", "yes"):
            await self.sync_files()
            self._announce_to_waiting()
        self.ready.set()
        self.progress_parents.clear()
        await self._flush_pending()

    def _announce_to_waiting(self) -> None:
        if self.announcement and self.progress_parents:
            self.stderr(self.announcement, self.progress_parents[0])
            self.announcement = ""

    async def sync_files(self) -> None:
        """Send the notebook's directory (this process's working directory) to the remote
        kernel's work directory, which becomes its working directory. Opt-in (``--sync``),
        size-capped, traversal-safe on the remote side; a failure is reported, not fatal."""
        limit = int(float(os.environ.get("CUMULUS_SYNC_MAX_MB", "100")) * 2**20)
        try:
            data, summary = archive.pack(Path.cwd(), limit)
            register = (
                "import cumulus_jupyter.remote as _cumulus_remote; _cumulus_remote.register()"
            )
            await self.internal_request("execute_request", {
                "code": register, "silent": True, "store_history": False,
                "user_expressions": {}, "allow_stdin": False, "stop_on_error": False,
            })  # fmt: skip
            result = await self.internal_comm("cumulus.sync", {"max_bytes": limit}, [data])
        except (CumulusError, OSError, TimeoutError) as exc:
            self.progress(f"could not sync {Path.cwd()}: {exc}", keep=True)
            return
        if result.get("ok"):
            self.progress(f"synced {summary} from {Path.cwd()} to {result['path']}", keep=True)
        else:
            self.progress(f"sync refused: {result.get('error')}", keep=True)

    def _message_parts(self, msg_type: str, content: dict[str, Any]) -> tuple[str, Parts]:
        msg = self.session.msg(msg_type, content)
        parts = [
            self.session.pack(msg[k]) for k in ("header", "parent_header", "metadata", "content")
        ]
        return str(msg["header"]["msg_id"]), parts

    async def internal_request(self, msg_type: str, content: dict[str, Any]) -> Parts:
        """A shell request of the proxy's own; its reply is not shown to the front end."""
        assert self.remote is not None
        msg_id, parts = self._message_parts(msg_type, content)
        reply: asyncio.Future[Parts] = asyncio.get_running_loop().create_future()
        self.internal[msg_id] = reply
        await self.remote.send("shell", parts)
        return await asyncio.wait_for(self._deliver_until(reply), 120)

    async def internal_comm(
        self, target: str, data: dict[str, Any], buffers: Parts
    ) -> dict[str, Any]:
        """Open a comm to ``target`` with buffers; the first message back is the answer."""
        assert self.remote is not None
        comm_id = uuid.uuid4().hex
        answer: asyncio.Future[Parts] = asyncio.get_running_loop().create_future()
        self.internal[comm_id] = answer
        self.own_comms.add(comm_id)
        _, parts = self._message_parts(
            "comm_open", {"comm_id": comm_id, "target_name": target, "data": data}
        )
        await self.remote.send("shell", [*parts, *buffers])
        reply = await asyncio.wait_for(self._deliver_until(answer), 120)
        return dict(json.loads(reply[3])["data"])

    async def _deliver_until(self, done: asyncio.Future[Parts]) -> Parts:
        # the relay loop waits for `ready`, which is not set yet: read the socket here
        assert self.remote is not None
        while not done.done():
            channel, parts = await self.remote.recv()
            self.deliver(channel, parts)
        return done.result()

    async def _adopted(self, client: GatewayClient) -> RemoteKernel | None:
        """The remote kernel a previous proxy process handed over on restart, if it lives."""
        try:
            kernel_id = json.loads(self.sidecar.read_text())["kernel_id"]
            return await RemoteKernel.attach(client, str(kernel_id))
        except (OSError, ValueError, KeyError, CumulusError):
            self.sidecar.unlink(missing_ok=True)
            return None

    async def _flush_pending(self) -> None:
        pending, self.pending = self.pending, []
        for channel, parts in pending:
            await self.forward(channel, parts)

    def give_up(self, exc: CumulusError) -> None:
        """No remote kernel (unreachable, refused, expired): say so to every waiting request
        and to every later one, until the user restarts the kernel."""
        self.failure = exc
        self.sidecar.unlink(missing_ok=True)
        pending, self.pending = self.pending, []
        self.progress_parents.clear()
        for channel, parts in pending:
            header = header_of(parts)
            self.fail(channel, self.routes.get(header.get("msg_id", ""), []), header, exc)

    async def relay(self) -> None:
        """Deliver everything the remote kernel sends; reconnect when the link drops."""
        while not self.stopping.is_set():
            await self.ready.wait()
            remote = self.remote
            if remote is None:
                await asyncio.sleep(0.1)
                continue
            try:
                channel, parts = await remote.recv()
            except (websockets.ConnectionClosed, AttributeError):
                if self.remote is remote and not self.stopping.is_set():
                    await self.reconnect(remote)
                continue
            self.deliver(channel, parts)

    def deliver(self, channel: str, parts: Parts) -> None:
        if self._internal(channel, parts):
            return
        if channel == "iopub":
            msg_type = header_of(parts).get("msg_type")
            if msg_type == "cumulus":
                self.on_cumulus_event(json.loads(parts[3]), parent_of(parts))
                return
            if msg_type == "iopub_welcome" or (
                msg_type == "status" and self.foreign_or_duplicate_status(parts)
            ):
                return
            self.publish_raw(parts)
            if msg_type == "status" and not parent_of(parts).get("msg_id"):
                self.on_kernel_state(json.loads(parts[3]).get("execution_state", ""))
        elif channel in ROUTED:
            parent_id = parent_of(parts).get("msg_id", "")
            if channel == "shell":
                self.outstanding.pop(parent_id, None)
            idents = self.routes.get(parent_id)
            if idents is not None:
                self.send_raw(channel, idents, parts)

    def _internal(self, channel: str, parts: Parts) -> bool:
        """Answers to the proxy's own requests and comms: resolved here, never shown."""
        if not self.internal and not self.own_comms:
            return False
        key = parent_of(parts).get("msg_id", "")
        if channel == "iopub" and header_of(parts).get("msg_type") in ("comm_msg", "comm_close"):
            key = json.loads(parts[3]).get("comm_id", "")
            if key in self.own_comms and key not in self.internal:
                return True  # the rest of a comm of ours (its close)
        if key not in self.internal:
            return False
        if key in self.probes:
            answered = channel == "iopub"  # the kernel's iopub reaches us again
        else:
            answered = channel != "iopub" or header_of(parts).get("msg_type") == "comm_msg"
        if answered:
            self.probes.discard(key)
            future = self.internal.pop(key)
            if not future.done():
                future.set_result(parts)
        return True

    def foreign_or_duplicate_status(self, parts: Parts) -> bool:
        """True for a status the front end must not see: the remote kernel's busy for a request
        we already said busy for, or the busy/idle of a request the gateway itself made (its
        kernel_info probe on every WebSocket connect), which would land mid-cell."""
        parent_id = parent_of(parts).get("msg_id", "")
        if not parent_id:
            return False  # starting/restarting: everyone's news
        if parent_id not in self.routes:
            return True
        if parent_id in self.busy_sent and json.loads(parts[3]).get("execution_state") == "busy":
            self.busy_sent.discard(parent_id)
            return True
        return False

    def on_kernel_state(self, state: str) -> None:
        """The gateway says the remote kernel died ("restarting": it restarts it in the same
        partition; "dead": it could not): cells it was running must end, not hang."""
        if state not in ("restarting", "dead"):
            return
        how = "it was restarted in the same partition" if state == "restarting" else "it is gone"
        died = KernelDied(
            f"The remote kernel died while running this cell; {how} and its variables are lost"
        )
        outstanding, self.outstanding = self.outstanding, {}
        for idents, header in outstanding.values():
            self.fail("shell", idents, header, died)
        if state == "dead":
            self.give_up(died)
        elif self.accepting.is_set():
            # requests sent while the new kernel process starts can be lost in the old
            # connection: hold them until it answers
            self.accepting.clear()
            self.background.add(asyncio.ensure_future(self._probe_until_ready()))

    async def _probe_until_ready(self, attempts: int = 60) -> None:
        """Ask the restarted remote kernel for kernel_info until its iopub answers (the
        gateway's iopub subscription to the new process comes up after its shell: output
        published before would be lost, and a cell would never see its idle), then let held
        requests through."""
        try:
            for _ in range(attempts):
                if self.remote is None:
                    break
                msg_id, parts = self._message_parts("kernel_info_request", {})
                answer: asyncio.Future[Parts] = asyncio.get_running_loop().create_future()
                self.internal[msg_id] = answer
                self.probes.add(msg_id)
                try:
                    await self.remote.send("shell", parts)
                    await asyncio.wait_for(answer, 2)
                    break
                except (TimeoutError, websockets.ConnectionClosed):
                    self.internal.pop(msg_id, None)
                    self.probes.discard(msg_id)
        finally:
            self.accepting.set()
            await self._flush_pending()

    def on_cumulus_event(self, content: dict[str, Any], parent: dict[str, Any]) -> None:
        if content.get("event") == "expired":
            self.ready.clear()
            expired = PartitionExpired(str(content.get("message", "The partition expired")))
            outstanding, self.outstanding = self.outstanding, {}
            for idents, header in outstanding.values():
                self.fail("shell", idents, header, expired)
            self.give_up(expired)
            self.ready.set()  # requests now get the expiry error at once
            self.status("dead", {})  # front ends show the kernel as dead until restarted

    async def reconnect(self, remote: RemoteKernel) -> None:
        """The WebSocket dropped: come back with the same session id (the gateway buffers what
        the kernel sent meanwhile), unless the kernel itself is gone."""
        self.ready.clear()
        for delay in RECONNECT_BACKOFF_S:
            try:
                await remote.client.request("GET", f"/api/kernels/{remote.id}")
                await remote.connect()
            except (PartitionExpired, CumulusError) as exc:
                if isinstance(exc, Unavailable):
                    await asyncio.sleep(delay)
                    continue
                self.remote = None
                self.give_up(exc)
                self.ready.set()
                return
            self.ready.set()
            await self._flush_pending()
            return
        self.give_up(Unavailable(f"Lost the connection to the gateway at {self.settings.url}"))
        self.ready.set()

    async def run(self) -> None:
        self.bind()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        loop.add_signal_handler(signal.SIGINT, lambda: None)  # interrupts arrive as messages
        tasks = [asyncio.ensure_future(self.serve(c)) for c in ROUTED]
        tasks.append(asyncio.ensure_future(self.connect_remote()))
        tasks.append(asyncio.ensure_future(self.relay()))
        await self.stopping.wait()
        await asyncio.sleep(0.2)  # let the last replies leave
        await self._drop_remote()
        for task in tasks:
            task.cancel()
        if self.client is not None:
            await self.client.aclose()
        self.context.destroy(linger=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cumulus_jupyter.kernel")
    parser.add_argument("-f", "--connection-file", required=True)
    args, _ = parser.parse_known_args(argv)
    try:
        with open(args.connection_file) as f:
            connection = json.load(f)
        for key in (
            "ip",
            "key",
            "shell_port",
            "iopub_port",
            "stdin_port",
            "control_port",
            "hb_port",
        ):
            connection[key]
    except (OSError, ValueError, KeyError) as exc:
        print(
            f"Cumulus kernel: bad connection file {args.connection_file}: {exc!r}", file=sys.stderr
        )
        return 2
    try:
        settings = GatewaySettings.resolve()
    except CumulusError as exc:
        print(f"Cumulus kernel: {exc}", file=sys.stderr)
        return 2
    options = {
        key: os.environ.get(f"CUMULUS_{key.upper()}", "") for key in ("gpu", "duration", "sync")
    }
    sidecar = Path(args.connection_file).with_suffix(".cumulus.json")
    asyncio.run(ProxyKernel(connection, settings, options, sidecar).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
