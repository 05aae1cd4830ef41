"""Two JupyterHub users, each at their own single-user server, with no token set up by hand.

Each runs a Cumulus GPU kernel and a ``%%cumulus`` cell in their server (the clients find the
gateway through the spawner's ``CUMULUS_GATEWAY_URL`` and authenticate with the server's own
``JUPYTERHUB_API_TOKEN``), then, with that token, sees and touches only their own kernels,
partitions, jobs, logs, transfers and checkpoints; quotas count per hub user; the operator sees
everything.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import websockets

from tests.hub.conftest import GPU_KERNEL, MAX_KERNELS, USERS, Hub
from tests.support.gateway import Gateway
from tests.support.kernel_ws import KernelSocket
from tests.support.wait import wait_until

# the first test also waits for the hub and both servers to start (a hang guard, not a measure)
pytestmark = [pytest.mark.hub, pytest.mark.timeout(300)]

READ_TOKEN = 'import os; print(os.environ["JUPYTERHUB_API_TOKEN"], end="")'
MAGIC_CELL = (
    '%%cumulus --gpu 0.1 --duration 10m\nimport os\nwhere = os.environ["CHRONOS_PARTITION_ID"]'
)
REMOTE_ENV = (
    'import os; print(os.environ["CHRONOS_PARTITION_ID"], '
    'os.environ.get("JUPYTERHUB_API_TOKEN", "-"), end="")'
)


@dataclass
class Seat:
    """A hub user at their server: the token the hub gave it, and what their clients hold."""

    user: str
    server_token: str  # the server's JUPYTERHUB_API_TOKEN, read from a kernel in it
    magic_partition: str  # the %%cumulus cell's
    kernel_partition: str  # the Cumulus GPU kernel's
    remote_hub_token: str  # JUPYTERHUB_API_TOKEN as the remote kernel sees it ("-": unset)


async def in_server(hub: Hub, user: str, kernel_name: str, *cells: str) -> list[str]:
    """Start a kernel in the user's own server (through the hub's proxy), run the cells in it,
    and return each cell's stdout; `AssertionError` with the error if one fails."""
    base, token = f"{hub.url}/user/{user}", hub.user_token(user)
    async with httpx.AsyncClient(headers={"Authorization": f"token {token}"}, timeout=120) as http:
        response = await http.post(f"{base}/api/kernels", json={"name": kernel_name})
        assert response.status_code == 201, response.text
        kernel_id = response.json()["id"]
    socket = await KernelSocket.open(base, token, kernel_id)
    try:
        outputs, seen = [], []
        for cell in cells:
            reply = await socket.execute(cell, timeout=120)
            seen.append([m["content"] for m in reply.outputs])
            assert reply.reply["status"] == "ok", (cell, reply.reply["evalue"], seen)
            assert reply.stderr == "", (cell, seen)  # the magic says a CumulusError there
            outputs.append(reply.stdout)
        return outputs
    finally:
        await socket.close()


async def sit_down(hub: Hub, user: str) -> Seat:
    token, _, _, where = await in_server(
        hub, user, "python3", READ_TOKEN, "%load_ext cumulus_jupyter", MAGIC_CELL, "print(where)"
    )
    (remote,) = await in_server(hub, user, GPU_KERNEL, REMOTE_ENV)
    kernel_partition, remote_token = remote.split()
    return Seat(user, token, where.strip(), kernel_partition, remote_token)


@pytest.fixture(scope="module")
def seats(hub: Hub) -> dict[str, Seat]:
    async def both() -> list[Seat]:
        return list(await asyncio.gather(*(sit_down(hub, user) for user in USERS)))

    return {seat.user: seat for seat in asyncio.run(both())}


def call(gw: Gateway, seat: Seat, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"token {seat.server_token}"}
    return httpx.request(method, gw.url + path, headers=headers, timeout=120, **kwargs)


def kernels_of(gw: Gateway, seat: Seat) -> list[dict[str, Any]]:
    response = call(gw, seat, "GET", "/api/kernels")
    assert response.status_code == 200, response.text
    return list(response.json())


def test_each_users_clients_run_on_the_gateway_as_that_user(
    gateway: Gateway, seats: dict[str, Seat]
) -> None:
    for seat in seats.values():
        kernels = kernels_of(gateway, seat)
        assert {k["cumulus"]["owner"] for k in kernels} == {seat.user}
        assert {k["cumulus"]["partition_id"] for k in kernels} == {
            seat.magic_partition,
            seat.kernel_partition,
        }
        partitions = call(gateway, seat, "GET", "/api/cumulus/partitions").json()
        assert {(p["id"], p["owner"]) for p in partitions} == {
            (seat.magic_partition, seat.user),
            (seat.kernel_partition, seat.user),
        }
        assert seat.remote_hub_token == "-"  # the hub token stays in the user's server
    assert len(gateway.get("/api/kernels").json()) == 4  # the operator sees everyone's


def test_another_users_kernels_and_partitions_are_refused(
    gateway: Gateway, seats: dict[str, Seat]
) -> None:
    alice, bob = seats["alice"], seats["bob"]
    for kernel in kernels_of(gateway, bob):
        for method, path in (
            ("GET", f"/api/kernels/{kernel['id']}"),
            ("DELETE", f"/api/kernels/{kernel['id']}"),
            ("POST", f"/api/kernels/{kernel['id']}/interrupt"),
            ("GET", f"/api/cumulus/kernels/{kernel['id']}/data/t-1"),
        ):
            denied = call(gateway, alice, method, path)
            assert (denied.status_code, denied.json()["message"]) == (
                403,
                f"Kernel {kernel['id']} belongs to another user",
            ), (method, path)
        assert asyncio.run(ws_status(gateway, alice, kernel["id"])) == 403
    extend = call(
        gateway, alice, "POST", f"/api/cumulus/partitions/{bob.kernel_partition}/extend",
        json={"duration": "5m"},
    )  # fmt: skip
    assert extend.status_code == 403
    assert len(kernels_of(gateway, bob)) == 2  # nothing of bob's was touched


async def ws_status(gw: Gateway, seat: Seat, kernel_id: str) -> int:
    url = gw.url.replace("http", "ws", 1) + f"/api/kernels/{kernel_id}/channels"
    headers = {"Authorization": f"token {seat.server_token}"}
    with pytest.raises(websockets.InvalidStatus) as info:
        await websockets.connect(url, additional_headers=headers)
    return int(info.value.response.status_code)


def test_a_hub_user_cannot_start_kernels_as_someone_else(
    gateway: Gateway, seats: dict[str, Seat]
) -> None:
    body = {"name": "cumulus-gpu", "env": {"KERNEL_USERNAME": "bob", "KERNEL_GPU": "0.1"}}
    response = call(gateway, seats["alice"], "POST", "/api/kernels", json=body)
    assert (response.status_code, response.json()["message"]) == (
        403,
        "alice may not start kernels as bob",
    )


def test_tokens_the_hub_does_not_vouch_for_are_refused(gateway: Gateway, hub: Hub) -> None:
    no_access = hub.admin(
        "POST", "/users/alice/tokens", json={"scopes": ["read:users:name!user=alice"]}
    ).json()["token"]  # alice's, but without access to the cumulus service
    for token in ("not-a-hub-token", hub.admin_token, no_access):
        response = httpx.get(
            gateway.url + "/api/kernels", headers={"Authorization": f"token {token}"}
        )
        assert response.status_code == 401, token  # unauthenticated


def test_quotas_count_per_hub_user(gateway: Gateway, seats: dict[str, Seat]) -> None:
    alice = seats["alice"]  # holds 2 of her MAX_KERNELS = 3; 4 are running in all
    body = {"name": "cumulus-gpu", "env": {"KERNEL_GPU": "0.1", "KERNEL_DURATION": "2m"}}
    third = call(gateway, alice, "POST", "/api/kernels", json=body)
    assert third.status_code == 201, third.text
    try:
        fourth = call(gateway, alice, "POST", "/api/kernels", json=body)
        assert fourth.status_code == 429
        assert f"max_kernels_per_user is {MAX_KERNELS}" in fourth.json()["message"]
    finally:
        assert (
            call(gateway, alice, "DELETE", f"/api/kernels/{third.json()['id']}").status_code == 204
        )


def test_jobs_and_their_logs_belong_to_their_user(
    gateway: Gateway, hub: Hub, seats: dict[str, Seat]
) -> None:
    submit = (
        "import json, os, subprocess, sys\n"
        "cli = os.path.join(os.path.dirname(sys.executable), 'cumulus')\n"
        "done = subprocess.run([cli, 'submit', '--json', '-c', 'print(\"hi from the hub\")', "
        "'--gpu', '0.1', '--duration', '2m'], capture_output=True, text=True)\n"
        "print(done.stdout if done.returncode == 0 else done.stderr, end='')"
    )
    (out,) = asyncio.run(in_server(hub, "alice", "python3", submit))
    job = json.loads(out)
    alice, bob = seats["alice"], seats["bob"]
    assert job["owner"] == "alice"
    assert [j["id"] for j in call(gateway, alice, "GET", "/api/cumulus/jobs").json()] == [job["id"]]
    assert call(gateway, bob, "GET", "/api/cumulus/jobs").json() == []
    for path in (f"/api/cumulus/jobs/{job['id']}", f"/api/cumulus/jobs/{job['id']}/logs"):
        assert call(gateway, bob, "GET", path).status_code == 403
    assert call(gateway, bob, "DELETE", f"/api/cumulus/jobs/{job['id']}").status_code == 403

    def final_state() -> str | None:
        state = str(call(gateway, alice, "GET", f"/api/cumulus/jobs/{job['id']}").json()["state"])
        return state if state in ("completed", "failed", "cancelled") else None

    assert wait_until(final_state, 90, "alice's job to finish") == "completed"
    log = call(gateway, alice, "GET", f"/api/cumulus/jobs/{job['id']}/logs")
    assert "hi from the hub" in log.text


def test_checkpoints_belong_to_their_user(
    gateway: Gateway, hub: Hub, seats: dict[str, Seat]
) -> None:
    """alice saves a checkpoint from a ``%%cumulus`` cell in her server; bob, from his own
    server's cell and with his token, can neither list, read nor resume it; alice can."""
    save = (
        "%%cumulus --gpu 0.1 --duration 10m\nfrom cumulus_jupyter import checkpoint\n"
        "saved = checkpoint.save('hub-run', {'w': 41}, wait_l2=True)['version']"
    )
    alice, bob = seats["alice"], seats["bob"]
    resume = (
        "%%cumulus --gpu 0.1 --duration 10m\nfrom cumulus_jupyter import checkpoint\n"
        "try:\n    got = checkpoint.load('hub-run')['w']\nexcept Exception as exc:\n"
        "    got = type(exc).__name__\n"
    )
    alices = asyncio.run(  # saved, then resumed in a new remote kernel (a new session)
        in_server(hub, "alice", "python3", "%load_ext cumulus_jupyter", save,
                  "%cumulus release", resume, "print(got)", "%cumulus release")
    )  # fmt: skip
    assert alices[4].strip() == "41", alices
    listed = call(gateway, alice, "GET", "/api/cumulus/checkpoints")
    assert listed.status_code == 200, listed.text
    assert "hub-run" in json.dumps(listed.json())
    assert "hub-run" not in json.dumps(call(gateway, bob, "GET", "/api/cumulus/checkpoints").json())
    assert call(gateway, bob, "GET", "/api/cumulus/checkpoints/hub-run").status_code == 404
    assert call(gateway, alice, "GET", "/api/cumulus/checkpoints/hub-run").status_code == 200
    bobs = asyncio.run(
        in_server(hub, "bob", "python3", "%load_ext cumulus_jupyter", resume, "print(got)",
                  "%cumulus release")
    )  # fmt: skip
    assert bobs[2].strip() not in ("41", ""), bobs  # an error: bob has no such checkpoint


@pytest.fixture(autouse=True)
def _no_stray_kernels(gateway: Gateway) -> Iterator[None]:
    before = {k["id"] for k in gateway.get("/api/kernels").json()}
    yield
    for kernel in gateway.get("/api/kernels").json():
        if before and kernel["id"] not in before:
            gateway.delete(f"/api/kernels/{kernel['id']}")
