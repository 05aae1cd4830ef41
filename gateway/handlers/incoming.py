"""What a client may send on a kernel's channels WebSocket, checked before jupyter_server's
connection reads it (`check_incoming`, called by the channels handler's ``on_message``).

jupyter_server trusts its front end: a frame that is not a Jupyter message raises inside its
``handle_incoming_message`` (a ``KeyError``, a ``struct.error``, a JSON error; a v1 frame whose
offset count says 2**60 builds a list that long, on the event loop). Here each framing is
checked for what that reader needs, and anything else is `InvalidArgument`: the handler then
closes the socket with 1007 (invalid payload) and the reason. Contents are the kernel's business.

- legacy text: a JSON object with a string ``channel`` (or none) and ``header``,
  ``parent_header``, ``metadata``, ``content`` objects; the header has a ``msg_type``;
- legacy binary: a part count, in-range offsets, the first part such an object (UTF-8);
- ``v1.kernel.websocket.jupyter.org``: an offset count, in-range ascending offsets, a UTF-8
  channel name, at least the four message parts, the header part a JSON object.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from cumulus_jupyter.errors import InvalidArgument

MAX_PARTS = 4096  # header, parent, metadata, content and the buffers of one message
_DICT_PARTS = ("header", "parent_header", "metadata", "content")


def check_incoming(message: str | bytes, v1: bool) -> None:
    """`InvalidArgument` for a frame the connection would fail to read; else nothing."""
    if v1:
        _check_v1(message)
    elif isinstance(message, str):
        _check_legacy(_json(message.encode(), "message"))
    else:
        _check_legacy(_json(_first_binary_part(message), "message"))


def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InvalidArgument(f"the {what} is not UTF-8 JSON") from None


def _check_legacy(msg: Any) -> None:
    if not isinstance(msg, dict):
        raise InvalidArgument("a message must be a JSON object")
    if not isinstance(msg.get("channel", ""), str | None):
        raise InvalidArgument("a message's channel must be a string")
    for part in _DICT_PARTS:
        if not isinstance(msg.get(part), dict):
            raise InvalidArgument(f"a message needs a {part} object")
    _check_header(msg["header"])


def _check_header(header: Any) -> None:
    if not isinstance(header, dict) or not isinstance(header.get("msg_type"), str):
        raise InvalidArgument("a message's header needs a msg_type")


def _first_binary_part(message: bytes) -> bytes:
    if len(message) < 8:
        raise InvalidArgument("a binary message is shorter than its part count and an offset")
    (count,) = struct.unpack("!i", message[:4])
    if not 1 <= count <= MAX_PARTS or len(message) < 4 * (count + 1):
        raise InvalidArgument(f"a binary message's part count {count} is out of range")
    offsets = struct.unpack(f"!{count}I", message[4 : 4 * (count + 1)])
    _check_offsets([*offsets, len(message)], 4 * (count + 1), len(message))
    end = offsets[1] if count > 1 else len(message)
    return message[offsets[0] : end]


def _check_offsets(offsets: list[int], start: int, size: int) -> None:
    if offsets[0] < start or offsets[-1] > size or offsets != sorted(offsets):
        raise InvalidArgument("a message's offsets are out of order or out of range")


def _check_v1(message: str | bytes) -> None:
    if not isinstance(message, bytes):
        raise InvalidArgument("the v1 protocol sends binary frames only")
    count = int.from_bytes(message[:8], "little") if len(message) >= 8 else 0
    if not 6 <= count <= MAX_PARTS + 2 or len(message) < 8 * (count + 1):
        raise InvalidArgument(f"a v1 message's offset count {count} is out of range")
    offsets = [int.from_bytes(message[8 * i : 8 * (i + 1)], "little") for i in range(1, count + 1)]
    _check_offsets(offsets, 8 * (count + 1), len(message))
    try:
        message[offsets[0] : offsets[1]].decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument("a v1 message's channel is not UTF-8") from None
    _check_header(_json(message[offsets[1] : offsets[2]], "header"))
