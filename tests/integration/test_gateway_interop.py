"""The gateway against clients nobody here wrote: a Jupyter Server started with
``--gateway-url`` pointing at it; and the security basics (tokens, junk on the WebSocket)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets

from tests.support.gateway import Gateway
from tests.support.jupyter import jupyter_server as run_jupyter
from tests.support.kernel_ws import KernelSocket

pytestmark = pytest.mark.integration


@pytest.fixture
def jupyter_server(gateway: Gateway, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A stock Jupyter Server whose kernels live on our gateway."""
    with run_jupyter(
        "jupyter_server", tmp_path, tmp_path / "jupyter-server.log",
        f"--gateway-url={gateway.url}", f"--GatewayClient.auth_token={gateway.token}",
        "--GatewayClient.request_timeout=120",
    ) as server:  # fmt: skip
        yield server


def test_a_stock_jupyter_server_runs_kernels_through_the_gateway(
    gateway: Gateway, jupyter_server: tuple[str, str]
) -> None:
    url, token = jupyter_server
    headers = {"Authorization": f"token {token}"}
    specs = httpx.get(f"{url}/api/kernelspecs", headers=headers, timeout=60).json()
    assert "cumulus-gpu" in specs["kernelspecs"]
    started = httpx.post(
        f"{url}/api/kernels", headers=headers, json={"name": "cumulus-gpu"}, timeout=120
    )
    assert started.status_code == 201, started.text
    kernel_id = started.json()["id"]
    ours = gateway.get(
        f"/api/kernels/{kernel_id}"
    ).json()  # the front server forwarded the start to us
    assert ours["cumulus"]["amount"] == 0.5

    async def run() -> str:
        ws = await KernelSocket.open(url, token, kernel_id)  # the front server's own WebSocket
        try:
            return (await ws.execute("import os; print(os.environ['CHRONOS_PARTITION_ID'])")).stdout
        finally:
            await ws.close()

    assert asyncio.run(run()) == ours["cumulus"]["partition_id"] + "\n"
    assert (
        httpx.delete(f"{url}/api/kernels/{kernel_id}", headers=headers, timeout=60).status_code
        == 204
    )
    assert gateway.get("/api/kernels").json() == []
    assert gateway.get("/api/cumulus/partitions").json() == []


@pytest.mark.parametrize(
    "path",
    [
        "/api/kernels",
        "/api/kernelspecs",
        "/api/cumulus/health",
        "/api/cumulus/devices",
        "/api/cumulus/partitions",
        "/api/cumulus/queue",
    ],
)
def test_every_endpoint_needs_the_token(gateway: Gateway, path: str) -> None:
    assert httpx.get(gateway.url + path, timeout=30).status_code in (401, 403)
    assert httpx.get(
        gateway.url + path, headers={"Authorization": "token wrong"}, timeout=30
    ).status_code in (401, 403)
    assert httpx.post(gateway.url + "/api/kernels", json={}, timeout=30).status_code in (401, 403)


def test_the_websocket_needs_the_token(gateway: Gateway) -> None:
    model = gateway.start_kernel()

    async def run() -> int:
        url = gateway.url.replace("http", "ws") + f"/api/kernels/{model['id']}/channels"
        with pytest.raises(websockets.InvalidStatus) as info:
            await websockets.connect(url)
        return int(info.value.response.status_code)

    assert asyncio.run(run()) in (401, 403)


def test_junk_on_the_websocket_does_not_hurt_the_kernel_or_the_gateway(gateway: Gateway) -> None:
    model = gateway.start_kernel()

    async def run() -> str:
        ws = await KernelSocket.open(gateway.url, gateway.token, model["id"])
        for junk in ("not json", '{"channel": "shell"}', "[]", '{"header": 1}'):
            try:
                await ws.ws.send(junk)
            except websockets.ConnectionClosed:
                break
        await ws.close()
        ws = await KernelSocket.open(gateway.url, gateway.token, model["id"])
        try:
            return (await ws.execute("print('still here')")).stdout
        finally:
            await ws.close()

    assert asyncio.run(run()) == "still here\n"
    assert gateway.get("/api/cumulus/health").json()["kernels"] == 1


def test_per_user_tokens_scope_kernels_to_their_owner(tmp_path: Path) -> None:
    ana, bo = "ana-token-" + "a" * 20, "bo-token-" + "b" * 20
    gw = Gateway(
        tmp_path / "state" / "chronos.sqlite3", tmp_path / "gateway.log",
        f'--CumulusIdentityProvider.user_tokens={{"{ana}": "ana", "{bo}": "bo"}}',
    )  # fmt: skip
    try:

        def call(method: str, path: str, token: str, **kwargs: object) -> httpx.Response:
            return httpx.request(
                method,
                gw.url + path,
                headers={"Authorization": f"token {token}"},
                timeout=120,
                **kwargs,
            )  # type: ignore[arg-type]

        as_ana = call("POST", "/api/kernels", ana, json={})
        assert as_ana.status_code == 201 and as_ana.json()["cumulus"]["owner"] == "ana"
        kernel = as_ana.json()["id"]
        impersonation = call("POST", "/api/kernels", bo, json={"env": {"KERNEL_USERNAME": "ana"}})
        assert (impersonation.status_code, impersonation.json()["message"]) == (
            403,
            "bo may not start kernels as ana",
        )

        assert [k["id"] for k in call("GET", "/api/kernels", ana).json()] == [kernel]
        assert call("GET", "/api/kernels", bo).json() == []
        assert call("GET", "/api/cumulus/partitions", bo).json() == []
        for method, path in (
            ("GET", f"/api/kernels/{kernel}"),
            ("DELETE", f"/api/kernels/{kernel}"),
            ("POST", f"/api/kernels/{kernel}/interrupt"),
        ):
            denied = call(method, path, bo)
            assert (denied.status_code, denied.json()["message"]) == (
                403,
                f"Kernel {kernel} belongs to another user",
            )

        async def bo_connects() -> int:
            url = gw.url.replace("http", "ws") + f"/api/kernels/{kernel}/channels"
            with pytest.raises(websockets.InvalidStatus) as info:
                await websockets.connect(url, additional_headers={"Authorization": f"token {bo}"})
            return int(info.value.response.status_code)

        assert asyncio.run(bo_connects()) == 403
        assert [k["id"] for k in gw.get("/api/kernels").json()] == [kernel]  # the operator sees all
        assert call("DELETE", f"/api/kernels/{kernel}", ana).status_code == 204
    finally:
        gw.stop()
