"""Message framing against jupyter_server's own v1 serializer (what the gateway sends and
expects), and the header accessors the proxy kernel and the session route by."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jupyter_client.session import Session
from jupyter_server.services.kernels.connection.base import (
    deserialize_msg_from_ws_v1,
    serialize_msg_to_ws_v1,
)

from cumulus_jupyter.protocol import messages

pytestmark = pytest.mark.unit

CHANNELS = st.sampled_from(["shell", "iopub", "stdin", "control"])
PARTS = st.lists(st.binary(max_size=64), min_size=4, max_size=9)


@given(CHANNELS, PARTS)
def test_frames_are_what_jupyter_server_makes(channel: str, parts: list[bytes]) -> None:
    assert messages.encode_v1(channel, parts) == serialize_msg_to_ws_v1(parts, channel)


@given(CHANNELS, PARTS)
def test_frames_jupyter_server_makes_decode_to_the_same_parts(
    channel: str, parts: list[bytes]
) -> None:
    assert messages.decode_v1(serialize_msg_to_ws_v1(parts, channel)) == (channel, parts)
    assert deserialize_msg_from_ws_v1(messages.encode_v1(channel, parts)) == (channel, parts)


def raw(session: Session, msg_type: str, content: dict[str, object], **kw: object) -> list[bytes]:
    msg = session.msg(msg_type, content, **kw)  # type: ignore[arg-type]
    return [session.pack(msg[k]) for k in ("header", "parent_header", "metadata", "content")]


def test_routing_reads_headers_parents_and_comm_ids() -> None:
    session = Session(key=b"k")
    request = session.msg("execute_request", {"code": "1"})
    reply = raw(session, "execute_reply", {"status": "ok"}, parent=request)
    assert messages.msg_type_of(reply) == "execute_reply"
    assert messages.parent_of(reply)["msg_id"] == request["header"]["msg_id"]
    assert messages.content_of(reply) == {"status": "ok"}
    assert messages.comm_id_of(reply) is None
    comm = raw(session, "comm_msg", {"comm_id": "c1", "data": {}})
    assert messages.comm_id_of(comm) == "c1"
    assert messages.header_of([]) == {} and messages.parent_of(reply[:1]) == {}


def test_parse_keeps_buffers_raw() -> None:
    session = Session(key=b"k")
    parts = [*raw(session, "comm_msg", {"comm_id": "c", "data": {"x": 1}}), b"\x00\x01", b"abc"]
    message = messages.parse(parts)
    assert message["msg_type"] == "comm_msg"
    assert message["content"]["data"] == {"x": 1}
    assert message["buffers"] == [b"\x00\x01", b"abc"]
    assert json.loads(parts[0]) == message["header"]
