"""Chronos's errors map onto the Cumulus tree with the same status and exit code, and the one
``write_error`` answers any of them with that status, the JSON message and ``Retry-After``
(checked through a tiny tornado app on loopback)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from tornado import httpclient, httpserver, netutil, web

import chronos.errors as chronos_errors
from cumulus_jupyter import errors
from gateway.errors import FROM_CHRONOS, chronos_boundary, from_chronos
from gateway.handlers.base import CumulusErrors

pytestmark = pytest.mark.unit


def chronos_classes() -> list[type[chronos_errors.ChronosError]]:
    found, todo = [], [chronos_errors.ChronosError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


@pytest.mark.parametrize("cls", chronos_classes(), ids=lambda c: c.__name__)
def test_every_chronos_error_maps_to_a_cumulus_error_with_its_status_and_exit_code(
    cls: type[chronos_errors.ChronosError],
) -> None:
    assert cls in FROM_CHRONOS, f"{cls.__name__} is not in gateway.errors.FROM_CHRONOS"
    original = cls("it broke")
    mapped = from_chronos(original)
    assert isinstance(mapped, errors.CumulusError) and type(mapped) is FROM_CHRONOS[cls]
    assert (mapped.status, mapped.exit_code) == (cls.status, cls.exit_code)
    assert str(mapped) == "it broke" and mapped.__cause__ is original


def test_the_boundary_raises_from_the_chronos_error_and_keeps_retry_after() -> None:
    with pytest.raises(errors.ResourceExhausted) as raised, chronos_boundary():
        raise chronos_errors.ResourceExhausted("no device has 0.5 free", retry_after=12.5)
    assert raised.value.retry_after == 12.5
    assert isinstance(raised.value.__cause__, chronos_errors.ResourceExhausted)
    with pytest.raises(errors.PartitionExpired), chronos_boundary():
        raise chronos_errors.PartitionEnded("p-1 has ended")


RAISED: dict[str, BaseException] = {
    "exhausted": errors.ResourceExhausted("nothing fits", retry_after=2.2),
    "soon": errors.ResourceExhausted("nothing fits", retry_after=0.2),
    "chronos": chronos_errors.ResourceExhausted("chronos says no", retry_after=5),
    "ended": chronos_errors.PartitionEnded("partition p-1 ended"),
    "large": errors.TooLarge("body too large"),
    "dataport": errors.DataChannelError("Kernel k has no data port"),
    "missing": errors.NotFound("No job j-1"),
    "denied": errors.PermissionDenied("Kernel k belongs to another user"),
    "bug": RuntimeError("not ours"),
}


class Raiser(CumulusErrors):
    _jupyter_current_user = "tester"  # a known caller, as jupyter_server's login would set

    def get(self, name: str) -> None:
        raise RAISED[name]


async def fetch_all(names: list[str]) -> dict[str, httpclient.HTTPResponse]:
    sockets = netutil.bind_sockets(0, "127.0.0.1")
    port = sockets[0].getsockname()[1]
    server = httpserver.HTTPServer(web.Application([(r"/raise/(\w+)", Raiser)]))
    server.add_sockets(sockets)
    client = httpclient.AsyncHTTPClient(force_instance=True)
    try:
        return {
            name: await client.fetch(f"http://127.0.0.1:{port}/raise/{name}", raise_error=False)
            for name in names
        }
    finally:
        client.close()
        server.stop()
        await server.close_all_connections()


@pytest.fixture(scope="module")
def responses() -> dict[str, httpclient.HTTPResponse]:
    return asyncio.run(fetch_all(list(RAISED)))


@pytest.mark.parametrize(
    ("name", "status", "retry_after", "reason"),
    [
        ("exhausted", 429, "3", "ResourceExhausted"),
        ("soon", 429, "1", "ResourceExhausted"),
        ("chronos", 429, "5", "ResourceExhausted"),
        ("ended", 410, None, "PartitionExpired"),
        ("large", 413, None, "TooLarge"),
        ("dataport", 502, None, "DataChannelError"),
        ("missing", 404, None, "NotFound"),
        ("denied", 403, None, "PermissionDenied"),
    ],
)
def test_write_error_answers_with_the_class_status_message_and_retry_after(
    responses: dict[str, Any], name: str, status: int, retry_after: str | None, reason: str
) -> None:
    response = responses[name]
    assert response.code == status
    assert response.headers.get("Retry-After") == retry_after
    assert response.headers["Content-Type"] == "application/json"
    assert json.loads(response.body) == {"message": str(RAISED[name]), "reason": reason}


def test_anything_else_is_left_to_the_handler_it_is_mixed_into(responses: dict[str, Any]) -> None:
    assert responses["bug"].code == 500
    assert "not ours" not in responses["bug"].body.decode()
