"""A session whose WebSocket drops while its kernel lives reconnects and keeps its variables."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cumulus_jupyter import loop
from cumulus_jupyter.connection import GatewaySettings
from cumulus_jupyter.session import RemoteSession
from tests.support.gateway import Gateway
from tests.support.kernel_ws import KernelSocket
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration


def test_a_dropped_link_to_a_live_kernel_reconnects(gateway: Gateway) -> None:
    session = RemoteSession("link", GatewaySettings(gateway.url, gateway.token))
    session.start("0.2", "10m", lambda line: None)
    try:
        session.push({"kept": 41})
        assert session.kernel is not None
        first_reader = session._reader
        loop.call(session.kernel.close())  # the link drops; the kernel runs on
        # a new reader on a new WebSocket
        wait_until(lambda: session._reader is not first_reader, 60, "a new reader")
        assert session.alive, session.lost
        outputs: list[str] = []
        reply = session.execute(
            "print(kept + 1)", lambda m: outputs.append(m["content"].get("text", ""))
        )
        assert reply["content"]["status"] == "ok"
        assert outputs == ["42\n"]
    finally:
        session.release()


def test_a_reply_names_the_cells_last_output_so_the_cell_ends_without_waiting_for_idle(
    gateway: Gateway,
) -> None:
    """The agent names, in the execute reply, the last IOPub output the cell sent: the client
    ends the cell on the reply and that output (no extra message, no wait for ``idle``)."""
    from cumulus_jupyter.protocol import code

    session = RemoteSession("last-output", GatewaySettings(gateway.url, gateway.token))
    session.start("0.2", "10m", lambda line: None)
    try:
        quiet = session.execute("pass", lambda m: None)
        assert quiet["metadata"][code.METADATA_KEY] == {code.LAST_OUTPUT: None}

        outputs: list[dict[str, Any]] = []
        cell = "from IPython.display import display\nfor i in range(40):\n    print(i)\n"
        cell += "    display(i) if i % 10 == 0 else None\ni"
        reply = session.execute(cell, outputs.append)
        assert reply["content"]["status"] == "ok"
        kinds = [m["msg_type"] for m in outputs]
        assert "status" not in kinds and "execute_input" not in kinds
        assert kinds[-1] == "execute_result"  # the cell's value, its last output
        named = reply["metadata"][code.METADATA_KEY][code.LAST_OUTPUT]
        assert named == outputs[-1]["header"]["msg_id"]
        printed = "".join(m["content"]["text"] for m in outputs if m["msg_type"] == "stream")
        assert printed.split() == [str(i) for i in range(40)]
    finally:
        session.release()


def test_what_a_cell_binds_comes_back_inside_its_reply_as_binary_buffers(
    gateway: Gateway,
) -> None:
    """An execute's ``pull`` is answered in the reply itself: described in its metadata, the
    pickles its buffers (no user expression, no base64); what is over the inline budget is
    named for a pull of its own; a cell that failed brings nothing back this way."""
    from cumulus_jupyter.protocol import code

    session = RemoteSession("pulled", GatewaySettings(gateway.url, gateway.token))
    session.start("0.2", "10m", lambda line: None)
    try:
        pull = {"names": ["a", "big", "gone"], "watched": {}, "max_bytes": None,
                "inline_max": code.INLINE_MAX_BYTES}  # fmt: skip
        reply = session.execute("a = b'x' * 300_000\nbig = bytes(2**21)", lambda m: None, pull=pull)
        assert reply["content"]["status"] == "ok"
        assert reply["content"]["user_expressions"] == {}
        answer = reply["metadata"][code.METADATA_KEY][code.PULLED]
        assert answer["frames"] == len(reply["buffers"]) == 1
        pulled = session.inline_pulled(reply)
        assert pulled is not None
        assert pulled.values == {"a": b"x" * 300_000}
        assert (pulled.missing, pulled.deferred) == (["gone"], ["big"])

        failed = session.execute("c = 1\nraise ValueError('no')", lambda m: None, pull=pull)
        assert failed["content"]["status"] == "error"
        assert code.PULLED not in failed["metadata"][code.METADATA_KEY]
        assert session.inline_pulled(failed) is None
    finally:
        session.release()


def test_only_the_sessions_own_executes_skip_ipykernels_pre_reply_sleep(gateway: Gateway) -> None:
    """ipykernel sleeps 0.5 ms before each execute reply; the agent lifts that for the
    executes whose reply names their last output, and keeps it for every other client's."""
    session = RemoteSession("no-sleep", GatewaySettings(gateway.url, gateway.token))
    session.start("0.2", "10m", lambda line: None)
    try:
        outputs: list[str] = []
        reply = session.execute(
            "print(get_ipython().kernel._execute_sleep)",
            lambda m: outputs.append(m["content"].get("text", "")),
        )
        assert reply["content"]["status"] == "ok"
        assert outputs == ["0.0\n"]
        assert session.kernel is not None

        async def other_client() -> str:  # a front end of its own on the same kernel
            ws = await KernelSocket.open(gateway.url, gateway.token, session.kernel.id)  # type: ignore[union-attr]
            try:
                return (await ws.execute("print(get_ipython().kernel._execute_sleep)")).stdout
            finally:
                await ws.close()

        assert asyncio.run(other_client()) == "0.0005\n"
    finally:
        session.release()
