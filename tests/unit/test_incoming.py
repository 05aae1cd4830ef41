"""`gateway.handlers.incoming`: what a real front end sends on a kernel WebSocket (framed by
jupyter_server's own serializers) passes; frames its connection could not read are refused."""

from __future__ import annotations

import json

import pytest
from jupyter_server.services.kernels.connection.base import (
    serialize_binary_message,
    serialize_msg_to_ws_v1,
)

from cumulus_jupyter.errors import InvalidArgument
from gateway.handlers.incoming import check_incoming

pytestmark = pytest.mark.unit

MSG = {
    "header": {"msg_id": "1", "msg_type": "execute_request", "session": "s", "username": "u",
               "date": "2026-01-01T00:00:00Z", "version": "5.3"},
    "parent_header": {}, "metadata": {}, "content": {"code": "1"},
}  # fmt: skip


def v1(parts: list[bytes], channel: str = "shell") -> bytes:
    return bytes(serialize_msg_to_ws_v1(parts, channel))


def test_what_a_front_end_sends_passes() -> None:
    check_incoming(json.dumps(MSG | {"channel": "shell"}), v1=False)
    check_incoming(serialize_binary_message(MSG | {"channel": "shell", "buffers": [b"x"]}), False)
    parts = [
        json.dumps(MSG[k]).encode() for k in ("header", "parent_header", "metadata", "content")
    ]
    check_incoming(v1(parts), v1=True)
    check_incoming(v1([*parts, b"buffer", b""]), v1=True)


@pytest.mark.parametrize(
    "frame",
    ["", "{", "[]", "null", json.dumps({"channel": ["x"]} | MSG),
     json.dumps({k: v for k, v in MSG.items() if k != "header"}),
     json.dumps(MSG | {"header": {"msg_id": "1"}}), json.dumps(MSG | {"content": "x"}),
     b"", b"\x00" * 7, b"\x00\x00\x00\x09" + b"\x00" * 8, b"\xff\xff\xff\xff" + b"\x00" * 8,
     b"\x00\x00\x00\x01\x00\x00\x00\x08\xff"],
)  # fmt: skip
def test_legacy_junk_is_refused(frame: str | bytes) -> None:
    with pytest.raises(InvalidArgument):
        check_incoming(frame, v1=False)


def test_v1_junk_is_refused() -> None:
    parts = [
        json.dumps(MSG[k]).encode() for k in ("header", "parent_header", "metadata", "content")
    ]
    good = v1(parts)
    for frame in [
        "text", b"", b"\x00" * 7, (2**60).to_bytes(8, "little") * 3,
        good[:20], good[:-40], v1(parts[:3]), v1([b"not json", *parts[1:]]),
        good.replace(b"shell", b"\xff" * 5),  # a channel that is not UTF-8
        good[:8] + good[16:24] + good[8:16] + good[24:],  # offsets out of order
    ]:  # fmt: skip
        with pytest.raises(InvalidArgument):
            check_incoming(frame, v1=True)
