"""Large variables take the data path (client → gateway → kernel's data port), in both
directions, with the client's connection handed to a kernel on the gateway's host or relayed
over TCP; the endpoint is authenticated, scoped, validated and capped."""

from __future__ import annotations

import os
import re
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from cumulus_jupyter.connection import GatewaySettings
from cumulus_jupyter.errors import InvalidArgument
from cumulus_jupyter.session import RemoteSession
from tests.support.gateway import Gateway, remote_session

pytestmark = pytest.mark.integration
MIB = 2**20


def _transferred(gateway: Gateway, direction: str) -> float:
    text = gateway.get("/metrics").text
    found = re.search(
        rf'^cumulus_transfer_bytes_total{{direction="{direction}"}} (\S+)$', text, re.M
    )
    return float(found.group(1)) if found else 0.0


@pytest.fixture
def session(gateway: Gateway) -> Iterator[RemoteSession]:
    with remote_session(gateway, "data") as s:
        yield s


def _round_trip(gateway: Gateway, session: RemoteSession) -> None:
    rng = np.random.default_rng(1)
    big = rng.random(4 * MIB)  # 32 MiB
    strided = rng.random((512, 1024))[:, ::3]
    assert session.data_path
    session.push({"big": big, "strided": strided, "small": [1, 2, 3]})
    assert session.data_bytes >= big.nbytes
    assert _transferred(gateway, "push") >= big.nbytes
    reply = session.execute("doubled = big * 2; s = strided.sum()", lambda m: None)
    assert reply["content"]["status"] == "ok"
    values, missing = session.pull(["doubled", "s", "small", "nothing"])
    assert missing == ["nothing"]
    np.testing.assert_array_equal(values["doubled"], big * 2)
    assert values["s"] == pytest.approx(strided.sum())
    assert values["small"] == [1, 2, 3]
    assert _transferred(gateway, "pull") >= big.nbytes


def test_large_values_are_handed_to_the_kernel_on_this_host(gateway: Gateway) -> None:
    session = RemoteSession("handover", GatewaySettings(gateway.url, gateway.token))
    session.start("0.2", "10m", lambda line: None)
    assert session.kernel is not None
    unix = Path(tempfile.gettempdir()) / f"cumulus-data-{os.getuid()}" / f"{session.kernel.id}.sock"
    try:
        assert unix.is_socket(), "the kernel opened no Unix data socket"
        _round_trip(gateway, session)
    finally:
        session.release()
    assert not unix.exists()  # gone with the kernel


def test_without_unix_sockets_the_gateway_relays_over_tcp(tmp_path: Path) -> None:
    gw = Gateway(
        tmp_path / "state" / "chronos.sqlite3", tmp_path / "gateway.log",
        "--CumulusKernelManager.data_socket_dir=",
    )  # fmt: skip
    try:
        s = RemoteSession("tcp", GatewaySettings(gw.url, gw.token))
        s.start("0.2", "10m", lambda line: None)
        try:
            _round_trip(gw, s)
        finally:
            s.release()
    finally:
        gw.stop()


def test_a_push_over_the_cap_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    gw = Gateway(
        tmp_path / "state" / "chronos.sqlite3", tmp_path / "gateway.log",
        f"--CumulusGateway.max_transfer_bytes={8 * MIB}",
    )  # fmt: skip
    try:
        s = RemoteSession("cap", GatewaySettings(gw.url, gw.token))
        s.start("0.2", "10m", lambda line: None)
        try:
            s.push({"kept": 1})
            # each name's size counts its in-band pickle too (bytes, lists: were "0 MiB")
            with pytest.raises(
                InvalidArgument,
                match=r"^Push of 19\.0 MiB \(big 16\.0 MiB, notes 3\.0 MiB, kept 0 KiB\) is "
                r"over the gateway's cap of 8 MiB",
            ):
                s.push({"big": np.zeros(2 * MIB), "kept": 2, "notes": bytes(3 * MIB)})
            values, _ = s.pull(["kept", "big"])
            assert values == {"kept": 1}  # nothing of the refused push arrived
            # the gateway enforces it too, whatever the client does
            tid = uuid.uuid4().hex
            assert s.kernel is not None
            response = httpx.put(
                f"{gw.url}/api/cumulus/kernels/{s.kernel.id}/data/{tid}",
                headers=gw.headers() | {"X-Cumulus-Frames": str(9 * MIB)},
                content=b"\0" * (9 * MIB), timeout=60,
            )  # fmt: skip
            assert response.status_code == 413
            assert "at most 8 MiB" in response.json()["message"]
        finally:
            s.release()
    finally:
        gw.stop()


def test_the_data_endpoint_checks_token_ids_and_lengths(
    gateway: Gateway, session: RemoteSession
) -> None:
    assert session.kernel is not None
    base = f"{gateway.url}/api/cumulus/kernels/{session.kernel.id}/data"
    tid = uuid.uuid4().hex
    frames = {"X-Cumulus-Frames": "4"}
    assert httpx.put(f"{base}/{tid}", headers=frames, content=b"abcd").status_code == 401
    auth = gateway.headers()
    cases = [
        ("PUT", f"{base}/not-hex", auth | frames, b"abcd", 400, "Invalid transfer id"),
        ("PUT", f"{base}/{tid}", auth | {"X-Cumulus-Frames": "5"}, b"abcd", 400, "Content-Length"),
        ("PUT", f"{base}/{tid}", auth | {"X-Cumulus-Frames": "x"}, b"abcd", 400, "byte counts"),
        ("GET", f"{base}/{tid}", auth, None, 404, "no data staged"),
        ("GET", f"{gateway.url}/api/cumulus/kernels/{uuid.uuid4()}/data/{tid}", auth, None,
         404, "No kernel"),
    ]  # fmt: skip
    for method, url, headers, body, status, message in cases:
        response = httpx.request(method, url, headers=headers, content=body, timeout=60)
        assert response.status_code == status, (url, response.text)
        assert message in response.json()["message"]
    # a wrong transfer leaves the kernel's data port working
    values, _ = session.pull([])
    session.push({"after": np.ones(MIB)})
    values, _ = session.pull(["after"])
    assert values["after"].sum() == MIB


def test_when_the_kernels_data_port_is_gone_transfers_fall_back_to_messages(
    gateway: Gateway, session: RemoteSession
) -> None:
    code = "from cumulus_jupyter.agent import dataserver; dataserver._OPEN.pop().close()"
    reply = session.execute(code, lambda m: None)
    assert reply["content"]["status"] == "ok"
    big = np.arange(2 * MIB, dtype=np.int64)
    session.push({"big": big})
    assert not session.data_path
    assert "not listening" in session.data_error
    values, _ = session.pull(["big"])
    np.testing.assert_array_equal(values["big"], big)
