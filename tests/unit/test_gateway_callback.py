"""The gateway's side of a container kernel's callback: a malformed report is `InvalidArgument`
(400) saying what is wrong and does not spend the token; the protocol's own check is the one the
gateway applies (`cumulus_jupyter.protocol.callback.checked`)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cumulus_jupyter.errors import InvalidArgument, PermissionDenied
from cumulus_jupyter.protocol import callback
from gateway.callback import Callbacks

pytestmark = pytest.mark.unit

INFO: dict[str, Any] = {
    "ip": "127.0.0.1", "key": "secret", "transport": "tcp", "signature_scheme": "hmac-sha256",
    **{f"{c}_port": 40000 + i for i, c in enumerate(("shell", "iopub", "stdin", "control", "hb"))},
}  # fmt: skip


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([], "the callback body must be a JSON object"),
        ("connection_info", "the callback body must be a JSON object"),
        ({"connection_info": "x"}, "connection_info must have ip, key, shell_port"),
        ({"connection_info": {k: v for k, v in INFO.items() if k != "key"}}, "must have"),
        ({"connection_info": {**INFO, "iopub_port": 65536}}, "iopub_port must be a port"),
        ({"connection_info": {**INFO, "stdin_port": True}}, "stdin_port must be a port"),
        ({"connection_info": {**INFO, "control_port": -1}}, "control_port must be a port"),
        ({"connection_info": INFO, "data_port": "1"}, "data_port must be a port"),
    ],
)
def test_a_malformed_report_is_invalid_and_leaves_the_token_good(
    payload: object, message: str
) -> None:
    async def run() -> dict[str, Any]:
        callbacks = Callbacks()
        token = callbacks.issue("k1", 60)
        with pytest.raises(InvalidArgument, match=message):
            callbacks.accept("k1", token, payload)
        callbacks.accept("k1", token, callback.payload(INFO, 40010))
        return await callbacks.wait("k1")

    reported = asyncio.run(run())
    assert reported == {"connection_info": INFO, "data_port": 40010}


def test_a_token_is_checked_before_the_report() -> None:
    async def run() -> None:
        callbacks = Callbacks()
        callbacks.issue("k1", 60)
        with pytest.raises(PermissionDenied, match="wrong callback token"):
            callbacks.accept("k1", "not-it", {"malformed": True})

    asyncio.run(run())


def test_a_cancelled_launch_voids_its_token() -> None:
    async def run() -> None:
        callbacks = Callbacks()
        token = callbacks.issue("k1", 60)
        callbacks.cancel("k1")
        with pytest.raises(PermissionDenied, match="not issued"):
            callbacks.accept("k1", token, {"connection_info": INFO})

    asyncio.run(run())
