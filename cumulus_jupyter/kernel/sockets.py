"""The local side: the five ZMQ channels a Jupyter front end connects to, and what the proxy
sends on them itself.

`LocalSockets` binds shell, control and stdin (ROUTER), iopub (PUB) and the heartbeat (an echo
in its own thread, as ipykernel does) from a connection file's ports; it receives signed
requests and sends raw parts re-signed with the local session key, or messages of the proxy's
own (its kernel_info reply, status, progress lines, errors).
"""

from __future__ import annotations

import contextlib
import platform
import threading
from typing import Any

import zmq
import zmq.asyncio
from jupyter_client.session import Session

from cumulus_jupyter.errors import CumulusError
from cumulus_jupyter.protocol.messages import Parts, header_of

DELIM = b"<IDS|MSG>"
#: the channels whose messages are requests from, and replies to, one front end
ROUTED = ("shell", "control", "stdin")

LANGUAGE_INFO = {
    "name": "python",
    "version": platform.python_version(),
    "mimetype": "text/x-python",
    "file_extension": ".py",
    "pygments_lexer": "ipython3",
    "codemirror_mode": {"name": "ipython", "version": 3},
    "nbconvert_exporter": "python",
}

Idents = list[bytes]
Header = dict[str, Any]


def session_for(connection: dict[str, Any]) -> Session:
    """The session that signs with the connection file's key."""
    return Session(
        key=connection["key"].encode(),
        signature_scheme=connection.get("signature_scheme", "hmac-sha256"),
        username="cumulus",
    )


class LocalSockets:
    """The front end's five channels, bound from ``connection`` (a connection file's dict)."""

    def __init__(self, connection: dict[str, Any], session: Session) -> None:
        self.connection = connection
        self.session = session
        self.context = zmq.asyncio.Context()
        self.sockets: dict[str, zmq.asyncio.Socket] = {}
        self._hb_context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()

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
        # the proxy's own liveness: echo, as ipykernel does, until `close`
        with contextlib.suppress(zmq.ContextTerminated):
            hb: zmq.Socket[bytes] = self._hb_context.socket(zmq.REP)
            try:
                hb.linger = 0
                hb.bind(self._address("hb"))
                zmq.proxy(hb, hb)
            finally:
                hb.close()

    def close(self) -> None:
        self.context.destroy(linger=0)
        self._hb_context.term()

    async def receive(self, channel: str) -> tuple[Idents, Parts]:
        """The next well-formed, correctly signed request on ``channel``: its identities and
        its raw parts (header, parent, metadata, content, buffers...)."""
        sock = self.sockets[channel]
        while True:
            frames = await sock.recv_multipart()
            idents, rest = self.session.feed_identities(frames)
            rest = [part if isinstance(part, bytes) else part.bytes for part in rest]
            if len(rest) < 5 or (self.session.auth and self.sign(rest[1:5]) != rest[0]):
                continue  # unsigned or malformed: ignore, as ipykernel does
            return idents, rest[1:]

    def sign(self, parts: Parts) -> bytes:
        return self.session.sign(parts[:4])

    def send_raw(self, channel: str, idents: Idents, parts: Parts) -> None:
        self.sockets[channel].send_multipart([*idents, DELIM, self.sign(parts), *parts], copy=False)

    def publish_raw(self, parts: Parts, kernel_id: str | None) -> None:
        """Publish a remote kernel's iopub message, under its kernel's topic."""
        msg_type = header_of(parts).get("msg_type", "")
        topic = f"kernel.{kernel_id or 'cumulus'}.{msg_type}".encode()
        self.send_raw("iopub", [topic], parts)

    def reply(
        self, channel: str, idents: Idents, parent: Header, msg_type: str, content: dict[str, Any]
    ) -> None:
        self.session.send(self.sockets[channel], msg_type, content, parent=parent, ident=idents)

    def publish(self, msg_type: str, content: dict[str, Any], parent: Header) -> None:
        self.session.send(
            self.sockets["iopub"],
            msg_type,
            content,
            parent=parent,
            ident=[f"kernel.cumulus.{msg_type}".encode()],
        )

    def status(self, state: str, parent: Header) -> None:
        self.publish("status", {"execution_state": state}, parent)

    def display(self, parent: Header, display_id: str, data: dict[str, Any], update: bool) -> None:
        """Show ``data`` in cell ``parent`` as display ``display_id`` (``update``: in place)."""
        content = {"data": data, "metadata": {}, "transient": {"display_id": display_id}}
        self.publish("update_display_data" if update else "display_data", content, parent)

    def kernel_info(self, channel: str, idents: Idents, parent: Header, banner: str) -> None:
        """Answer kernel_info ourselves (the remote kernel may not be there yet)."""
        self.status("busy", parent)
        self.reply(channel, idents, parent, "kernel_info_reply", {
            "status": "ok", "protocol_version": "5.3", "implementation": "cumulus",
            "implementation_version": "0.1.0", "language_info": LANGUAGE_INFO,
            "banner": banner, "help_links": [],
        })  # fmt: skip
        self.status("idle", parent)

    def fail(self, channel: str, idents: Idents, parent: Header, exc: CumulusError) -> None:
        """End request ``parent`` with ``exc``: busy, the error (and its reply), idle."""
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
