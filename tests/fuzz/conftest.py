"""The fuzz tier: a gateway with two users and the operator, the OpenAPI document it is held to,
and the checks every fuzz test ends with (no kernel left, nothing logged as unhandled)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

from tests.support.gateway import Gateway
from tests.support.wait import wait_until

SPEC_PATH = Path(__file__).parents[2] / "gateway" / "openapi.yaml"
ALICE, BOB = "alice-token-" + "a" * 20, "bob-token-" + "b" * 20
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
# What an unhandled exception leaves in the gateway's log: a record at error level or above
# (a 5xx answer, tornado's "Uncaught exception", a traceback logged by jupyter_client), or
# jupyter_server's "Unhandled error". Kernels' own stderr shares the file, unprefixed: a kernel
# stopped while it starts may print a traceback of its own, which is not the gateway's.
UNHANDLED = re.compile(r"^\[[EC] |Unhandled error|Uncaught exception")


def load_spec() -> dict[str, Any]:
    return yaml.safe_load(SPEC_PATH.read_text())  # type: ignore[no-any-return]


def resolved(spec: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """``node``, or what its ``$ref`` (within the document) points at."""
    ref = node.get("$ref")
    if ref is None:
        return node
    for part in ref.removeprefix("#/").split("/"):
        spec = spec[part]
    return spec


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Every ``(path, method, operation)`` of the document, path-level parameters merged in."""
    for path, item in spec["paths"].items():
        shared = item.get("parameters", [])
        for method in METHODS:
            if method in item:
                operation = dict(item[method])
                parameters = shared + operation.get("parameters", [])
                operation["parameters"] = [resolved(spec, p) for p in parameters]
                yield path, method, operation


def takes_user_token(spec: dict[str, Any], operation: dict[str, Any]) -> bool:
    """Whether the operation is authenticated by the gateway's tokens (the document's default
    security, ``token``), rather than by a credential of its own or none (``security``)."""
    security = operation.get("security", spec.get("security", []))
    return any("token" in requirement for requirement in security)


def fuzz_gateway(tmp: Path, *args: str, env: dict[str, str] | None = None) -> Gateway:
    """A gateway with users alice and bob (their own tokens) besides the operator's."""
    return Gateway(
        tmp / "state" / "chronos.sqlite3", tmp / "gateway.log",
        f'--CumulusIdentityProvider.user_tokens={{"{ALICE}": "alice", "{BOB}": "bob"}}',
        "--CumulusKernelManager.launch_timeout=5", *args, env=env,
    )  # fmt: skip


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = fuzz_gateway(tmp_path_factory.mktemp("fuzz"))
    try:
        yield gw
    finally:
        gw.stop()


def call(gw: Gateway, method: str, path: str, token: str | None, **kwargs: Any) -> httpx.Response:
    headers = dict(kwargs.pop("headers", {}))
    if token is not None:
        headers["Authorization"] = f"token {token}"
    return httpx.request(method, gw.url + path, headers=headers, timeout=120, **kwargs)


def delete_all_kernels(gw: Gateway) -> None:
    for kernel in gw.get("/api/kernels").json():
        gw.delete(f"/api/kernels/{kernel['id']}")


def assert_clean(gw: Gateway, partitions: bool = True) -> None:
    """No kernel listed, none running, no partition held (unless others hold some:
    ``partitions=False``); healthy; nothing unhandled logged."""
    assert gw.get("/api/cumulus/health").json()["status"] == "ok"
    wait_until(lambda: gw.get("/api/kernels").json() == [], 60, "no kernel listed")
    if partitions:
        held = lambda: gw.get("/api/cumulus/partitions").json() == []  # noqa: E731
        wait_until(held, 60, "no partition held")
    assert gw.proc is not None
    gateway = psutil.Process(gw.proc.pid)
    wait_until(lambda: not gateway.children(recursive=True), 60, "no kernel process left")
    unhandled = [line for line in gw.log().splitlines() if UNHANDLED.search(line)]
    assert not unhandled, "\n".join(unhandled[:20]) + "\n" + gw.log()[-6000:]
