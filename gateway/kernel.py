"""`CumulusServerKernelManager`: jupyter_server's manager of one kernel, carrying the services.

The mapping kernel manager (`gateway.manager`) creates one per kernel, started or adopted, and
hands it the gateway's `Services`; the kernel's provisioner (`gateway.provisioner`), whose
``parent`` it is, takes them from there.

The streams it opens to the kernel's shell, control and stdin sockets (for each client's
WebSocket) are `EagerStream` streams: a client's message goes to the kernel as it is read, not one
turn of the event loop later.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import zmq
from jupyter_server.services.kernels.kernelmanager import ServerKernelManager
from traitlets import Instance
from zmq.eventloop.zmqstream import ZMQStream

from cumulus_jupyter.errors import Internal
from gateway.services import Services


class EagerStream(ZMQStream):
    """A `ZMQStream` that writes a message to its socket at once when nothing is queued ahead of
    it and the socket takes it without blocking; else it queues it as any ZMQStream does.

    A plain ZMQStream only queues, and writes on the event loop's next turn: every execute
    request relayed from a WebSocket waited that turn, behind whatever else the gateway had to
    do (measured side by side, in turns, on one machine: a warm ``%%cumulus`` ``pass`` cell
    0.4 ms faster, 7.0 against 7.4 ms). Order is kept: a message is written at once only when
    the queue is empty; and after writing, the stream checks its socket for a message that came
    in meanwhile (a send on a dual-use socket can consume the read edge of its ZMQ_FD, which
    would leave that message unread: ipykernel's "wedge"). A message written at once calls no
    ``on_send`` callback (jupyter_server registers none on these streams)."""

    def send_multipart(
        self,
        msg: Sequence[Any],
        flags: int = 0,
        copy: bool = True,
        track: bool = False,
        callback: Any = None,
        **kwargs: Any,
    ) -> None:
        queued = getattr(self, "_send_queue", None)
        if (
            callback is None
            and not track
            and not kwargs
            and queued is not None
            and queued.empty()
            and not self.closed()
        ):
            try:
                self.socket.send_multipart(msg, flags | zmq.NOBLOCK, copy=copy)
            except zmq.Again:  # the socket is full: queue it
                pass
            else:
                # the send may have taken the edge of the socket's (edge-triggered) ZMQ_FD
                # for a message that came in meanwhile: look, as the stream does after its
                # own sends, so that such a message is read now, not stranded
                self._rebuild_io_state()
                return
        super().send_multipart(msg, flags, copy, track, callback, **kwargs)


def _eager(stream: Any) -> Any:
    stream.__class__ = EagerStream  # the same stream, registered once with the loop
    return stream


class CumulusServerKernelManager(ServerKernelManager):
    """One kernel's manager, with the gateway's services."""

    services = Instance(Services, allow_none=True, help="The gateway's services.")

    def connect_shell(self, identity: bytes | None = None) -> Any:
        return _eager(super().connect_shell(identity=identity))

    def connect_control(self, identity: bytes | None = None) -> Any:
        return _eager(super().connect_control(identity=identity))

    def connect_stdin(self, identity: bytes | None = None) -> Any:
        return _eager(super().connect_stdin(identity=identity))

    def require_services(self) -> Services:
        if self.services is None:
            raise Internal(f"kernel manager of {self.kernel_id} was created without services")
        return self.services
