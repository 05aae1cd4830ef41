"""Callback tokens on their own: one use, one kernel, until the launch deadline; refused with a
reason otherwise. And the launcher's side: the command it becomes, the address it reports."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cumulus_jupyter.agent import launcher
from cumulus_jupyter.errors import DeadlineExceeded, InvalidArgument, PermissionDenied
from cumulus_jupyter.protocol import env
from gateway.callback import Callbacks

pytestmark = pytest.mark.unit

INFO: dict[str, Any] = {
    "ip": "127.0.0.1", "key": "secret", "transport": "tcp", "signature_scheme": "hmac-sha256",
    **{f"{c}_port": 40000 + i for i, c in enumerate(("shell", "iopub", "stdin", "control", "hb"))},
}  # fmt: skip


def test_a_token_is_good_once_for_its_kernel_only() -> None:
    async def run() -> None:
        callbacks = Callbacks()
        token = callbacks.issue("k1", 60)
        other = callbacks.issue("k2", 60)
        assert len(token) >= 43 and token != other  # 256 bits, url-safe
        with pytest.raises(PermissionDenied, match="wrong callback token"):
            callbacks.accept("k1", other, {"connection_info": INFO})
        with pytest.raises(PermissionDenied, match="not issued"):
            callbacks.accept("k3", token, {"connection_info": INFO})
        callbacks.accept("k1", token, {"connection_info": INFO, "data_port": 40010})
        assert (await callbacks.wait("k1"))["data_port"] == 40010
        with pytest.raises(PermissionDenied, match="already used"):
            callbacks.accept("k1", token, {"connection_info": INFO})

    asyncio.run(run())


def test_an_expired_token_is_refused_and_the_wait_ends_at_the_deadline() -> None:
    async def run() -> None:
        callbacks = Callbacks()
        token = callbacks.issue("k1", 0.05)
        with pytest.raises(DeadlineExceeded, match="never called back"):
            await callbacks.wait("k1")
        with pytest.raises(PermissionDenied, match="expired"):
            callbacks.accept("k1", token, {"connection_info": INFO})

    asyncio.run(run())


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({}, "connection_info must have"),
        ({"connection_info": {**INFO, "shell_port": 0}}, "shell_port must be a port"),
        ({"connection_info": {**INFO, "hb_port": "80"}}, "hb_port must be a port"),
        ({"connection_info": INFO, "data_port": 70000}, "data_port must be a port"),
    ],
)
def test_a_malformed_report_is_refused_without_spending_the_token(
    payload: dict[str, Any], message: str
) -> None:
    async def run() -> None:
        callbacks = Callbacks()
        token = callbacks.issue("k1", 60)
        with pytest.raises(ValueError, match=message):
            callbacks.accept("k1", token, payload)
        callbacks.accept("k1", token, {"connection_info": INFO})  # still good

    asyncio.run(run())


def test_the_launcher_points_the_kernel_at_its_own_connection_file() -> None:
    gateway_argv = ["-m", "chronos.confine", "ipykernel_launcher", "-f", "/gw/kernel-1.json"]
    command = launcher.kernel_argv(gateway_argv, "/work/kernel-1.json")
    assert command[1:] == [
        "-m",
        "chronos.confine",
        "ipykernel_launcher",
        "-f",
        "/work/kernel-1.json",
    ]
    assert launcher.kernel_argv([], "/work/k.json")[1:] == [
        "-m",
        "ipykernel_launcher",
        "-f",
        "/work/k.json",
    ]


def test_the_launcher_reports_the_address_its_route_to_the_gateway_leaves_from(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CUMULUS_KERNEL_IP", raising=False)
    assert launcher.reachable_ip("http://127.0.0.1:8888/api") == "127.0.0.1"
    monkeypatch.setenv("CUMULUS_KERNEL_IP", "10.1.2.3")
    assert launcher.reachable_ip("http://127.0.0.1:8888/api") == "10.1.2.3"


def test_the_launcher_says_why_without_its_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(env.CALLBACK_URL, raising=False)
    with pytest.raises(SystemExit) as exited:
        launcher.main([])
    assert exited.value.code == InvalidArgument.exit_code
    assert "CUMULUS_CALLBACK_URL and CUMULUS_CALLBACK_TOKEN must be set" in capsys.readouterr().err
