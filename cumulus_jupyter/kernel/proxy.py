"""`ProxyKernel`: the local sockets, the routing bookkeeping and the link to the gateway, tied
together into one kernel.

It handles each front-end request (kernel_info at once, interrupt and shutdown through the
gateway's REST API, a ``%cumulus extend`` cell by itself (`commands`), everything else
forwarded, or held while the kernel is not ready, or failed once it is gone) and delivers each
message of the remote kernel (routed to its requester, published, resolved as the proxy's own,
or read as news of the kernel's state). It keeps the
kernel's state: ready, accepting (not while a restarted remote kernel comes up), its failure.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import websockets

from cumulus_jupyter.connection import GatewaySettings
from cumulus_jupyter.errors import CumulusError, KernelDied, PartitionExpired
from cumulus_jupyter.kernel.commands import command_of, extension
from cumulus_jupyter.kernel.link import GatewayLink, KernelOptions, Sidecar
from cumulus_jupyter.kernel.progress import Progress
from cumulus_jupyter.kernel.routing import OwnRequests, Router
from cumulus_jupyter.kernel.sockets import ROUTED, LocalSockets, session_for
from cumulus_jupyter.protocol.messages import Parts, content_of, header_of, msg_type_of, parent_of
from cumulus_jupyter.remote_kernel import RemoteKernel

Idents = list[bytes]
Header = dict[str, Any]


class ProxyKernel:
    """A Jupyter kernel whose cells run in a remote kernel on the gateway."""

    def __init__(
        self,
        connection: dict[str, Any],
        settings: GatewaySettings,
        options: KernelOptions,
        sidecar: Path,
    ) -> None:
        self.settings = settings
        self.options = options
        session = session_for(connection)
        self.local = LocalSockets(connection, session)
        self.router = Router()
        self.own = OwnRequests()
        self.link = GatewayLink(
            settings, options, Sidecar(sidecar), session, self.own, deliver=self.deliver
        )
        self.progress = Progress(self.local.display)
        self.ready = asyncio.Event()
        self.accepting = asyncio.Event()  # cleared while a restarted remote kernel comes up
        self.accepting.set()
        self.failure: CumulusError | None = None
        self.pending: list[tuple[str, Parts]] = []  # held until the remote kernel takes them
        self.stopping = asyncio.Event()
        self.background: set[asyncio.Future[None]] = set()
        self.execution_count = 0  # the remote kernel's, as its last execute_reply said

    @property
    def banner(self) -> str:
        return f"Cumulus GPU kernel ({self.options.gpu or 'default'} GPU) on {self.settings.url}"

    # -- from the front end ------------------------------------------------------------------

    async def serve(self, channel: str) -> None:
        while True:
            idents, parts = await self.local.receive(channel)
            header = header_of(parts)
            self.router.remember(channel, idents, header)
            await self.handle(channel, idents, header, parts)

    async def handle(self, channel: str, idents: Idents, header: Header, parts: Parts) -> None:
        msg_type = header.get("msg_type", "")
        if msg_type == "kernel_info_request" and not self.ready.is_set():
            self.local.kernel_info(channel, idents, header, self.banner)
        elif msg_type == "interrupt_request":
            await self.interrupt(channel, idents, header)
        elif msg_type == "shutdown_request":
            await self.shutdown(channel, idents, header, content_of(parts))
        elif self.failure is not None:
            self.local.fail(channel, idents, header, self.failure)
        elif msg_type == "execute_request" and (words := _cumulus_command(parts)) is not None:
            self.run_command(idents, header, words)
        elif not self.ready.is_set() or not self.accepting.is_set():
            self.pending.append((channel, parts))
            if msg_type == "execute_request":
                self.own_busy(header)
                self.progress.wait_in(header)
        else:
            if msg_type == "execute_request" and self.progress.kept:
                self.own_busy(header)
                self.progress.show_kept(header)  # the first cell says where it runs
            await self.forward(channel, parts)

    def own_busy(self, header: Header) -> None:
        """Say busy now (progress lines follow) and drop the remote kernel's own busy for the
        same request later, so the front end sees exactly one busy ... idle."""
        self.local.status("busy", header)
        self.router.said_busy(header.get("msg_id", ""))

    async def forward(self, channel: str, parts: Parts) -> None:
        assert self.link.remote is not None
        try:
            await self.link.remote.send(channel, parts)
        except websockets.ConnectionClosed:
            self.pending.append((channel, parts))  # sent once the connection is back

    async def _flush_pending(self) -> None:
        pending, self.pending = self.pending, []
        for channel, parts in pending:
            await self.forward(channel, parts)

    def run_command(self, idents: Idents, header: Header, words: list[str]) -> None:
        """A ``%cumulus`` cell, answered here, in the background: the gateway's answer holds
        up no other request, and the extension takes effect while another cell runs."""
        self.router.answered(header.get("msg_id", ""))
        task = asyncio.ensure_future(self._command(idents, header, words))
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _command(self, idents: Idents, header: Header, words: list[str]) -> None:
        try:
            duration = extension(words)
            # a first cell waits for the partition like any other (or for why there is none)
            while not self.ready.is_set() and self.failure is None:
                await asyncio.sleep(0.1)
            if self.failure is not None:
                raise self.failure
            line = await self.link.extend(duration)
        except CumulusError as exc:
            self.local.fail("shell", idents, header, exc)
            return
        self.local.status("busy", header)
        self.local.publish("stream", {"name": "stdout", "text": f"Cumulus: {line}\n"}, header)
        self.local.reply("shell", idents, header, "execute_reply", {
            "status": "ok", "execution_count": self.execution_count,
            "user_expressions": {}, "payload": [],
        })  # fmt: skip
        self.local.status("idle", header)

    async def interrupt(self, channel: str, idents: Idents, parent: Header) -> None:
        content: dict[str, Any] = {"status": "ok"}
        if self.link.remote is not None and self.failure is None:
            try:
                await self.link.remote.interrupt()
            except CumulusError as exc:
                content = {
                    "status": "error",
                    "ename": type(exc).__name__,
                    "evalue": str(exc),
                    "traceback": [],
                }
        self.local.reply(channel, idents, parent, "interrupt_reply", content)

    async def shutdown(
        self, channel: str, idents: Idents, parent: Header, content: dict[str, Any]
    ) -> None:
        """Shutdown ends the remote kernel and its partition. Restart restarts the remote kernel
        in the same partition and leaves its id for the proxy process the front end starts next
        (same connection file); after an expiry, restart means a new partition."""
        restart = bool(content.get("restart"))
        if restart and self.failure is None and self.link.remote is not None:
            try:
                await self.link.hand_over()
            except CumulusError:
                await self.link.drop()
        else:
            await self.link.drop()
        self.local.reply(
            channel, idents, parent, "shutdown_reply", {"status": "ok", "restart": restart}
        )
        self.stopping.set()

    # -- the remote side ---------------------------------------------------------------------

    async def connect_remote(self) -> None:
        try:
            await self.link.open(self.progress.line)
        except CumulusError as exc:
            self.give_up(exc)
            return
        self.progress.announce_to_waiting()
        if self.options.sync:
            self.progress.line(await self.link.sync_files(), keep=True)
            self.progress.announce_to_waiting()
        self.ready.set()
        self.progress.stop_waiting()
        await self._flush_pending()

    def give_up(self, exc: CumulusError) -> None:
        """No remote kernel (unreachable, refused, expired): say so to every waiting request
        and to every later one, until the user restarts the kernel."""
        self.failure = exc
        self.link.sidecar.remove()
        pending, self.pending = self.pending, []
        self.progress.stop_waiting()
        for channel, parts in pending:
            header = header_of(parts)
            idents = self.router.idents_of(header.get("msg_id", "")) or []
            self.local.fail(channel, idents, header, exc)

    async def relay(self) -> None:
        """Deliver everything the remote kernel sends; reconnect when the link drops."""
        while not self.stopping.is_set():
            await self.ready.wait()
            remote = self.link.remote
            if remote is None:
                await asyncio.sleep(0.1)
                continue
            try:
                channel, parts = await remote.recv()
            except (websockets.ConnectionClosed, AttributeError):
                if self.link.remote is remote and not self.stopping.is_set():
                    await self.reconnect(remote)
                continue
            self.deliver(channel, parts)

    async def reconnect(self, remote: RemoteKernel) -> None:
        """The WebSocket dropped: come back, or fail every request from now on."""
        self.ready.clear()
        try:
            await self.link.reconnect(remote)
        except CumulusError as exc:
            self.give_up(exc)
            self.ready.set()
            return
        self.ready.set()
        await self._flush_pending()

    def deliver(self, channel: str, parts: Parts) -> None:
        """A message from the remote kernel: to its requester, to every front end, or nowhere."""
        if self.own.resolve(channel, parts):
            return
        if channel == "iopub":
            self._deliver_iopub(parts)
        elif channel in ROUTED:
            if channel == "shell" and msg_type_of(parts) == "execute_reply":
                count = content_of(parts).get("execution_count")
                self.execution_count = count if isinstance(count, int) else self.execution_count
            idents = self.router.route_reply(channel, parts)
            if idents is not None:
                self.local.send_raw(channel, idents, parts)

    def _deliver_iopub(self, parts: Parts) -> None:
        msg_type = header_of(parts).get("msg_type")
        if msg_type == "cumulus":
            self.on_cumulus_event(content_of(parts))
            return
        if msg_type == "iopub_welcome" or (
            msg_type == "status" and self.router.hides_status(parts)
        ):
            return
        self.local.publish_raw(parts, self.link.remote.id if self.link.remote else None)
        if msg_type == "status" and not parent_of(parts).get("msg_id"):
            self.on_kernel_state(content_of(parts).get("execution_state", ""))

    # -- the kernel's state ------------------------------------------------------------------

    def _fail_outstanding(self, exc: CumulusError) -> None:
        for idents, header in self.router.take_outstanding():
            self.local.fail("shell", idents, header, exc)

    def on_kernel_state(self, state: str) -> None:
        """The gateway says the remote kernel died ("restarting": it restarts it in the same
        partition; "dead": it could not): cells it was running must end, not hang."""
        if state not in ("restarting", "dead"):
            return
        how = "it was restarted in the same partition" if state == "restarting" else "it is gone"
        died = KernelDied(
            f"The remote kernel died while running this cell; {how} and its variables are lost"
        )
        self._fail_outstanding(died)
        if state == "dead":
            self.give_up(died)
        elif self.accepting.is_set():
            # requests sent while the new kernel process starts can be lost in the old
            # connection: hold them until it answers
            self.accepting.clear()
            self.background.add(asyncio.ensure_future(self._accept_when_ready()))

    async def _accept_when_ready(self) -> None:
        """Let held requests through once the restarted remote kernel's iopub answers."""
        try:
            await self.link.probe_until_ready()
        finally:
            self.accepting.set()
            await self._flush_pending()

    def on_cumulus_event(self, content: dict[str, Any]) -> None:
        """The gateway's own news on iopub; "expired": the partition is gone."""
        if content.get("event") == "expired":
            self.ready.clear()
            expired = PartitionExpired(str(content.get("message", "The partition expired")))
            self._fail_outstanding(expired)
            self.give_up(expired)
            self.ready.set()  # requests now get the expiry error at once
            self.local.status("dead", {})  # front ends show the kernel as dead until restarted

    # -- the process -------------------------------------------------------------------------

    async def run(self) -> None:
        self.local.bind()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        loop.add_signal_handler(signal.SIGINT, lambda: None)  # interrupts arrive as messages
        tasks = [asyncio.ensure_future(self.serve(c)) for c in ROUTED]
        tasks.append(asyncio.ensure_future(self.connect_remote()))
        tasks.append(asyncio.ensure_future(self.relay()))
        await self.stopping.wait()
        await asyncio.sleep(0.2)  # let the last replies leave
        await self.link.drop()
        for task in tasks:
            task.cancel()
        await self.link.close()
        self.local.close()


def _cumulus_command(parts: Parts) -> list[str] | None:
    """The ``%cumulus`` command an execute request's cell is, if it is one (`commands`)."""
    if b"%cumulus" not in parts[3]:  # most cells: no need to decode their content
        return None
    code = content_of(parts).get("code")
    return command_of(code) if isinstance(code, str) else None
