"""Auth on every endpoint, walked from ``gateway/openapi.yaml`` (a new endpoint in the document
is covered without editing this file): each operation without a token, or with a wrong one, is
401; with bob's token on alice's kernel, partition, job or transfer it is 403 or 404. Only an
operation whose ``security`` does not name the user ``token`` (the callback, which takes a
kernel's single-use token) is exempt, and it refuses a request without its own credential."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fuzz.conftest import (
    ALICE,
    BOB,
    assert_clean,
    call,
    delete_all_kernels,
    load_spec,
    operations,
    takes_user_token,
)
from tests.support.gateway import Gateway
from tests.support.wait import wait_until

pytestmark = pytest.mark.fuzz

SPEC = load_spec()
OPERATIONS = [(path, method) for path, method, _ in operations(SPEC)]
#: what the `alices` fixture makes: the path parameters that name something a user owns
OWNED = ("kernel_id", "partition_id", "job_id", "transfer_id")
#: operations that take a user's token and name something a user owns
OWNED_OPERATIONS = [
    (path, method) for path, method, op in operations(SPEC)
    if takes_user_token(SPEC, op)
    and any(p["in"] == "path" and p["name"] in OWNED for p in op["parameters"])
]  # fmt: skip
NOBODY = {  # path parameters naming nothing that exists
    "kernel_id": str(uuid.uuid4()),
    "partition_id": "p-000000000000",
    "job_id": "j-000000000000",
    "transfer_id": "t" * 16,
    "kernel_name": "no-such-kernelspec",
    "name": "no-such-checkpoint",  # a checkpoint's name, version and file
    "version": "1",
    "file": "manifest.json",
}


def operation(path: str, method: str) -> dict[str, Any]:
    return next(op for p, m, op in operations(SPEC) if (p, m) == (path, method))


def fill(path: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        path = path.replace("{" + name + "}", value)
    assert "{" not in path, f"no value for a parameter of {path}: add it to the walk's values"
    return path


def request(gw: Gateway, method: str, path: str, token: str | None) -> int:
    if path.endswith("/channels"):  # the WebSocket handshake, as a plain GET
        headers = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                   "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}  # fmt: skip
        return call(gw, method, path, token, headers=headers).status_code
    body = b"{}" if method in ("post", "put") else None
    return call(gw, method, path, token, content=body).status_code


@pytest.fixture(scope="module")
def alices(gateway: Gateway) -> Iterator[dict[str, str]]:
    """Alice's kernel, its partition, a job of hers: what bob must not reach."""
    kernel = call(gateway, "POST", "/api/kernels", ALICE, json={"env": {"KERNEL_GPU": "0.1"}})
    assert kernel.status_code == 201, kernel.text
    job = call(gateway, "POST", "/api/cumulus/jobs", ALICE,
               json={"code": "print('hi')", "gpu": "0.1", "duration": "1m"})  # fmt: skip
    assert job.status_code == 201, job.text
    try:
        yield {
            "kernel_id": kernel.json()["id"],
            "partition_id": kernel.json()["cumulus"]["partition_id"],
            "job_id": job.json()["id"],
            "transfer_id": "t" * 16,
        }
    finally:
        call(gateway, "DELETE", f"/api/cumulus/jobs/{job.json()['id']}", ALICE)
        delete_all_kernels(gateway)


@pytest.mark.parametrize(("path", "method"), OPERATIONS)
def test_no_token_is_401(gateway: Gateway, path: str, method: str) -> None:
    op = operation(path, method)
    url = fill(path, NOBODY)
    if not takes_user_token(SPEC, op):
        assert request(gateway, method, url, None) in (401, 403), "no credential, accepted"
        return
    assert request(gateway, method, url, None) == 401
    assert request(gateway, method, url, "not-a-token-" + "x" * 20) == 401


@pytest.mark.parametrize(("path", "method"), OWNED_OPERATIONS)
def test_other_users_resources_are_403_or_404(
    gateway: Gateway, alices: dict[str, str], path: str, method: str
) -> None:
    op = operation(path, method)
    owned = [p["name"] for p in op["parameters"] if p["in"] == "path" and p["name"] in alices]
    assert owned and set(alices) == set(OWNED)  # the fixture makes what OWNED names
    status = request(gateway, method, fill(path, alices), BOB)
    assert status in (403, 404), f"bob got {status} on alice's {', '.join(owned)}"
    if method != "delete":  # what alice owns is still hers and still there
        assert request(gateway, "get", fill("/api/kernels/{kernel_id}", alices), ALICE) == 200


def test_walk_covers_every_route(gateway: Gateway) -> None:
    """Every route the gateway's handlers serve is in the document, so the walk reaches it."""
    import importlib
    import re

    from gateway.handlers import SERVICES
    from gateway.handlers.server import NoSuchEndpoint

    documented = [fill(p, NOBODY) for p in SPEC["paths"]]
    for service in SERVICES:
        for pattern, handler, *_ in importlib.import_module(service).default_handlers:
            if handler is NoSuchEndpoint:  # what no route matches
                continue
            assert any(re.fullmatch(pattern, p) for p in documented), f"{pattern} not documented"


def test_gateway_clean_after_walk(gateway: Gateway) -> None:
    delete_all_kernels(gateway)
    wait_until(lambda: gateway.get("/api/kernels").json() == [], 60, "no kernels")
    assert_clean(gateway)
