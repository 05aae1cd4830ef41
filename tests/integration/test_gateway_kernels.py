"""The gateway end to end on loopback: a real gateway process, real ipykernels, both WebSocket
framings, partitions per kernel, errors that say what is wrong."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from chronos import Store, discover
from tests.support.gateway import Gateway
from tests.support.kernel_ws import KernelSocket

pytestmark = pytest.mark.integration


def test_start_prints_url_and_token(gateway: Gateway) -> None:
    log = gateway.log()
    assert f"http://127.0.0.1:{gateway.port}/?token=..." in log


def test_kernelspecs_offer_cumulus_gpu(gateway: Gateway) -> None:
    specs = gateway.get("/api/kernelspecs").json()
    assert specs["default"] == "cumulus-gpu"
    spec = specs["kernelspecs"]["cumulus-gpu"]["spec"]
    assert spec["display_name"] == "Cumulus GPU (0.5 GPU, 1h)"
    assert spec["metadata"]["kernel_provisioner"]["provisioner_name"] == "cumulus-provisioner"


@pytest.mark.parametrize("protocol", ["legacy", "v1"])
def test_kernel_runs_in_its_partition(gateway: Gateway, protocol: str) -> None:
    model = gateway.start_kernel(KERNEL_GPU="0.3", KERNEL_DURATION="30m", KERNEL_USERNAME="ana")
    cumulus = model["cumulus"]
    assert cumulus["amount"] == 0.3 and cumulus["device"] == "gpu0" and cumulus["owner"] == "ana"
    assert 1790 < cumulus["seconds_left"] <= 1800
    with Store(discover({}), gateway.state) as store:
        partition = store.get(cumulus["partition_id"])
        assert partition.is_active and len(partition.processes) == 1

    async def run() -> str:
        ws = await KernelSocket.open(gateway.url, gateway.token, model["id"], protocol)
        try:
            reply = await ws.execute(
                "import os; print(os.environ['CHRONOS_PARTITION_ID'], os.environ['CHRONOS_GPU_AMOUNT'], os.environ['CUDA_VISIBLE_DEVICES'] == '')"
            )
            assert reply.reply["status"] == "ok"
            return reply.stdout
        finally:
            await ws.close()

    assert asyncio.run(run()) == f"{cumulus['partition_id']} 0.3 True\n"
    assert gateway.delete(f"/api/kernels/{model['id']}").status_code == 204
    with Store(discover({}), gateway.state) as store:
        assert store.get(cumulus["partition_id"]).state.value == "released"


@pytest.mark.parametrize("protocol", ["legacy", "v1"])
def test_binary_buffers_cross_both_ways(gateway: Gateway, protocol: str) -> None:
    model = gateway.start_kernel()
    payload = bytes(range(256)) * 1024

    async def run() -> list[bytes]:
        ws = await KernelSocket.open(gateway.url, gateway.token, model["id"], protocol)
        try:
            setup = await ws.execute(
                "def _echo(comm, msg):\n"
                "    comm.on_msg(lambda m: comm.send({'n': len(m['buffers'])}, buffers=[bytes(b) for b in m['buffers']]))\n"
                "get_ipython().kernel.comm_manager.register_target('echo', _echo)"
            )
            assert setup.reply["status"] == "ok"
            await ws.send(
                "shell", "comm_open", {"comm_id": "c1", "target_name": "echo", "data": {}}
            )
            await ws.send(
                "shell", "comm_msg", {"comm_id": "c1", "data": {}}, buffers=[payload, b"second"]
            )
            echoed = await ws.wait_for(
                lambda m: m["msg_type"] == "comm_msg" and m["channel"] == "iopub"
            )
            assert echoed["content"]["data"] == {"n": 2}
            return [bytes(b) for b in echoed["buffers"]]
        finally:
            await ws.close()

    assert asyncio.run(run()) == [payload, b"second"]


def test_interrupt_and_restart_keep_the_partition(gateway: Gateway) -> None:
    model = gateway.start_kernel()

    async def run() -> None:
        ws = await KernelSocket.open(gateway.url, gateway.token, model["id"])
        try:
            msg_id = await ws.start_execute(
                "import time; print('sleeping', flush=True); time.sleep(120)"
            )
            await ws.wait_for(lambda m: m["msg_type"] == "stream")
            assert (
                await asyncio.to_thread(gateway.post, f"/api/kernels/{model['id']}/interrupt")
            ).status_code == 204
            reply = await ws.finish(msg_id)
            assert reply.reply["status"] == "error" and reply.reply["ename"] == "KeyboardInterrupt"
            again = await ws.execute("print(6 * 7)")
            assert again.stdout == "42\n"
        finally:
            await ws.close()

    asyncio.run(run())
    restarted = gateway.post(f"/api/kernels/{model['id']}/restart")
    assert restarted.status_code == 200
    assert restarted.json()["cumulus"]["partition_id"] == model["cumulus"]["partition_id"]

    async def after_restart() -> str:
        ws = await KernelSocket.open(gateway.url, gateway.token, model["id"])
        try:
            return (await ws.execute("print('x' in dir())")).stdout
        finally:
            await ws.close()

    assert asyncio.run(after_restart()) == "False\n"


def test_bad_amounts_are_refused_with_the_chronos_message(gateway: Gateway) -> None:
    for value in ("2.3", "0.25", "lots"):
        response = gateway.post("/api/kernels", {"env": {"KERNEL_GPU": value}})
        assert response.status_code == 400
        assert (
            response.json()["message"]
            == f"Invalid GPU amount: {value}. Must be 0.1-0.9 or whole number 1-8"
        )
    response = gateway.post("/api/kernels", {"env": {"KERNEL_DURATION": "5s"}})
    assert response.status_code == 400 and response.json()["message"].startswith(
        "Invalid duration: 5s."
    )
    assert gateway.get("/api/kernels").json() == []
    assert gateway.get("/api/cumulus/partitions").json() == []


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "Invalid JSON"),
        (b"[1,2]", 400, "request body must be a JSON object"),
        (b'{"name": "nope"}', 404, "Unknown kernelspec: nope"),
        (
            b'{"env": {"KERNEL_X": "a\\u0000b"}}',
            400,
            "env KERNEL_X: value contains control characters",
        ),
        (b'{"env": {"KERNEL_X": 5}}', 400, "env KERNEL_X: value must be a string"),
        (b'{"env": ["KERNEL_X"]}', 400, "env must be a JSON object"),
        (b'{"env": {"KERNEL_X": "' + b"a" * 5000 + b'"}}', 400, "longer than 4096"),
        (b'{"env": {"K": "' + b"a" * 70000 + b'"}}', 413, "request body over 65536 bytes"),
    ],
)
def test_bad_requests_get_4xx_and_leak_nothing(
    gateway: Gateway, body: bytes, status: int, message: str
) -> None:
    response = gateway.post("/api/kernels", content=body)
    assert response.status_code == status, response.text
    assert message in response.json()["message"]
    assert gateway.get("/api/kernels").json() == []
    assert gateway.get("/api/cumulus/partitions").json() == []
    assert gateway.get("/api/cumulus/health").status_code == 200


def test_unknown_kernel_ids_are_404(gateway: Gateway) -> None:
    missing = "00000000-0000-0000-0000-000000000000"
    assert gateway.get(f"/api/kernels/{missing}").status_code == 404
    assert gateway.delete(f"/api/kernels/{missing}").status_code == 404
    assert gateway.post(f"/api/kernels/{missing}/interrupt").status_code == 404


def test_a_kernel_shut_down_while_it_restarts_is_shut_down(
    state_path: Path, tmp_path: Path
) -> None:
    """The restarter brings back a kernel whose process died; a DELETE that arrives meanwhile
    must shut it down and free its partition. (jupyter_client's shutdown read the pending
    restart's result and raised InvalidStateError: a 500, kernel and partition kept; seen in
    CI when a magic session let go of a kernel that had just died.) Driven in-process so the
    shutdown lands inside the restart every time."""
    from gateway.app import build_services
    from gateway.kernelspecs import CumulusKernelSpecManager
    from gateway.manager import CumulusKernelManager

    async def run() -> None:
        manager = CumulusKernelManager(root_dir=str(tmp_path), connection_dir=str(tmp_path))
        manager.kernel_spec_manager = CumulusKernelSpecManager()
        services = build_services(manager)
        kernel_id = await manager.start_kernel()
        try:
            restarting = asyncio.ensure_future(manager.restart_kernel(kernel_id))
            while manager.get_kernel(kernel_id).ready.done():
                await asyncio.sleep(0)  # until the restart is under way
            await manager.shutdown_kernel(kernel_id)
            assert manager.list_kernel_ids() == []
            assert services.broker.partitions() == []
            await asyncio.gather(restarting, return_exceptions=True)
        finally:
            await manager.shutdown_all(now=True)

    asyncio.run(run())


def test_the_kernel_model_follows_what_the_kernel_does(gateway: Gateway) -> None:
    """``execution_state`` and ``last_activity`` come from the kernel's IOPub (as jupyter_server
    reads it, `gateway.activity`): busy while a cell runs, idle after, activity moving on."""
    from tests.support.wait import wait_until

    model = gateway.start_kernel()
    path = f"/api/kernels/{model['id']}"
    before = gateway.get(path).json()["last_activity"]  # "starting" until a client's first cell

    async def run() -> None:
        ws = await KernelSocket.open(gateway.url, gateway.token, model["id"])
        try:
            msg_id = await ws.start_execute("import time; print('in', flush=True); time.sleep(120)")
            await ws.wait_for(lambda m: m["msg_type"] == "stream")
            busy = await asyncio.to_thread(gateway.get, path)
            assert busy.json()["execution_state"] == "busy"
            assert busy.json()["last_activity"] > before
            await asyncio.to_thread(gateway.post, f"{path}/interrupt")
            await ws.finish(msg_id)
        finally:
            await ws.close()

    asyncio.run(run())
    wait_until(lambda: gateway.get(path).json()["execution_state"] == "idle", what="idle again")
    assert gateway.delete(path).status_code == 204


def test_the_builtin_kernel_keeps_its_history_in_memory(gateway: Gateway) -> None:
    """The kernel's home goes with the kernel, so its IPython history is not written to disk;
    ``%history`` and ``In`` still answer for the kernel's life."""
    model = gateway.start_kernel()

    async def run() -> str:
        ws = await KernelSocket.open(gateway.url, gateway.token, model["id"], "v1")
        try:
            assert (await ws.execute("answer = 41 + 1")).reply["status"] == "ok"
            reply = await ws.execute(
                "import os\n"
                "ip = get_ipython()\n"
                "on_disk = os.path.join(ip.profile_dir.location, 'history.sqlite')\n"
                "print(ip.history_manager.hist_file, os.path.exists(on_disk))\n"
                "print(In[1])\n"
                "ip.run_line_magic('history', '-n 1')"
            )
            assert reply.reply["status"] == "ok", reply.stderr
            return reply.stdout
        finally:
            await ws.close()

    printed = asyncio.run(run()).splitlines()
    assert printed[0] == ":memory: False"
    assert printed[1] == "answer = 41 + 1"
    assert printed[2].split() == ["1:", "answer", "=", "41", "+", "1"]
    assert gateway.delete(f"/api/kernels/{model['id']}").status_code == 204
