"""The hostile input corpus: bodies too large, nested too deep, with a key twice, not UTF-8;
amounts, durations and timeouts like ``1e400``, ``inf``, ``nan``, ``-0``, ``0.1e1``; user names
with control characters, newlines, ``../``; WebSocket junk, oversized and truncated frames;
Jupyter messages with no header, and one signed with the wrong key sent straight to a kernel.
Each is a 4xx (or a socket closed with a reason), nothing is logged as unhandled, and the
gateway, and the kernel the junk was sent to, still work afterwards."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets
import zmq
from jupyter_client.session import Session

from tests.fuzz.conftest import ALICE, assert_clean, call, delete_all_kernels, fuzz_gateway
from tests.support.gateway import Gateway
from tests.support.kernel_ws import V1, KernelSocket

pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(300)]

MAX_MESSAGE = 2**20  # the gateway's largest WebSocket message, in this tier
HOSTILE_NUMBERS = ["1e400", "inf", "-inf", "nan", "NaN", "-0", "0.1e1", "1e-400", "0x1", "½", ""]
HOSTILE_NAMES = ["a\nb", "a\r\nInjected: 1", "a\x00b", "\x1b[31mred", "../etc", "a/../b", "..",
                 ".hidden", "a b", "a\tb", "x" * 65, "a\u2028b", "a\x85b"]  # fmt: skip
KERNELS, JOBS = "/api/kernels", "/api/cumulus/jobs"
BODY_PATHS = [KERNELS, JOBS, "/api/cumulus/partitions/p-000000000000/extend"]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = fuzz_gateway(
        tmp_path_factory.mktemp("hostile"), f"--CumulusGateway.max_message_bytes={MAX_MESSAGE}"
    )
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def kernel(gateway: Gateway) -> Iterator[dict[str, Any]]:
    model = gateway.start_kernel(KERNEL_GPU="0.1")
    try:
        yield model
    finally:
        delete_all_kernels(gateway)


def post(gw: Gateway, path: str, body: bytes, token: str | None = None) -> httpx.Response:
    return call(gw, "POST", path, token or gw.token, content=body,
                headers={"Content-Type": "application/json"})  # fmt: skip


def assert_refused(response: httpx.Response, *statuses: int) -> None:
    assert response.status_code in (statuses or range(400, 500)), response.text
    assert response.headers["Content-Type"].startswith("application/json"), response.text
    assert json.loads(response.text)["message"]


BODIES = {
    "huge": b'{"env": {"KERNEL_X": "' + b"x" * (65 * 2**20) + b'"}}',
    "nested": b'{"env": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "nested-small": b'{"env": ' + b'{"a": ' * 2_000 + b"1" + b"}" * 2_000 + b"}",
    "duplicate-key": b'{"env": {"KERNEL_GPU": "0.1", "KERNEL_GPU": "0.9"}, "code": "1"}',
    "duplicate-top": b'{"duration": "1h", "duration": "2h", "code": "", "code": "1"}',
    "not-utf8": b'{"env": {"KERNEL_USERNAME": "\xff\xfe"}, "code": "\xc3\x28"}',
    "latin1": '{"code": "é", "duration": "é"}'.encode("latin-1"),
    "utf16": '{"code": "1"}'.encode("utf-16"),
    "not-json": b"\x00\x01\x02{",
    "array": b"[1, 2, 3]",
    "string": b'"hello"',
    "number": b"1e400",
    "nan": b"NaN",
}


@pytest.mark.parametrize("path", BODY_PATHS)
@pytest.mark.parametrize("name", list(BODIES))
def test_hostile_bodies_are_4xx(gateway: Gateway, path: str, name: str) -> None:
    assert_refused(post(gateway, path, BODIES[name]))


#: hostile as an amount or a duration, yet a valid number of seconds (or none) to wait
_VALID_TIMEOUTS = ("", "-0", "0.1e1", "1e-400", "0x1")
HOSTILE_KERNEL_NUMBERS = [
    (variable, value)
    for variable in ("KERNEL_GPU", "KERNEL_DURATION", "KERNEL_LAUNCH_TIMEOUT")
    for value in HOSTILE_NUMBERS
    if not (variable == "KERNEL_LAUNCH_TIMEOUT" and value in _VALID_TIMEOUTS)
]


@pytest.mark.parametrize(("variable", "value"), HOSTILE_KERNEL_NUMBERS)
def test_hostile_numbers_in_a_kernel_request_are_400(
    gateway: Gateway, variable: str, value: str
) -> None:
    env = {variable: value, "KERNEL_WAIT": "0"}
    assert_refused(call(gateway, "POST", KERNELS, gateway.token, json={"env": env}), 400)


@pytest.mark.parametrize("value", [*HOSTILE_NUMBERS, 1e308, -0.0, 1e-400, 10**400])
@pytest.mark.parametrize("field", ["gpu", "duration"])
def test_hostile_numbers_in_a_job_are_400(gateway: Gateway, field: str, value: object) -> None:
    body = json.dumps({"code": "1", field: value})  # inf and nan as JSON's Infinity and NaN
    assert_refused(post(gateway, JOBS, body.encode()), 400)


def test_hostile_extension_durations_are_4xx(gateway: Gateway, kernel: dict[str, Any]) -> None:
    # the operator's own kernel: the duration, not the owner, is what is refused
    partition = kernel["cumulus"]["partition_id"]
    for value in ["1e400", "NaN", "Infinity", "-0", "0.1e1", "-1e400", "[]"]:
        body = b'{"duration": ' + value.encode() + b"}"
        path = f"/api/cumulus/partitions/{partition}/extend"
        assert_refused(post(gateway, path, body), 400)
        assert_refused(post(gateway, path, json.dumps({"duration": value}).encode()), 400)


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_user_names_are_400(gateway: Gateway, name: str) -> None:
    env = {"KERNEL_USERNAME": name, "KERNEL_WAIT": "0"}
    assert_refused(call(gateway, "POST", KERNELS, gateway.token, json={"env": env}), 400)
    assert_refused(post(gateway, JOBS, json.dumps({"code": "1", "owner": name}).encode()), 400)


@pytest.mark.parametrize(
    "offset", ["9" * 30, "99999999999999999999", "-1", "1e3", "nan", "0x10", " ", "1_000", "\u0661"]
)
def test_hostile_log_offsets_are_400(gateway: Gateway, offset: str) -> None:
    job = post(gateway, JOBS, b'{"code": "1", "gpu": "0.1", "duration": "1m"}')
    assert job.status_code == 201, job.text
    job_id = job.json()["id"]
    try:
        logs = call(
            gateway, "GET", f"{JOBS}/{job_id}/logs", gateway.token, params={"offset": offset}
        )
        assert_refused(logs, 400)
    finally:
        gateway.delete(f"{JOBS}/{job_id}")


def test_another_users_junk_is_refused_as_theirs(gateway: Gateway) -> None:
    """A user's hostile request is refused the same way: no owner can be smuggled in."""
    for name in ("a\nb", "../alice"):
        env = {"KERNEL_USERNAME": name}
        assert call(gateway, "POST", KERNELS, ALICE, json={"env": env}).status_code in (400, 403)


async def _closed_or_alive(ws: Any) -> str:
    """After junk: the socket is closed with a reason, or it still answers (a ping)."""
    try:
        await asyncio.wait_for((await ws.ping()), 30)
    except websockets.ConnectionClosed as closed:
        return f"closed {closed.rcvd.code if closed.rcvd else None}"
    return "alive"


WS_JUNK: dict[str, tuple[str, list[str | bytes]]] = {
    "text-not-json": ("legacy", ["not json at all", "{", "[]", "null", '"x"', "1e400"]),
    "no-header": ("legacy", [json.dumps({"channel": "shell", "content": {}})]),
    "header-not-object": (
        "legacy",
        [json.dumps({"channel": "shell", "header": "x", "parent_header": {}, "content": {}})],
    ),
    "unknown-channel": ("legacy", [json.dumps({"channel": "../../x", "header": {}})]),
    "binary-junk": ("legacy", [b"\x00", b"\xff" * 64, b"\x00\x00\x00\x08" + b"\xff" * 16]),
    "v1-junk": (
        "v1",
        [
            b"",
            b"\x00",
            b"\xff" * 7,
            (2**60).to_bytes(8, "little") * 3,
            (1).to_bytes(8, "little") + (2**40).to_bytes(8, "little"),
            "text",
        ],
    ),
    "v1-no-header": ("v1", [b"".join(n.to_bytes(8, "little") for n in (2, 16, 21)) + b"shell"]),
}


@pytest.mark.parametrize("name", list(WS_JUNK))
def test_websocket_junk_leaves_the_kernel_usable(
    gateway: Gateway, kernel: dict[str, Any], name: str
) -> None:
    protocol, frames = WS_JUNK[name]

    async def scenario() -> str:
        sock = await KernelSocket.open(gateway.url, gateway.token, kernel["id"], protocol)
        for frame in frames:
            try:
                await sock.ws.send(frame)
            except websockets.ConnectionClosed:
                break
        outcome = await _closed_or_alive(sock.ws)
        await sock.close()
        fresh = await KernelSocket.open(gateway.url, gateway.token, kernel["id"], protocol)
        try:
            reply = await fresh.execute("print(6 * 7)")
        finally:
            await fresh.close()
        assert reply.stdout == "42\n"
        return outcome

    assert asyncio.run(scenario()) in ("alive", "closed 1003", "closed 1007", "closed 1011")


def test_an_oversized_frame_closes_the_socket_with_a_reason(
    gateway: Gateway, kernel: dict[str, Any]
) -> None:
    async def scenario() -> websockets.ConnectionClosed:
        sock = await KernelSocket.open(gateway.url, gateway.token, kernel["id"], "v1")
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(_send_then_drain(sock.ws, b"\x00" * (2 * MAX_MESSAGE)), 60)
        return closed.value

    closed = asyncio.run(scenario())
    assert closed.rcvd is not None and closed.rcvd.code == 1009, closed  # message too big


async def _drain(ws: Any) -> None:
    while True:
        await ws.recv()


async def _send_then_drain(ws: Any, frame: bytes) -> None:
    """The close can come while ``frame`` is still being written: then the send raises it."""
    await ws.send(frame)
    await _drain(ws)


def _handshake(gw: Gateway, kernel_id: str) -> socket.socket:
    sock = socket.create_connection((gw.host, gw.port), timeout=30)
    sock.sendall(
        f"GET /api/kernels/{kernel_id}/channels HTTP/1.1\r\nHost: {gw.host}:{gw.port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: {V1}\r\n"
        f"Authorization: token {gw.token}\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


@pytest.mark.parametrize(
    "frame",
    [
        b"\x82",  # a binary frame's first byte, nothing more
        b"\x82\xfe\xff\xff",  # says 65,535 bytes, masked, sends a partial mask
        b"\x82\xff" + (2**63 - 1).to_bytes(8, "big") + b"\x00\x00\x00\x00abc",  # 8 EiB
        b"\x82\x85\x00\x00\x00\x00ab",  # says 5 bytes, sends 2
        b"\x02\x80\x00\x00\x00\x00",  # unmasked? no: a continuation with no start
        b"\x8f\x80\x00\x00\x00\x00",  # an unknown opcode
    ],
)
def test_truncated_and_malformed_frames(
    gateway: Gateway, kernel: dict[str, Any], frame: bytes
) -> None:
    sock = _handshake(gateway, kernel["id"])
    with sock:
        sock.sendall(frame)
        sock.shutdown(socket.SHUT_WR)  # the client goes away mid-frame
        sock.settimeout(30)
        # read until the gateway closes its side (with a close frame, if any)
        assert all(chunk for chunk in iter(lambda: sock.recv(4096), b""))
    assert gateway.get(f"/api/kernels/{kernel['id']}").status_code == 200


def test_a_message_signed_with_the_wrong_key_is_dropped_by_the_kernel(
    gateway: Gateway, kernel: dict[str, Any]
) -> None:
    """Someone on the host reaching the kernel's own shell port without its key: the kernel
    drops the message, and the gateway's link to it is unharmed."""
    info = json.loads(next(gateway.runtime_dir.glob(f"kernel-{kernel['id']}*.json")).read_text())
    forged = Session(key=b"not-the-key", signature_scheme=info["signature_scheme"])
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.linger = 0
    try:
        dealer.connect(f"{info['transport']}://{info['ip']}:{info['shell_port']}")
        code = "open('/tmp/cumulus-forged-" + uuid.uuid4().hex + "', 'w')"
        forged.send(dealer, "execute_request", {"code": code, "silent": False})
        dealer.send_multipart([b"<IDS|MSG>", b"", b"{}", b"{}", b"{}", b"{}"])  # no header
    finally:
        dealer.close()
        ctx.term()

    async def still_works() -> str:
        sock = await KernelSocket.open(gateway.url, gateway.token, kernel["id"], "v1")
        try:
            reply = await sock.execute(
                "import glob; print(len(glob.glob('/tmp/cumulus-forged-*')))"
            )
        finally:
            await sock.close()
        return reply.stdout

    assert asyncio.run(still_works()) == "0\n"


def test_gateway_healthy_and_clean_after_the_corpus(gateway: Gateway) -> None:
    delete_all_kernels(gateway)
    for job in gateway.get(JOBS).json():
        gateway.delete(f"{JOBS}/{job['id']}")
    assert_clean(gateway)
