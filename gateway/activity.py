"""What a kernel is doing, read from its IOPub as jupyter_server does (``last_activity``, and
``execution_state`` from status messages), for culling and the kernel model.

jupyter_server's watcher deserializes every IOPub message in full on a second subscription:
the HMAC checked, every date in the header, parent header and metadata parsed, and a status
message twice; that is the gateway's busiest code on a cell that prints nothing (three such
messages a cell). Here the two headers are read as JSON and only a status message's content.
The signature is not checked: only the kernel publishes on its IOPub socket, and what it says
of itself is all that is read.
"""

from __future__ import annotations

import json
from typing import Any

from jupyter_client.session import DELIM
from jupyter_server._tz import utcnow


def watch(manager: Any, kernel_id: str) -> None:
    """Start watching ``kernel_id``'s IOPub (``MappingKernelManager.start_watching_activity``)."""
    kernel = manager._kernels[kernel_id]
    kernel.reason = ""
    kernel.last_activity = utcnow()
    kernel._activity_stream = kernel.connect_iopub()
    tracked = manager.track_message_type

    def record(msg_list: list[Any]) -> None:
        parts = _parts(msg_list)
        if parts is None:
            return
        header, parent = _json(parts[0]), _json(parts[1])
        msg_type, parent_type = header.get("msg_type"), parent.get("msg_type")
        if tracked(msg_type) or tracked(parent_type) or kernel.execution_state == "busy":
            manager.last_kernel_activity = kernel.last_activity = utcnow()
        if msg_type == "status":
            state = _json(parts[3]).get("execution_state")
            if not isinstance(state, str):
                return
            if tracked(parent_type):
                kernel.execution_state = state
            elif kernel.execution_state == "starting" and state != "starting":
                kernel.execution_state = "idle"  # jupyter_server's normalisation

    kernel._activity_stream.on_recv(record)


def _parts(msg_list: list[Any]) -> list[bytes] | None:
    """The header, parent header, metadata and content of a raw IOPub message (after the
    topic and the delimiter and signature), or None for one that has not got them."""
    frames = [bytes(getattr(f, "bytes", f)) for f in msg_list]
    try:
        start = frames.index(DELIM) + 2  # the signature follows the delimiter
    except ValueError:
        return None
    parts = frames[start : start + 4]
    return parts if len(parts) == 4 else None


def _json(part: bytes) -> dict[str, Any]:
    try:
        value = json.loads(part)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
