"""Errors as a client meets them: each HTTP status maps back to its class (the inverse of the
gateway's boundary), with the gateway's message and ``Retry-After``; a gateway that cannot be
reached, or is not one, says so; and the CLI exits with the class's code."""

from __future__ import annotations

import asyncio
import json

import pytest
import tornado.httpserver
import tornado.netutil
import tornado.web

from cumulus_jupyter import cli, errors
from cumulus_jupyter.connection import GatewayClient, GatewaySettings

pytestmark = pytest.mark.unit

CLASSES = [
    errors.InvalidArgument, errors.TooLarge, errors.Unauthenticated, errors.PermissionDenied,
    errors.NotFound, errors.PartitionExpired, errors.ResourceExhausted, errors.Internal,
    errors.DataChannelError, errors.Unavailable, errors.DeadlineExceeded, errors.Conflict,
]  # fmt: skip


@pytest.mark.parametrize("cls", CLASSES)
def test_each_status_maps_back_to_its_class(cls: type[errors.CumulusError]) -> None:
    assert errors.error_for_status(cls.status) is cls


def test_statuses_without_a_class_map_to_the_nearest() -> None:
    assert errors.error_for_status(422) is errors.InvalidArgument
    assert errors.error_for_status(418) is errors.InvalidArgument
    assert errors.error_for_status(501) is errors.Internal


def test_every_class_has_its_own_status_and_an_exit_code() -> None:
    statuses = [cls.status for cls in CLASSES]
    assert len(set(statuses)) == len(statuses)
    assert all(cls.exit_code > 0 for cls in CLASSES)
    assert errors.Conflict.exit_code == 10  # one a script can tell from every other
    assert errors.CumulusError("x").exit_code == 1


class Answer(tornado.web.RequestHandler):
    def get(self, status: str) -> None:
        self.set_status(int(status))
        if int(status) == 429:
            self.set_header("Retry-After", "7")
        self.finish(json.dumps({"message": f"because {status}", "reason": None}))


class Forbidden(tornado.web.RequestHandler):
    def get(self) -> None:  # jupyter_server's answer to a wrong token
        self.set_status(403)
        self.finish(json.dumps({"message": "Forbidden", "reason": None}))


class NotJson(tornado.web.RequestHandler):
    def get(self) -> None:
        self.finish("<html>a web page</html>")


async def call(path: str, url: str | None = None) -> object:
    app = tornado.web.Application(
        [(r"/s/(\d+)", Answer), (r"/forbidden", Forbidden), (r"/page", NotJson)]
    )
    [sock] = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets([sock])
    client = GatewayClient(GatewaySettings(url or f"http://127.0.0.1:{sock.getsockname()[1]}", "t"))
    try:
        return await client.request("GET", path)
    finally:
        await client.aclose()
        server.stop()
        await server.close_all_connections()


def raised(path: str, url: str | None = None) -> errors.CumulusError:
    with pytest.raises(errors.CumulusError) as info:
        asyncio.run(call(path, url))
    return info.value


@pytest.mark.parametrize("cls", [c for c in CLASSES if c is not errors.Unauthenticated])
def test_the_client_raises_the_class_with_the_gateways_message(
    cls: type[errors.CumulusError],
) -> None:
    error = raised(f"/s/{cls.status}")
    assert type(error) is cls and str(error) == f"because {cls.status}"
    assert error.retry_after == (7.0 if cls is errors.ResourceExhausted else None)


def test_a_wrong_token_says_to_check_it() -> None:
    for path in ("/s/401", "/forbidden"):
        error = raised(path)
        assert isinstance(error, errors.Unauthenticated) and "check CUMULUS_TOKEN" in str(error)


def test_something_that_is_not_a_gateway_says_so() -> None:
    error = raised("/page")
    assert isinstance(error, errors.Unavailable) and "is it a Cumulus gateway?" in str(error)


@pytest.fixture
def closed_port() -> int:
    [sock] = tornado.netutil.bind_sockets(0, "127.0.0.1")
    port = sock.getsockname()[1]
    sock.close()  # nobody listens there now
    return port


def test_an_unreachable_gateway_is_unavailable(closed_port: int) -> None:
    error = raised("/x", f"http://127.0.0.1:{closed_port}")
    assert isinstance(error, errors.Unavailable) and "Cannot reach" in str(error)


def test_the_cli_exits_with_the_class_code(
    closed_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway = f"http://127.0.0.1:{closed_port}"
    assert cli.main(["get", "j-000000000000", "--gateway", gateway]) == errors.Unavailable.exit_code
    assert "Cannot reach the Cumulus gateway" in capsys.readouterr().err
    code = cli.main(["kernelspec", "install", "--gpu", "2.3", "--prefix", "/nonexistent"])
    assert code == errors.InvalidArgument.exit_code
    assert "Invalid GPU amount: 2.3" in capsys.readouterr().err


def test_a_remote_error_keeps_the_remote_traceback() -> None:
    error = errors.RemoteError.from_reply(
        {"ename": "ZeroDivisionError", "evalue": "division by zero",
         "traceback": ["\x1b[31mTraceback\x1b[0m", "  1/0"]}
    )  # fmt: skip
    assert str(error) == "ZeroDivisionError: division by zero"  # one line, like every error
    assert error.__notes__ == ["Traceback\n  1/0"]  # plain Python prints it after the line
    assert error._render_traceback_()[0] == "\x1b[31mTraceback\x1b[0m"  # IPython's view


def test_a_magic_raises_a_remote_exception_under_its_own_name() -> None:
    remote = errors.RemoteError("KeyError", "'lr'", ["Traceback …", "KeyError: 'lr'"])
    shown = errors.in_cell(remote)
    assert (type(shown).__name__, str(shown)) == ("KeyError", "'lr'")  # ename, evalue of a cell
    assert isinstance(shown, errors.RemoteError) and shown.traceback == remote.traceback
    assert type(errors.in_cell(errors.RemoteError("KeyError", "'x'"))) is type(shown)
    odd = errors.in_cell(errors.RemoteError("not a name!", "v"))  # kept as RemoteError
    assert type(odd).__name__ == "RemoteError"


def test_a_magic_shows_a_refused_cell_as_its_one_line_and_hints() -> None:
    shown = errors.in_cell(errors.InvalidArgument("Invalid GPU amount: 2.3"), "Use 0.1-0.9.")
    assert type(shown) is errors.InvalidArgument
    render = shown._render_traceback_  # type: ignore[attr-defined]
    assert render() == ["InvalidArgument: Invalid GPU amount: 2.3", "Use 0.1-0.9."]
