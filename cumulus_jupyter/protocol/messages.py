"""Jupyter messages as raw parts, and the ``v1.kernel.websocket.jupyter.org`` framing.

A message travels as its four JSON parts (header, parent header, metadata, content) followed by
its binary buffers; nothing is decoded on the way but the headers needed for routing.
"""

from __future__ import annotations

import json
from typing import Any

V1 = "v1.kernel.websocket.jupyter.org"
Parts = list[bytes]
Message = dict[str, Any]


def encode_v1(channel: str, parts: Parts) -> bytes:
    """Frame raw message parts (header, parent, metadata, content, buffers...) for the WS."""
    name = channel.encode()
    offsets = [8 * (2 + len(parts) + 1)]
    offsets.append(offsets[-1] + len(name))
    for part in parts:
        offsets.append(offsets[-1] + len(part))
    head = len(offsets).to_bytes(8, "little") + b"".join(o.to_bytes(8, "little") for o in offsets)
    return b"".join([head, name, *parts])


def decode_v1(frame: bytes) -> tuple[str, Parts]:
    """The channel and raw parts of one v1 frame (the inverse of `encode_v1`). The last offset
    is the end of the last part (it used to be read as the start of one more, empty, part,
    which then reached every front end as a spurious empty buffer)."""
    count = int.from_bytes(frame[:8], "little")
    offsets = [int.from_bytes(frame[8 * (i + 1) : 8 * (i + 2)], "little") for i in range(count)]
    channel = frame[offsets[0] : offsets[1]].decode()
    return channel, [frame[offsets[i] : offsets[i + 1]] for i in range(1, count - 1)]


def header_of(parts: Parts) -> dict[str, Any]:
    return json.loads(parts[0]) if parts else {}


def parent_of(parts: Parts) -> dict[str, Any]:
    return json.loads(parts[1]) if len(parts) > 1 else {}


def content_of(parts: Parts) -> dict[str, Any]:
    return json.loads(parts[3]) if len(parts) > 3 else {}


def msg_type_of(parts: Parts) -> str:
    return str(header_of(parts).get("msg_type", ""))


def comm_id_of(parts: Parts) -> str | None:
    """The comm a ``comm_msg`` / ``comm_close`` belongs to; None for other messages."""
    if msg_type_of(parts) in ("comm_msg", "comm_close"):
        return str(content_of(parts).get("comm_id", "")) or None
    return None


def parse(
    parts: Parts, header: dict[str, Any] | None = None, parent: dict[str, Any] | None = None
) -> Message:
    """A message dict (as jupyter_client gives them) from raw parts, buffers kept raw; the
    ``header`` and ``parent`` already decoded for routing are not decoded again."""
    header = json.loads(parts[0]) if header is None else header
    parent = json.loads(parts[1]) if parent is None else parent
    metadata, content = json.loads(parts[2]), json.loads(parts[3])
    return {
        "header": header, "parent_header": parent, "metadata": metadata, "content": content,
        "buffers": parts[4:], "msg_type": header.get("msg_type"),
    }  # fmt: skip
