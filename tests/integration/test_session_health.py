"""A session whose WebSocket drops while its kernel lives reconnects and keeps its variables."""

from __future__ import annotations

import pytest

from cumulus_jupyter import loop
from cumulus_jupyter.connection import GatewaySettings
from cumulus_jupyter.session import RemoteSession
from tests.support.gateway import Gateway
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
