"""`RemoteSession`: a named remote kernel the magic and `run` use across calls.

It owns one `RemoteKernel` and one reader task on the background loop that routes what arrives
to whoever waits for it: outputs of an execute to that execute's queue, comm answers to the
comm that asked. Sync methods (`execute`, `push`, `pull`) wait in the caller's thread, which is
where outputs are shown, live.
"""

from __future__ import annotations

import ast
import asyncio
import collections
import contextlib
import json
import queue
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jupyter_client.session import Session

from cumulus_jupyter import archive, datapath, loop, transfer
from cumulus_jupyter.connection import GatewayClient, GatewaySettings
from cumulus_jupyter.errors import (
    CumulusError,
    DataChannelError,
    Internal,
    InvalidArgument,
    KernelDied,
    PartitionExpired,
)
from cumulus_jupyter.protocol import code as kernel_code
from cumulus_jupyter.protocol import messages
from cumulus_jupyter.protocol.messages import Message, Parts, header_of, parent_of
from cumulus_jupyter.remote_kernel import RemoteKernel

#: read back after registering the agent: the kernel's package versions and its data port
EXPRESSIONS = {"v": kernel_code.VERSIONS_EXPRESSION, "d": kernel_code.DATA_PORT_EXPRESSION}


_COMMS = frozenset({"comm_open", "comm_msg", "comm_close"})
_ANSWERED_KEPT = 1024


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB" if size >= 2**17 else f"{size / 2**10:.0f} KiB"


class _Execution:
    """What the reader does with one execute's messages: outputs go to the waiting thread as
    they come; the reply is held until every output is in (the one the reply names as the last
    came, or the kernel is idle again), then sent as one ``_done``."""

    _SILENT = kernel_code.NOT_OUTPUTS | {"execute_reply"}

    def __init__(self, waiter: asyncio.Event | None = None) -> None:
        self.inbox: queue.Queue[Message] = queue.Queue()
        # a waiter on the session's loop (`_execute_async`), woken when something is put: a
        # thread blocked on ``inbox.get`` for it would outlive a cancelled wait, and Python
        # joins such threads at exit (the notebook's kernel would hang as it shut down)
        self.waiter = waiter
        self._waiter_loop = asyncio.get_running_loop() if waiter is not None else None
        self.reply: Message | None = None
        self.outputs_in = False
        self.done = False
        self.seen: set[str] = set()  # the outputs' ids, until the reply names the last one
        self.awaited: str | None = None

    def take(self, message: Message) -> None:
        kind = message["msg_type"]
        if kind == "execute_reply":
            self.reply = message
            self.outputs_in = self.outputs_in or self._last_seen(message)
        elif kind == "status":
            idle = message["content"].get("execution_state") == "idle"
            self.outputs_in = self.outputs_in or idle
        if kind not in self._SILENT:
            msg_id = message["header"].get("msg_id")
            if self.reply is None:
                self.seen.add(msg_id)
            elif msg_id == self.awaited:
                self.outputs_in = True
            self._put(message)
        if self.reply is not None and self.outputs_in and not self.done:
            self.done = True  # once: the idle that follows is not a second end
            self._put({"msg_type": "_done", "reply": self.reply})

    def _last_seen(self, reply: Message) -> bool:
        """Whether the output the reply names as the cell's last is already here (None: it had
        none); a reply naming none (not the agent's) waits for ``idle``."""
        named = (reply.get("metadata") or {}).get(kernel_code.METADATA_KEY)
        if not isinstance(named, dict) or kernel_code.LAST_OUTPUT not in named:
            return False
        self.awaited = named[kernel_code.LAST_OUTPUT]
        return self.awaited is None or self.awaited in self.seen

    def put(self, message: Message) -> None:  # the loss notice, as for any route (any thread)
        self._put(message)

    def _put(self, message: Message) -> None:
        self.inbox.put(message)
        if self.waiter is not None and self._waiter_loop is not None:
            try:
                here = asyncio.get_running_loop() is self._waiter_loop
            except RuntimeError:
                here = False
            if here:
                self.waiter.set()
            else:
                self._waiter_loop.call_soon_threadsafe(self.waiter.set)


class RemoteRef:
    """A value that stayed in the remote kernel, because it is large (``.fetch()`` brings it)
    or cannot be pickled (a widget, an open file: ``info["unpicklable"]`` says why). Either way
    later ``%%cumulus`` cells of the session read the remote value itself."""

    def __init__(self, session: RemoteSession, name: str, info: dict[str, Any]) -> None:
        self.session, self.name, self.info = session, name, info

    def fetch(self) -> Any:
        if "unpicklable" in self.info:
            raise InvalidArgument(
                f"{self.name} cannot come here: {self.info['unpicklable']}. Use it in "
                f"%%cumulus --session {self.session.name} cells, where it lives."
            )
        values, missing = self.session.pull([self.name])
        if missing:
            raise Internal(f"{self.name} is no longer in session {self.session.name}")
        return values[self.name]

    def __repr__(self) -> str:
        if "unpicklable" in self.info:
            return (
                f"RemoteRef({self.name}: {self.info.get('type')} in session "
                f"{self.session.name}, which cannot be pickled; use it in %%cumulus cells)"
            )
        shape = f" {self.info['shape']}" if "shape" in self.info else ""
        dtype = f" {self.info['dtype']}" if "dtype" in self.info else ""
        size = self.info.get("bytes", 0) / 2**20
        return (
            f"RemoteRef({self.name}: {self.info.get('type')}{dtype}{shape}, {size:.1f} MiB, "
            f"in session {self.session.name}; .fetch() brings it here)"
        )


@dataclass
class Push:
    """A push pickled and checked, not yet sent (`RemoteSession.prepare_push`)."""

    request: dict[str, Any]  # the ``cumulus.vars`` push (its entries)
    frames: list[Any]  # the pickles and their out-of-band buffers
    prints: dict[str, str]  # each value's fingerprint, for the ledger once the remote has it
    names: list[str]
    total: int  # bytes


@dataclass
class Pulled:
    """What came back inside an execute reply (`RemoteSession.inline_pulled`)."""

    values: dict[str, Any]  # including `RemoteRef`s for values over the size limit
    missing: list[str]  # asked for, not there
    deferred: list[str]  # there, too large to ride in the reply: pull them over comms


class RemoteSession:
    """A named remote kernel used across calls. Its state stays known between calls: the
    reader hears a kernel restart or death at once, and a heartbeat (``heartbeat`` seconds)
    asks the gateway after the kernel, so a session whose kernel died, was stopped or whose
    partition ended is `lost` (with when and why) before the next cell tries it."""

    def __init__(self, name: str, settings: GatewaySettings, heartbeat: float = 10.0) -> None:
        self.name = name
        self.settings = settings
        self.heartbeat = heartbeat
        self._watcher: asyncio.Future[None] | None = None
        self.kernel: RemoteKernel | None = None
        self.session = Session(username="cumulus")
        self._routes: dict[str, queue.Queue[Message] | _Execution] = {}
        # our own comms answered, whose close (the agent's, after its answer) is still to come:
        # it is dropped, not handed to the notebook's front end, which never saw the comm
        self._answered: collections.OrderedDict[str, bool] = collections.OrderedDict()
        self._reader: asyncio.Future[None] | None = None
        #: the reader's latest reconnect (its outcome: the link is back), for senders whose
        #: send met the dropped link; None before any
        self._relinking: asyncio.Future[bool] | None = None
        self.ledger = transfer.Ledger()  # what the remote kernel holds
        self.sent_bytes = 0  # variables pushed so far, for status and tests
        self.data_path = False  # large buffers go over the gateway's data endpoint
        self.data_bytes = 0  # of which this many took the data path
        self.data_error = ""  # why the data path was given up, if it was
        self.max_transfer_bytes = 0  # the gateway's cap on one transfer (0: none)
        self.lost: CumulusError | None = None
        self.allow_stdin = False  # executes may ask for input (the local front end answers)
        #: gets the remote kernel's comm traffic that belongs to no execute (a widget's
        #: answers to the front end after its cell), in the reader's thread
        self.on_comm: Callable[[Message], None] | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(
        self,
        gpu: str,
        duration: str,
        on_progress: Callable[[str], None],
        *,
        env: dict[str, str] | None = None,
        launch_timeout: float = 600,
    ) -> None:
        """Start the session's kernel: ``env`` goes with the request (``KERNEL_WAIT=0``: do
        not queue), which may wait in the queue up to ``launch_timeout`` seconds."""
        loop.call(self._start(gpu, duration, on_progress, env=env, launch_timeout=launch_timeout))

    async def _start(
        self,
        gpu: str,
        duration: str,
        on_progress: Callable[[str], None],
        *,
        env: dict[str, str] | None = None,
        launch_timeout: float = 600,
    ) -> None:
        client = GatewayClient(self.settings)
        try:
            self.kernel = await RemoteKernel.start(
                client, gpu=gpu, duration=duration, env=env, launch_timeout=launch_timeout,
                on_progress=on_progress,
            )  # fmt: skip
        except BaseException:
            await client.aclose()
            raise
        await self.kernel.connect()
        self._reader = asyncio.ensure_future(self._read())
        self._watcher = asyncio.ensure_future(self._watch())
        reply = await self._execute_async(
            kernel_code.REGISTER,
            silent=True,
            expressions=EXPRESSIONS,
        )
        if reply["content"].get("status") != "ok":
            raise Internal(
                f"the remote kernel could not load {kernel_code.AGENT}: {reply['content']}"
            )
        found = reply["content"].get("user_expressions", {})
        remote = ast.literal_eval(found.get("v", {}).get("data", {}).get("text/plain", "{}"))
        self.data_path = found.get("d", {}).get("data", {}).get("text/plain", "None") != "None"
        self.max_transfer_bytes = int(client.health.get("max_transfer_bytes") or 0)
        errors, warnings = transfer.compare_versions(transfer.versions(), remote)
        if errors:
            kernel, self.kernel = self.kernel, None
            await self._release(kernel)
            raise InvalidArgument(
                "Variables cannot travel between these Pythons: "
                + "; ".join(errors)
                + ". Use a kernel environment with the same versions."
            )
        for line in warnings:
            on_progress(f"note: {line}")

    @property
    def alive(self) -> bool:
        return self.kernel is not None and self.lost is None

    def check(self) -> bool:
        """Ask the gateway now (not at the next heartbeat) whether the kernel lives."""
        if self.alive:
            error = loop.call(self._why_gone())
            if error is not None:
                self._lose(error)
        return self.alive

    def info(self) -> dict[str, Any]:
        model = (
            loop.call(self.kernel.client.request("GET", f"/api/kernels/{self.kernel.id}"))
            if self.kernel
            else {}
        )
        return dict(model.get("cumulus") or {})

    def release(self) -> None:
        kernel, self.kernel = self.kernel, None
        if kernel is not None:
            loop.call(self._release(kernel))

    @staticmethod
    def release_many(sessions: list[RemoteSession], timeout: float = 4.0) -> None:
        """Release these sessions at once (the local kernel is shutting down), waiting at most
        ``timeout`` seconds: the gateway finishes a release it has heard of."""
        kernels = []
        for session in sessions:
            kernel, session.kernel = session.kernel, None
            if kernel is not None:
                kernels.append((session, kernel))
        if not kernels:
            return

        async def release_all() -> None:
            await asyncio.gather(*(s._release(k) for s, k in kernels), return_exceptions=True)

        with contextlib.suppress(Exception):
            loop.call(asyncio.wait_for(release_all(), timeout))

    async def _release(self, kernel: RemoteKernel) -> None:
        for task in (self._reader, self._watcher):
            if task is not None:
                task.cancel()
        try:
            await kernel.shutdown()
        finally:
            await kernel.client.aclose()

    # -- messages ------------------------------------------------------------------------------

    async def _read(self) -> None:
        assert self.kernel is not None
        try:
            while True:
                channel, parts = await self.kernel.recv()
                header, parent = header_of(parts), parent_of(parts)
                key = parent.get("msg_id", "")
                msg_type = header.get("msg_type")
                if msg_type in ("comm_msg", "comm_close"):
                    comm_id = json.loads(parts[3]).get("comm_id", key)
                    if msg_type == "comm_close" and self._answered.pop(comm_id, False):
                        continue
                    key = comm_id if comm_id in self._routes else key  # our own comms' answers
                target = self._routes.get(key)
                if isinstance(target, _Execution):
                    if msg_type != "execute_input":  # nothing to the cell: not even decoded
                        target.take(messages.parse(parts, header, parent))
                elif target is not None:
                    message = messages.parse(parts)
                    message["channel"] = channel
                    target.put(message)
                elif msg_type in _COMMS and channel == "iopub":
                    if self.on_comm is not None:
                        self.on_comm(messages.parse(parts))
                elif msg_type == "cumulus":
                    event = json.loads(parts[3])
                    if event.get("event") == "expired":
                        self._lose(PartitionExpired(event.get("message", "partition expired")))
                elif msg_type == "status" and json.loads(parts[3]).get("execution_state") in (
                    "restarting",
                    "dead",
                ):  # the gateway saw the kernel process die
                    self._lose(self._gone("died"))
        except Exception as exc:  # the link is gone: reconnect if the kernel lives on
            relinking = self._relinking = asyncio.get_running_loop().create_future()
            back = False
            try:
                error = self.lost or await self._why_gone()
                back = error is None and await self._reconnect()
            finally:
                relinking.set_result(back)
            if not back:
                self._lose(error or self._gone(f"became unreachable ({exc})"))

    async def _send(self, kernel: RemoteKernel, channel: str, parts: Parts) -> None:
        """Send on the kernel's WebSocket; one that meets a dropped link waits for the reader
        to reconnect (it hears the drop too) and sends again, so a request made while the
        gateway is briefly away is not lost."""
        before = self._relinking
        try:
            await kernel.send(channel, parts)
            return
        except Exception as exc:
            failure: Exception = exc
        pending = before if before is not None and not before.done() else None
        if pending is None:  # the reader has not seen the drop yet: it will, at once
            deadline = time.monotonic() + 10
            while self._relinking is before and self.lost is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            pending = self._relinking if self._relinking is not before else None
        if pending is not None and await asyncio.shield(pending):
            try:
                await kernel.send(channel, parts)
                return
            except Exception as exc:
                failure = exc
        raise self.lost or self._gone(f"became unreachable ({failure})")

    async def _reconnect(self) -> bool:
        """A new WebSocket to the same kernel (same session id: the gateway replays what it
        buffered meanwhile), retried with backoff while the gateway is unreachable (restarted,
        a network blip), and a new reader on it."""
        assert self.kernel is not None
        try:
            await self.kernel.reconnect()
        except CumulusError:
            return False
        self._reader = asyncio.ensure_future(self._read())
        return True

    async def _watch(self) -> None:
        """The heartbeat: ask the gateway after the kernel until the session ends."""
        while self.lost is None and self.kernel is not None:
            await asyncio.sleep(self.heartbeat)
            if self.lost is None:
                error = await self._why_gone()
                if error is not None:
                    self._lose(error)

    async def _why_gone(self) -> CumulusError | None:
        """What the gateway says of the kernel: the loss to report, or ``None`` while it runs
        (or while the gateway cannot be reached: then the next heartbeat asks again)."""
        if self.kernel is None:
            return None
        try:
            model = await self.kernel.client.request("GET", f"/api/kernels/{self.kernel.id}")
        except PartitionExpired as exc:
            return PartitionExpired(str(exc))
        except CumulusError as exc:
            return self._gone("was stopped") if exc.status == 404 else None
        return self._gone("died") if model.get("execution_state") == "dead" else None

    def _gone(self, what: str) -> KernelDied:
        return KernelDied(
            f"session {self.name} lost: the kernel {what} at {time.strftime('%H:%M:%S')}; "
            "its variables are gone"
        )

    def _lose(self, error: CumulusError) -> None:
        if self.lost is not None and not isinstance(error, PartitionExpired):
            error = self.lost  # the first cause is the one to report
        self.lost = error
        for target in list(self._routes.values()):  # any thread: routes change meanwhile
            target.put({"msg_type": "_lost", "error": error})

    def _request(
        self,
        msg_type: str,
        content: dict[str, Any],
        parent: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> tuple[str, Parts]:
        """A new request's id and its packed parts (header, parent, metadata, content)."""
        msg = self.session.msg(msg_type, content, parent=parent, metadata=metadata)
        parts = [
            self.session.pack(msg[k]) for k in ("header", "parent_header", "metadata", "content")
        ]
        return str(msg["header"]["msg_id"]), parts

    @staticmethod
    def _execute_content(
        code: str,
        silent: bool = False,
        expressions: dict[str, str] | None = None,
        allow_stdin: bool = False,
        stop_on_error: bool = True,
    ) -> dict[str, Any]:
        return {
            "code": code, "silent": silent, "store_history": not silent,
            "user_expressions": expressions or {}, "allow_stdin": allow_stdin,
            "stop_on_error": stop_on_error,
        }  # fmt: skip

    async def _execute_async(
        self, code: str, silent: bool = False, expressions: dict[str, str] | None = None
    ) -> Message:
        """`execute` for the background loop itself (start-up), without outputs."""
        assert self.kernel is not None
        woken = asyncio.Event()
        execution = _Execution(woken)
        msg_id, parts = self._request(
            "execute_request", self._execute_content(code, silent, expressions)
        )
        self._routes[msg_id] = execution
        try:
            await self.kernel.send("shell", parts)
            while True:
                try:
                    message = execution.inbox.get_nowait()
                except queue.Empty:
                    await woken.wait()
                    woken.clear()
                    continue
                if message["msg_type"] == "_lost":
                    raise message["error"]
                if message["msg_type"] == "_done":
                    return message["reply"]  # type: ignore[no-any-return]
        finally:
            self._routes.pop(msg_id, None)

    def execute(
        self,
        code: str,
        on_output: Callable[[Message], None],
        *,
        carry: Push | None = None,
        pull: dict[str, Any] | None = None,
        expressions: dict[str, str] | None = None,
        stop_on_error: bool = True,
    ) -> Message:
        """Run ``code``; ``on_output`` gets every output message in this thread, as it comes.
        ``carry`` (from `prepare_push`) rides inside the request and is applied before the
        cell runs: if the remote refuses it, the cell does not run and this raises `Internal`.
        ``pull`` (`kernel_code.PULL`) asks for values to come back inside the reply
        (`inline_pulled`).

        The request is sent without waiting for the send to finish, and the reader wakes this
        thread only for outputs and once at the end (the reply and the agent's mark that every
        output is out), so a ``pass`` cell costs one thread hop each way on top of the kernel's
        own round trip."""
        if self.lost is not None:
            raise self.lost
        execution = _Execution()
        msg_id = self._send_execute(code, execution, carry, pull, expressions, stop_on_error)
        try:
            while True:
                message = execution.inbox.get()
                kind = message["msg_type"]
                if kind == "_lost":
                    raise message["error"]
                if kind == "_done":
                    reply: Message = message["reply"]
                    break
                on_output(message)
        except KeyboardInterrupt:
            loop.call(self.kernel.interrupt())  # type: ignore[union-attr]
            raise
        finally:
            self._routes.pop(msg_id, None)
        if carry is not None:
            content = reply["content"]
            if content.get("ename") == kernel_code.PUSH_REFUSED:
                raise Internal(f"the remote kernel refused the variables: {content.get('evalue')}")
            self._pushed(carry)
        return reply

    def _send_execute(
        self,
        code: str,
        execution: _Execution,
        carry: Push | None,
        pull: dict[str, Any] | None,
        expressions: dict[str, str] | None,
        stop_on_error: bool = True,
    ) -> str:
        assert self.kernel is not None
        kernel = self.kernel
        options: dict[str, Any] = {"mark": True}
        if carry is not None:
            options["push"] = carry.request
        if pull is not None:
            options[kernel_code.PULL] = pull
        msg_id, parts = self._request(
            "execute_request",
            self._execute_content(
                code,
                expressions=expressions,
                allow_stdin=self.allow_stdin,
                stop_on_error=stop_on_error,
            ),
            metadata={kernel_code.METADATA_KEY: options},
        )
        self._routes[msg_id] = execution
        self._send_soon(kernel, "shell", [*parts, *(carry.frames if carry else [])])
        return msg_id

    def _send_soon(self, kernel: RemoteKernel, channel: str, parts: Parts) -> None:
        """Send on the background loop without waiting for it here."""

        async def send() -> None:
            try:
                await self._send(kernel, channel, parts)
            except CumulusError as exc:  # the link is gone: the waiting thread must hear it
                self._lose(exc)

        loop.background_loop().call_soon_threadsafe(lambda: asyncio.ensure_future(send()))

    def send_message(
        self,
        channel: str,
        msg_type: str,
        content: dict[str, Any],
        buffers: list[Any] | None = None,
        parent: dict[str, Any] | None = None,
    ) -> str:
        """Send one message to the remote kernel (a comm_msg from the local front end, an
        input_reply) without waiting; returns its id, the parent of what answers it."""
        if self.kernel is None or self.lost is not None:
            return ""
        msg_id, parts = self._request(msg_type, content, parent)
        self._send_soon(self.kernel, channel, [*parts, *(buffers or [])])
        return msg_id

    def reply_input(self, value: str, request: dict[str, Any]) -> None:
        """Answer the remote kernel's ``input_request`` (its header: ``request``)."""
        self.send_message("stdin", "input_reply", {"value": value}, parent=request)

    def _comm(
        self, data: dict[str, Any], buffers: list[Any], target: str = kernel_code.VARS_TARGET
    ) -> Message:
        if self.lost is not None:
            raise self.lost
        comm_id = uuid.uuid4().hex
        inbox: queue.Queue[Message] = queue.Queue()
        self._routes[comm_id] = inbox
        _, parts = self._request(
            "comm_open", {"comm_id": comm_id, "target_name": target, "data": data}
        )
        try:
            loop.call(self._send(self.kernel, "shell", [*parts, *buffers]))  # type: ignore[arg-type]
            while True:
                try:
                    message = inbox.get(timeout=600)
                except queue.Empty:
                    raise Internal(
                        f"the remote kernel of session {self.name} did not answer"
                    ) from None
                if message["msg_type"] == "_lost":
                    raise message["error"]
                if message["msg_type"] == "comm_msg":
                    return message
        finally:
            if self._routes.pop(comm_id, None) is not None:
                self._answered[comm_id] = True
                while len(self._answered) > _ANSWERED_KEPT:  # a close that never came
                    self._answered.popitem(last=False)

    def sync(self, directory: str, max_bytes: int = archive.DEFAULT_MAX_BYTES) -> str:
        """Upload ``directory`` into the remote kernel's work directory (its new cwd)."""
        data, summary = archive.pack(directory, max_bytes)
        answer = self._comm({"max_bytes": max_bytes}, [data], target=kernel_code.SYNC_TARGET)[
            "content"
        ]["data"]
        if not answer.get("ok"):
            raise InvalidArgument(f"sync refused: {answer.get('error')}")
        return f"synced {summary} to {answer['path']}"

    def install(self, requirements: list[str], on_output: Callable[[Message], None]) -> None:
        """pip-install into this session's overlay (see `cumulus_jupyter.agent.overlay`)."""
        reply = self.execute(kernel_code.install(requirements), on_output)["content"]
        if reply.get("status") != "ok":
            raise InvalidArgument(f"{reply.get('ename')}: {reply.get('evalue')}")

    # -- the data path (cumulus_jupyter.datapath) ---------------------------------------------

    def _upload(self, frames: list[Any]) -> str:
        assert self.kernel is not None
        transfer_id = uuid.uuid4().hex
        datapath.upload(
            self.settings.url,
            self.settings.headers,
            self.kernel.id,
            transfer_id,
            frames,
            context=self.settings.ssl_context,
        )
        self.data_bytes += sum(memoryview(f).nbytes for f in frames)
        return transfer_id

    def _download(self, transfer_id: str) -> list[Any]:
        assert self.kernel is not None
        buffers = datapath.download(
            self.settings.url,
            self.settings.headers,
            self.kernel.id,
            transfer_id,
            context=self.settings.ssl_context,
        )
        self.data_bytes += sum(len(b) for b in buffers)
        return buffers

    # -- variables -----------------------------------------------------------------------------

    def push(
        self, values: dict[str, Any], force: bool = False, delete: list[str] | None = None
    ) -> list[str]:
        """Send the values that changed since the last push (and delete ``delete`` there);
        returns the names sent."""
        prepared = self.prepare_push(values, force, delete)
        if prepared is None:
            return []
        request, frames = prepared.request, prepared.frames
        if self.data_path and prepared.total >= datapath.STAGE_THRESHOLD:
            try:
                request["staged"] = self._upload(frames)
                frames = []
            except DataChannelError as exc:  # the kernel's data port is gone: use messages
                self.data_path, self.data_error = False, str(exc)
        answer = self._comm(request, frames)["content"]["data"]
        if not answer.get("ok"):
            raise Internal(f"the remote kernel refused the variables: {answer.get('error')}")
        self._pushed(prepared)
        return prepared.names

    def _pushed(self, prepared: Push) -> None:
        """The remote holds what ``prepared`` carried (and no longer what it deleted)."""
        self.sent_bytes += prepared.total
        self.ledger.sent(prepared.prints)
        self.ledger.deleted(prepared.request.get("delete", []))

    def prepare_push(
        self, values: dict[str, Any], force: bool = False, delete: list[str] | None = None
    ) -> Push | None:
        """The push of the values that changed since the last push, and of the deletion of
        ``delete`` (None: nothing to do), pickled and checked against the gateway's cap, not
        sent: `push` sends it on its own, `execute` inside a cell's request (``carry``)."""
        pickled, prints = self.ledger.changes(values, force)
        if not pickled and not delete:
            return None
        entries, frames = transfer.pack_namespace(
            {n: values[n] for n in pickled}, pickled, self.ledger.namespace
        )
        total = sum(memoryview(f).nbytes for f in frames)
        if self.max_transfer_bytes and total > self.max_transfer_bytes:
            sizes = {n: transfer.pickled_size(pickled[n]) for n in pickled}
            largest = ", ".join(
                f"{n} {_mib(sizes[n])}" for n in sorted(sizes, key=sizes.__getitem__, reverse=True)
            )
            raise InvalidArgument(
                f"Push of {_mib(total)} ({largest}) is over the gateway's cap of "
                f"{self.max_transfer_bytes / 2**20:.0f} MiB per transfer; nothing was sent. "
                "Send less (--no-push, or make it remotely) or ask for a larger "
                "CumulusGateway.max_transfer_bytes"
            )
        request = {"op": "push", "entries": entries, "delete": list(delete or [])}
        return Push(request, frames, prints, sorted(pickled), total)

    def pull(
        self, names: list[str], max_bytes: int | None = None
    ) -> tuple[dict[str, Any], list[str]]:
        """The remote values of ``names`` (those that exist) and the names that do not. Values
        over ``max_bytes`` stay remote and come back as `RemoteRef`s."""
        values: dict[str, Any] = {}
        missing: list[str] = []
        budget = self.transfer_budget()
        while names:  # what would not fit in one transfer under the gateway's cap: in the next
            request = {"op": "pull", "names": names, "max_bytes": max_bytes, "budget": budget}
            if self.data_path:
                request["stage_above"] = datapath.STAGE_THRESHOLD
            message = self._comm(request, [])
            answer = message["content"]["data"]
            if not answer.get("ok"):
                raise Internal(f"could not bring the variables back: {answer.get('error')}")
            staged = answer.get("staged")
            buffers = self._download(staged) if staged else message["buffers"]
            values |= self._received(answer, buffers)
            missing += answer.get("missing", [])
            deferred = list(answer.get("deferred") or [])
            if len(deferred) >= len(names):  # the agent takes at least one: never
                raise Internal(f"could not bring {', '.join(deferred)} back: no progress")
            names = deferred
        return values, missing

    def transfer_budget(self) -> int | None:
        """The most one transfer may carry, under the gateway's cap (None: no cap)."""
        return max(1, self.max_transfer_bytes - 2**12) if self.max_transfer_bytes else None

    def value_limit(self, limit: int) -> int:
        """``limit``, the size over which a value stays remote, kept under the gateway's cap:
        a value no transfer could carry stays remote rather than failing the cell."""
        budget = self.transfer_budget()
        return limit if budget is None else min(limit, budget)

    def _received(self, answer: dict[str, Any], buffers: list[Any]) -> dict[str, Any]:
        """The values an answer to a pull carries, and `RemoteRef`s for those left remote."""
        values: dict[str, Any] = transfer.unpack_namespace(answer["entries"], buffers)
        self.ledger.received(values)
        for name, info in (answer.get("refs") or {}).items():
            values[name] = RemoteRef(self, name, info)
            self.ledger.forget(name)
            self.ledger.handed.add(name)
        return values

    def inline_pulled(self, reply: Message) -> Pulled | None:
        """What the execute's ``pull`` brought back inside its reply, or None when nothing
        came (the cell failed, an agent without it, values that could not be gathered there):
        then the caller pulls over comms as usual."""
        named = (reply.get("metadata") or {}).get(kernel_code.METADATA_KEY)
        answer = named.get(kernel_code.PULLED) if isinstance(named, dict) else None
        buffers = list(reply.get("buffers") or [])
        if not isinstance(answer, dict) or answer.get("frames") != len(buffers):
            return None
        return self._pulled(answer, buffers)

    def _pulled(self, answer: dict[str, Any], frames: list[Any]) -> Pulled:
        values = self._received(answer, frames)
        return Pulled(values, list(answer.get("missing", [])), list(answer.get("deferred", [])))

    # -- the partition ---------------------------------------------------------------------------

    def extend(self, duration: str) -> dict[str, Any]:
        """Add ``duration`` ("30m") to this session's partition; the partition now."""
        from cumulus_jupyter import partitions

        if self.kernel is None or not self.kernel.cumulus.get("partition_id"):
            raise InvalidArgument(f"Session {self.name} has no partition to extend")
        kernel = self.kernel
        return loop.call(partitions.extend(kernel.client, kernel.cumulus["partition_id"], duration))
