"""Quotas and extensions through a real gateway with per-user tokens: a request over a quota is
a 429 naming the limit and what the user holds (the operator's token is exempt); a partition is
extended by its owner or the operator within ``max_duration``, warned again before its new end;
bad quotas stop start-up with one line."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.gateway import Gateway, set_expiry
from tests.support.kernel_ws import KernelSocket
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

ALICE, BOB = "alice-token-" + "a" * 20, "bob-token-" + "b" * 20
SHORT = "cumulus-short"  # a kernelspec whose partitions last at most 30 min


def short_kernelspec(share: Path) -> None:
    """An on-disk kernelspec with its own max_duration, as an operator would write one."""
    folder = share / "kernels" / SHORT
    folder.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "chronos.confine", "ipykernel_launcher", "-f",
                 "{connection_file}"],
        "display_name": "Cumulus GPU (short)",
        "language": "python",
        "metadata": {"kernel_provisioner": {
            "provisioner_name": "cumulus-provisioner",
            "config": {"gpu": "0.1", "duration": "10m", "max_duration": "30m"},
        }},
    }  # fmt: skip
    (folder / "kernel.json").write_text(json.dumps(spec))


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("quotas")
    short_kernelspec(tmp / "share")
    gw = Gateway(
        tmp / "state" / "chronos.sqlite3", tmp / "gateway.log",
        f'--CumulusIdentityProvider.user_tokens={{"{ALICE}": "alice", "{BOB}": "bob"}}',
        "--CumulusKernelManager.max_gpu_per_user=0.5",
        "--CumulusKernelManager.max_kernels_per_user=2",
        "--CumulusKernelManager.max_duration=2h",
        env={"JUPYTER_PATH": str(tmp / "share")},
    )  # fmt: skip
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture(autouse=True)
def no_kernels_left(gateway: Gateway) -> Iterator[None]:
    yield
    for kernel in gateway.get("/api/kernels").json():
        gateway.delete(f"/api/kernels/{kernel['id']}")


def call(gw: Gateway, method: str, path: str, token: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(
        method, gw.url + path, headers={"Authorization": f"token {token}"}, timeout=120, **kwargs
    )


def start(gw: Gateway, token: str, name: str = "cumulus-gpu", **env: str) -> httpx.Response:
    return call(gw, "POST", "/api/kernels", token, json={"name": name, "env": env})


def started(gw: Gateway, token: str, **env: str) -> dict[str, Any]:
    response = start(gw, token, **env)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def extend(gw: Gateway, partition_id: str, token: str, body: Any) -> httpx.Response:
    path = f"/api/cumulus/partitions/{partition_id}/extend"
    if isinstance(body, bytes):
        return call(gw, "POST", path, token, content=body)
    return call(gw, "POST", path, token, json=body)


# -- quotas -----------------------------------------------------------------------------------


def test_over_max_gpu_per_user_is_429_naming_the_limit_and_what_the_user_holds(
    gateway: Gateway,
) -> None:
    started(gateway, ALICE, KERNEL_GPU="0.4", KERNEL_DURATION="10m")
    refused = start(gateway, ALICE, KERNEL_GPU="0.2", KERNEL_DURATION="10m")
    assert refused.status_code == 429
    assert refused.json() == {
        "message": "max_gpu_per_user is 0.5 GPU; alice holds 0.4 GPU in 1 partition; this "
        "request asks 0.2. To go on, ask for at most 0.1 GPU or release a partition "
        "(%cumulus release, or shut a kernel down)",
        "reason": "ResourceExhausted",
    }
    assert len(call(gateway, "GET", "/api/cumulus/partitions", ALICE).json()) == 1
    # bob's own quota is untouched by alice's
    assert start(gateway, BOB, KERNEL_GPU="0.2", KERNEL_DURATION="10m").status_code == 201


def test_a_job_over_a_quota_is_refused_when_submitted_and_not_stored(gateway: Gateway) -> None:
    started(gateway, ALICE, KERNEL_GPU="0.4", KERNEL_DURATION="10m")
    job = {"code": "print(1)", "gpu": "0.2", "duration": "10m"}
    refused = call(gateway, "POST", "/api/cumulus/jobs", ALICE, json=job)
    assert refused.status_code == 429, refused.text
    assert refused.json()["message"].startswith("max_gpu_per_user is 0.5 GPU; alice holds 0.4")
    too_long = call(gateway, "POST", "/api/cumulus/jobs", ALICE, json=job | {"gpu": "0.1",
                    "duration": "3h"})  # fmt: skip
    assert too_long.status_code == 429, too_long.text
    assert too_long.json()["message"].startswith("max_duration is 2h")
    assert call(gateway, "GET", "/api/cumulus/jobs", ALICE).json() == []
    # the operator's token is exempt, as for kernels
    exempt = gateway.post("/api/cumulus/jobs", job | {"owner": "alice", "duration": "3h"})
    assert exempt.status_code == 201, exempt.text
    gateway.delete(f"/api/cumulus/jobs/{exempt.json()['id']}")


def test_the_operator_token_is_exempt_from_quotas(gateway: Gateway) -> None:
    started(gateway, ALICE, KERNEL_GPU="0.4", KERNEL_DURATION="10m")
    for_alice = gateway.start_kernel(
        KERNEL_GPU="0.2", KERNEL_USERNAME="alice", KERNEL_DURATION="3h"
    )
    assert for_alice["cumulus"]["owner"] == "alice"
    # alice now holds 0.6 GPU (over her 0.5) in 2 kernels, which her own requests count
    refused = start(gateway, ALICE, KERNEL_GPU="0.1", KERNEL_DURATION="10m")
    assert refused.status_code == 429
    assert refused.json()["message"].startswith("max_kernels_per_user is 2; alice holds 2 kernels")
    gateway.delete(f"/api/kernels/{for_alice['id']}")
    started(gateway, ALICE, KERNEL_GPU="0.1", KERNEL_DURATION="10m")


def test_over_max_kernels_per_user_is_429(gateway: Gateway) -> None:
    for _ in range(2):
        started(gateway, ALICE, KERNEL_GPU="0.1", KERNEL_DURATION="10m")
    refused = start(gateway, ALICE, KERNEL_GPU="0.1", KERNEL_DURATION="10m")
    assert refused.status_code == 429
    assert refused.json()["message"].startswith(
        "max_kernels_per_user is 2; alice holds 2 kernels. Shut one down"
    )


def test_a_batch_job_counts_against_the_quotas_of_its_owner(gateway: Gateway) -> None:
    for _ in range(2):
        started(gateway, ALICE, KERNEL_GPU="0.1", KERNEL_DURATION="10m")
    body = {"code": "print(1)", "gpu": "0.1", "duration": "10m"}
    refused = call(gateway, "POST", "/api/cumulus/jobs", ALICE, json=body)
    assert refused.status_code == 429, refused.text
    assert refused.json()["message"].startswith("max_kernels_per_user is 2; alice holds 2 kernels")
    by_operator = gateway.post("/api/cumulus/jobs", {**body, "owner": "alice"}).json()
    done = wait_until(
        lambda: (j := gateway.get(f"/api/cumulus/jobs/{by_operator['id']}").json())["state"]
        in ("completed", "failed") and j,
        what="the operator's job to end",
    )  # fmt: skip
    assert done["state"] == "completed", done


def test_over_max_duration_global_and_per_kernelspec_is_429(gateway: Gateway) -> None:
    refused = start(gateway, ALICE, KERNEL_GPU="0.1", KERNEL_DURATION="3h")
    assert (refused.status_code, refused.json()["message"]) == (
        429, "max_duration is 2h; this request asks 3h. Ask for at most 2h (extend it later if "
        "need be)",
    )  # fmt: skip
    refused = start(gateway, ALICE, name=SHORT, KERNEL_DURATION="1h")
    assert (refused.status_code, refused.json()["message"]) == (
        429, "kernelspec cumulus-short's max_duration is 30m; this request asks 1h. Ask for at "
        "most 30m (extend it later if need be)",
    )  # fmt: skip
    assert start(gateway, ALICE, name=SHORT).status_code == 201  # its own 10 min fit


# -- extend -----------------------------------------------------------------------------------


def test_the_owner_extends_a_partition_and_the_kernel_model_shows_the_new_expiry(
    gateway: Gateway,
) -> None:
    model = started(gateway, ALICE, KERNEL_GPU="0.1", KERNEL_DURATION="10m")
    before = model["cumulus"]
    answer = extend(gateway, before["partition_id"], ALICE, {"duration": "30m"})
    assert answer.status_code == 200, answer.text
    after = answer.json()
    assert after["id"] == before["partition_id"] and after["state"] == "active"
    assert after["expires_at"] == before["expires_at"] + 1800
    listed = call(gateway, "GET", "/api/cumulus/partitions", ALICE).json()
    assert [p["expires_at"] for p in listed] == [after["expires_at"]]
    kernel = call(gateway, "GET", f"/api/kernels/{model['id']}", ALICE).json()
    assert kernel["cumulus"]["expires_at"] == after["expires_at"]
    again = extend(gateway, after["id"], ALICE, {"duration": 600})  # seconds, as a number
    assert again.json()["expires_at"] == after["expires_at"] + 600


def test_extending_someone_elses_unknown_or_ended_partition_is_refused(
    gateway: Gateway,
) -> None:
    model = started(gateway, ALICE, KERNEL_GPU="0.1", KERNEL_DURATION="10m")
    partition_id = model["cumulus"]["partition_id"]
    denied = extend(gateway, partition_id, BOB, {"duration": "30m"})
    assert (denied.status_code, denied.json()) == (
        403, {"message": f"Partition {partition_id} belongs to another user",
              "reason": "PermissionDenied"},
    )  # fmt: skip
    unknown = extend(gateway, "p-000000000000", ALICE, {"duration": "30m"})
    assert (unknown.status_code, unknown.json()["message"]) == (
        404,
        "Unknown partition: p-000000000000",
    )
    assert gateway.delete(f"/api/kernels/{model['id']}").status_code == 204
    ended = extend(gateway, partition_id, ALICE, {"duration": "30m"})
    assert ended.status_code == 410
    assert ended.json()["message"].startswith(f"Partition {partition_id} was released at ")
    assert (
        "(kernel shut down); an ended partition cannot be extended. Start a new kernel"
        in (ended.json()["message"])
    )


def test_an_expired_partition_is_410(gateway: Gateway) -> None:
    model = started(gateway, ALICE, KERNEL_GPU="0.1", KERNEL_DURATION="10m")
    partition_id = model["cumulus"]["partition_id"]
    set_expiry(gateway, partition_id, -1)
    ended = extend(gateway, partition_id, ALICE, {"duration": "30m"})
    assert ended.status_code == 410
    assert ended.json()["message"].startswith(f"Partition {partition_id} expired at ")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"duration": "soon"},
            'Invalid duration: soon. Must be 60 s to 86400 s (24h), e.g. 90, "30m", "2h"',
        ),
        ({"duration": "-5m"}, "Invalid duration: -5m. Must be 60 s"),
        ({"duration": 0}, "Invalid duration: 0. Must be 60 s"),
        ({"duration": "25h"}, "Invalid duration: 25h. Must be 60 s"),
        ({"duration": True}, 'duration must be a string like "30m" or a number of seconds'),
        ({"duration": None}, 'duration must be a string like "30m" or a number of seconds'),
        ({}, 'Say how long to extend by: {"duration": "30m"}'),
        ([1, 2], "request body must be a JSON object"),
        (b"\xff\xfe not json", "Invalid JSON in body of request"),
        (b"duration=30m", "Invalid JSON in body of request"),
    ],
)
def test_a_malformed_extension_is_400_saying_what_is_expected(
    gateway: Gateway, body: Any, message: str
) -> None:
    model = started(gateway, ALICE, KERNEL_GPU="0.1", KERNEL_DURATION="10m")
    partition = model["cumulus"]
    refused = extend(gateway, partition["partition_id"], ALICE, body)
    assert refused.status_code == 400 and refused.json()["message"].startswith(message)
    kernel = call(gateway, "GET", f"/api/kernels/{model['id']}", ALICE).json()
    assert kernel["cumulus"]["expires_at"] == partition["expires_at"]  # nothing changed


def test_an_extension_past_max_duration_is_409_and_the_operator_is_exempt(
    gateway: Gateway,
) -> None:
    model = started(gateway, ALICE, KERNEL_GPU="0.1", KERNEL_DURATION="10m")
    partition = model["cumulus"]
    refused = extend(gateway, partition["partition_id"], ALICE, {"duration": "2h"})
    assert (refused.status_code, refused.json()) == (
        409, {"message": f"Cannot extend partition {partition['partition_id']} by 2h: it would "
              "last 2h10m in all and max_duration is 2h; it can be extended by 1h50m at most",
              "reason": "Conflict"},
    )  # fmt: skip
    up_to = extend(gateway, partition["partition_id"], ALICE, {"duration": "1h50m"})
    assert up_to.status_code == 200
    by_operator = extend(gateway, partition["partition_id"], gateway.token, {"duration": "1h"})
    assert by_operator.status_code == 200
    assert by_operator.json()["expires_at"] == partition["expires_at"] + 6600 + 3600


def test_an_extension_that_would_delay_a_queued_request_is_409(gateway: Gateway) -> None:
    held = gateway.start_kernel(KERNEL_GPU="0.6", KERNEL_DURATION="10m", KERNEL_USERNAME="alice")
    queued: dict[str, httpx.Response] = {}
    waiter = threading.Thread(
        target=lambda: queued.setdefault(
            "r", start(gateway, BOB, KERNEL_GPU="0.5", KERNEL_LAUNCH_TIMEOUT="120")
        )
    )
    waiter.start()
    try:
        wait_until(lambda: gateway.get("/api/cumulus/queue").json(), what="bob's request to queue")
        refused = extend(gateway, held["cumulus"]["partition_id"], ALICE, {"duration": "30m"})
        assert refused.status_code == 409, refused.text
        assert "(user bob, 0.5 GPU) is reserved to start in" in refused.json()["message"]
    finally:
        gateway.delete(f"/api/kernels/{held['id']}")
        waiter.join(timeout=120)
    assert queued["r"].status_code == 201


def test_a_kernelspecs_max_duration_bounds_its_kernels_extensions(gateway: Gateway) -> None:
    model = start(gateway, ALICE, name=SHORT).json()  # 10 min of at most 30
    refused = extend(gateway, model["cumulus"]["partition_id"], ALICE, {"duration": "25m"})
    assert refused.status_code == 409
    assert refused.json()["message"].endswith(
        "it would last 35m in all and kernelspec cumulus-short's max_duration is 30m; it can "
        "be extended by 20m at most"
    )


def test_after_an_extension_the_warnings_come_again_and_say_how_to_extend(
    gateway: Gateway,
) -> None:
    model = started(gateway, ALICE, KERNEL_GPU="0.1", KERNEL_DURATION="1h")
    partition_id = model["cumulus"]["partition_id"]

    async def run() -> list[dict[str, Any]]:
        ws = await KernelSocket.open(gateway.url, ALICE, model["id"], "v1")
        try:
            assert (await ws.execute("x = 1")).reply["status"] == "ok"
            set_expiry(gateway, partition_id, 250)  # inside the 5-minute warning
            first = await ws.wait_for(lambda m: m["msg_type"] == "stream")
            await ws.wait_for(lambda m: m["msg_type"] == "cumulus")  # the same warning's
            answer = extend(gateway, partition_id, ALICE, {"duration": "30m"})
            assert answer.status_code == 200, answer.text
            set_expiry(gateway, partition_id, 250)  # the new end is near in its turn
            second = await ws.wait_for(
                lambda m: m["msg_type"] == "cumulus" and m["content"]["event"] == "expiry_warning"
            )
            return [first, second]
        finally:
            await ws.close()

    first, second = asyncio.run(run())
    text = first["content"]["text"]
    assert f"partition {partition_id} (0.1 GPU on gpu0) expires in 4m" in text
    assert (
        f"extend it: `%cumulus extend 30m` (in the notebook), `cumulus extend {partition_id} 30m`"
        in text
    )
    assert second["content"]["partition"]["partition_id"] == partition_id
    assert second["content"]["seconds_left"] <= 300


# -- start-up ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (
            "--CumulusKernelManager.max_gpu_per_user=0",
            "--CumulusKernelManager.max_gpu_per_user must be a GPU amount of at least 0.1 (e.g. "
            "1 or 0.5; 0.1 is the smallest a request can ask), not 0; leave it unset for no limit",
        ),
        (
            "--CumulusKernelManager.max_gpu_per_user=0.05",  # would refuse every request
            "not 0.05; leave it unset for no limit",
        ),
        (
            "--CumulusKernelManager.max_gpu_per_user=abc",  # traitlets' own check: exit 2 too
            "The 'max_gpu_per_user' trait of a CumulusKernelManager instance expected a float, "
            "not the str 'abc'.",
        ),
        (
            "--CumulusKernelManager.queue_policy=lifo",
            "expected any of ['fifo', 'backfill', 'fair'], not the str 'lifo'.",
        ),
        (
            "--CumulusKernelManager.max_kernels_per_user=-2",
            "--CumulusKernelManager.max_kernels_per_user must be a positive number of kernels, "
            "not -2; leave it unset for no limit",
        ),
        (
            "--CumulusKernelManager.max_duration=-1h",
            "--CumulusKernelManager.max_duration: Invalid duration: -1h. Must be 60 s to 86400 s",
        ),
    ],
)
def test_a_bad_quota_stops_start_up_with_one_clear_line(
    tmp_path: Path, setting: str, message: str
) -> None:
    done = subprocess.run(
        [str(Path(sys.executable).with_name("cumulus-gateway")), "--allow-root", "--port=0",
         setting],
        capture_output=True, text=True, timeout=120,
        env=os.environ | {"CHRONOS_STATE": str(tmp_path / "state.sqlite3")},
    )  # fmt: skip
    assert done.returncode == 2  # InvalidArgument's exit code
    critical = [line for line in done.stderr.splitlines() if "[C " in line]
    assert len(critical) == 1 and message in critical[0], done.stderr
    assert "Traceback" not in done.stderr
