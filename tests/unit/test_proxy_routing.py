"""The proxy kernel's routing bookkeeping on its own: replies go back to whoever asked, the
front end sees one busy ... idle per request and none of the gateway's or the proxy's own
traffic, and executes still running when the kernel dies are known."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

from cumulus_jupyter.kernel.routing import OwnRequests, Router
from cumulus_jupyter.protocol.messages import Parts

pytestmark = pytest.mark.unit


def header(msg_type: str, msg_id: str | None = None) -> dict[str, Any]:
    return {"msg_id": msg_id or uuid.uuid4().hex, "msg_type": msg_type, "session": "s"}


def message(msg_type: str, parent: dict[str, Any] | None = None, **content: Any) -> Parts:
    """Raw parts of a message from the remote kernel, answering ``parent``."""
    parts: tuple[dict[str, Any], ...] = (header(msg_type), parent or {}, {}, content)
    return [json.dumps(part).encode() for part in parts]


def status(state: str, parent: dict[str, Any] | None = None) -> Parts:
    return message("status", parent, execution_state=state)


# -- routes --------------------------------------------------------------------------------------


def test_a_reply_goes_to_the_idents_of_its_request() -> None:
    router = Router()
    first, second = header("execute_request"), header("complete_request")
    router.remember("shell", [b"front-a"], first)
    router.remember("shell", [b"front-b", b"x"], second)
    assert router.route_reply("shell", message("execute_reply", first)) == [b"front-a"]
    assert router.route_reply("shell", message("complete_reply", second)) == [b"front-b", b"x"]
    assert router.idents_of(first["msg_id"]) == [b"front-a"]


def test_a_reply_to_an_unknown_request_goes_nowhere() -> None:
    router = Router()
    router.remember("shell", [b"front"], header("execute_request"))
    assert router.route_reply("shell", message("execute_reply", header("execute_request"))) is None
    assert router.route_reply("control", message("interrupt_reply")) is None


def test_the_bound_forgets_the_oldest_routes_first() -> None:
    router = Router(max_routes=3)
    requests = [header("kernel_info_request") for _ in range(5)]
    for i, request in enumerate(requests):
        router.remember("shell", [f"f{i}".encode()], request)
    assert [router.idents_of(r["msg_id"]) for r in requests] == [
        None,
        None,
        [b"f2"],
        [b"f3"],
        [b"f4"],
    ]


def test_the_default_bound_is_ten_thousand() -> None:
    router = Router()
    requests = [header("inspect_request") for _ in range(10_001)]
    for request in requests:
        router.remember("shell", [b"f"], request)
    assert router.idents_of(requests[0]["msg_id"]) is None
    assert router.idents_of(requests[1]["msg_id"]) == [b"f"]


# -- outstanding executes ----------------------------------------------------------------------


def test_an_execute_is_outstanding_until_its_shell_reply() -> None:
    router = Router()
    running, answered = header("execute_request"), header("execute_request")
    router.remember("shell", [b"a"], running)
    router.remember("shell", [b"b"], answered)
    router.remember("shell", [b"c"], header("complete_request"))  # not an execute
    router.remember("control", [b"d"], header("execute_request"))  # not on shell
    router.route_reply("iopub", message("stream", running))  # output is no answer
    router.route_reply("shell", message("execute_reply", answered))
    assert router.take_outstanding() == [([b"a"], running)]


def test_taking_the_outstanding_executes_forgets_them() -> None:
    router = Router()
    router.remember("shell", [b"a"], header("execute_request"))
    assert len(router.take_outstanding()) == 1
    assert router.take_outstanding() == []


def test_outstanding_executes_outlive_the_route_bound() -> None:
    router = Router(max_routes=1)
    first = header("execute_request")
    router.remember("shell", [b"a"], first)
    router.remember("shell", [b"b"], header("kernel_info_request"))
    assert router.idents_of(first["msg_id"]) is None
    assert router.take_outstanding() == [([b"a"], first)]


# -- busy/idle -----------------------------------------------------------------------------------


def test_the_remote_busy_for_a_request_we_said_busy_for_is_dropped_once() -> None:
    router = Router()
    request = header("execute_request")
    router.remember("shell", [b"f"], request)
    router.said_busy(request["msg_id"])
    assert router.hides_status(status("busy", request))
    assert not router.hides_status(status("idle", request))
    assert not router.hides_status(status("busy", request))  # a second busy is news


def test_the_remote_busy_and_idle_of_our_requests_pass_when_we_said_nothing() -> None:
    router = Router()
    request = header("execute_request")
    router.remember("shell", [b"f"], request)
    assert not router.hides_status(status("busy", request))
    assert not router.hides_status(status("idle", request))


def test_status_of_a_request_the_gateway_made_itself_is_dropped() -> None:
    router = Router()
    router.remember("shell", [b"f"], header("execute_request"))
    probe = header("kernel_info_request")  # the gateway's, on every WebSocket connect
    assert router.hides_status(status("busy", probe))
    assert router.hides_status(status("idle", probe))


@pytest.mark.parametrize("state", ["starting", "restarting", "dead", "idle"])
def test_status_without_a_parent_is_everyones_news(state: str) -> None:
    assert not Router().hides_status(status(state))


# -- the proxy's own requests, comms and probes --------------------------------------------------


def resolving(check: Any) -> None:
    """Run ``check(own)`` in an event loop (the futures need one)."""

    async def main() -> None:
        check(OwnRequests())

    asyncio.run(main())


def test_nothing_is_ours_while_we_wait_for_nothing() -> None:
    def check(own: OwnRequests) -> None:
        request = header("execute_request")
        assert not own.resolve("shell", message("execute_reply", request))
        assert not own.resolve("iopub", status("idle", request))

    resolving(check)


def test_our_request_is_answered_by_its_reply_and_its_output_is_hidden() -> None:
    def check(own: OwnRequests) -> None:
        request = header("execute_request")
        reply = own.request(request["msg_id"])
        assert own.resolve("iopub", status("busy", request))
        assert not reply.done()
        answer = message("execute_reply", request, status="ok")
        assert own.resolve("shell", answer)
        assert reply.result() == answer
        # answered: what follows is no longer ours
        assert not own.resolve("iopub", status("idle", request))
        assert not own.resolve("shell", message("execute_reply", header("execute_request")))

    resolving(check)


def test_our_comm_is_answered_by_its_first_comm_msg_and_its_close_is_swallowed() -> None:
    def check(own: OwnRequests) -> None:
        comm_open = header("comm_open")
        answer = own.comm("c1")
        assert not own.resolve("iopub", status("busy", comm_open))  # the comm_open's own status
        reply = message("comm_msg", comm_open, comm_id="c1", data={"ok": True})
        assert own.resolve("iopub", reply)
        assert answer.result() == reply
        assert own.resolve("iopub", message("comm_close", comm_open, comm_id="c1", data={}))
        assert own.resolve("iopub", message("comm_msg", comm_open, comm_id="c1", data={}))
        assert not own.resolve("iopub", message("comm_msg", comm_open, comm_id="c2", data={}))

    resolving(check)


def test_a_probe_is_answered_by_its_iopub_not_its_shell_reply() -> None:
    def check(own: OwnRequests) -> None:
        request = header("kernel_info_request")
        answer = own.probe(request["msg_id"])
        assert own.resolve("shell", message("kernel_info_reply", request))  # hidden, not enough
        assert not answer.done()
        busy = status("busy", request)
        assert own.resolve("iopub", busy)
        assert answer.result() == busy
        assert not own.resolve("iopub", status("idle", request))

    resolving(check)


def test_a_forgotten_probe_is_no_longer_ours() -> None:
    def check(own: OwnRequests) -> None:
        request = header("kernel_info_request")
        answer = own.probe(request["msg_id"])
        own.forget(request["msg_id"])
        assert not own.resolve("iopub", status("busy", request))
        assert not answer.done()

    resolving(check)


def test_an_answer_to_a_cancelled_wait_is_still_hidden() -> None:
    def check(own: OwnRequests) -> None:
        request = header("execute_request")
        own.request(request["msg_id"]).cancel()  # timed out
        assert own.resolve("shell", message("execute_reply", request))

    resolving(check)
