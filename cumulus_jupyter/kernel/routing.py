"""Message routing bookkeeping: who asked what, and which answers the front end must not see.

Pure state, no sockets and no I/O, so each rule can be tested on its own:

- `Router`: the ZMQ identities each front-end request came from (so its replies go back
  there), the execute requests still waiting for their shell reply (so they can fail when the
  kernel dies), and the busy/idle filter (one busy ... idle per request, none for requests the
  gateway makes itself);
- `OwnRequests`: the proxy's own requests, comms and kernel_info probes to the remote kernel,
  whose answers resolve a future instead of reaching the front end.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any

from cumulus_jupyter.protocol.messages import Parts, content_of, msg_type_of, parent_of

#: how many requests' identities are kept; the oldest are forgotten first
MAX_ROUTES = 10_000

Idents = list[bytes]
Header = dict[str, Any]


class Router:
    """Routes from the front end's requests to its sockets, and the status bookkeeping.

    The proxy calls `remember` for every request the front end sends, `said_busy` when it
    publishes a busy of its own for a request, and asks `route_reply` / `hides_status` for each
    shell/control/stdin or status message the remote kernel sends.
    """

    def __init__(self, max_routes: int = MAX_ROUTES) -> None:
        self.max_routes = max_routes
        self._routes: OrderedDict[str, Idents] = OrderedDict()
        self._outstanding: dict[str, tuple[Idents, Header]] = {}  # unanswered executes
        self._busy_sent: set[str] = set()  # requests we said busy for before the remote did

    def remember(self, channel: str, idents: Idents, header: Header) -> None:
        """A request arrived from the front end on ``channel`` from ``idents``."""
        msg_id = header.get("msg_id", "")
        self._routes[msg_id] = idents
        if channel == "shell" and header.get("msg_type") == "execute_request":
            self._outstanding[msg_id] = (idents, header)
        while len(self._routes) > self.max_routes:
            self._routes.popitem(last=False)

    def idents_of(self, msg_id: str) -> Idents | None:
        """Where request ``msg_id`` came from; None when unknown (or long forgotten)."""
        return self._routes.get(msg_id)

    def route_reply(self, channel: str, parts: Parts) -> Idents | None:
        """Where a shell/control/stdin message of the remote kernel goes; None: nowhere. A shell
        message answers its execute request, which is no longer outstanding."""
        parent_id = parent_of(parts).get("msg_id", "")
        if channel == "shell":
            self._outstanding.pop(parent_id, None)
        return self._routes.get(parent_id)

    def answered(self, msg_id: str) -> None:
        """Execute request ``msg_id`` was answered by the proxy itself: no longer outstanding."""
        self._outstanding.pop(msg_id, None)

    def take_outstanding(self) -> list[tuple[Idents, Header]]:
        """The execute requests still waiting for a reply (now forgotten): the kernel died."""
        outstanding, self._outstanding = self._outstanding, {}
        return list(outstanding.values())

    def said_busy(self, msg_id: str) -> None:
        """The proxy published busy for request ``msg_id`` itself (progress lines follow)."""
        self._busy_sent.add(msg_id)

    def hides_status(self, parts: Parts) -> bool:
        """True for a status the front end must not see: the remote kernel's busy for a request
        we already said busy for, or the busy/idle of a request the gateway itself made (its
        kernel_info probe on every WebSocket connect), which would land mid-cell."""
        parent_id = parent_of(parts).get("msg_id", "")
        if not parent_id:
            return False  # starting/restarting: everyone's news
        if parent_id not in self._routes:
            return True
        if parent_id in self._busy_sent and content_of(parts).get("execution_state") == "busy":
            self._busy_sent.discard(parent_id)
            return True
        return False


class OwnRequests:
    """The proxy's own requests to the remote kernel; their answers are resolved, never shown.

    A request is answered by its shell reply, a comm by its first ``comm_msg`` (its close is
    swallowed too), a probe by any iopub message for it (proof the kernel's iopub reaches us).
    The proxy asks `resolve` first for every message the remote kernel sends.
    """

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[Parts]] = {}
        self._comms: set[str] = set()
        self._probes: set[str] = set()

    def request(self, msg_id: str) -> asyncio.Future[Parts]:
        """Wait for the reply to request ``msg_id`` (shell, control or stdin)."""
        return self._expect(msg_id)

    def comm(self, comm_id: str) -> asyncio.Future[Parts]:
        """Wait for the first ``comm_msg`` of comm ``comm_id``; hide all of that comm's traffic."""
        self._comms.add(comm_id)
        return self._expect(comm_id)

    def probe(self, msg_id: str) -> asyncio.Future[Parts]:
        """Wait for the first iopub message of request ``msg_id``."""
        self._probes.add(msg_id)
        return self._expect(msg_id)

    def forget(self, key: str) -> None:
        """Stop waiting for ``key`` (a probe that timed out)."""
        self._waiting.pop(key, None)
        self._probes.discard(key)

    def _expect(self, key: str) -> asyncio.Future[Parts]:
        future: asyncio.Future[Parts] = asyncio.get_running_loop().create_future()
        self._waiting[key] = future
        return future

    def resolve(self, channel: str, parts: Parts) -> bool:
        """True when the message answers (or belongs to) one of ours: it must not be shown."""
        if not self._waiting and not self._comms:
            return False
        key = parent_of(parts).get("msg_id", "")
        if channel == "iopub" and msg_type_of(parts) in ("comm_msg", "comm_close"):
            key = content_of(parts).get("comm_id", "")
            if key in self._comms and key not in self._waiting:
                return True  # the rest of a comm of ours (its close)
        if key not in self._waiting:
            return False
        if self._answers(key, channel, parts):
            self._probes.discard(key)
            future = self._waiting.pop(key)
            if not future.done():
                future.set_result(parts)
        return True

    def _answers(self, key: str, channel: str, parts: Parts) -> bool:
        if key in self._probes:
            return channel == "iopub"  # the kernel's iopub reaches us again
        return channel != "iopub" or msg_type_of(parts) == "comm_msg"
