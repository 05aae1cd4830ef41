"""The kernel's data port on its own: signed requests only, staged buffers in and out, over TCP
(bytes follow the request) and over its Unix socket (the client's connection is handed over)."""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cumulus_jupyter.agent.dataserver import DataServer
from cumulus_jupyter.errors import DataChannelError, InvalidArgument
from cumulus_jupyter.protocol import dataport

pytestmark = pytest.mark.unit
KEY = b"k" * 32


@pytest.fixture
def server(tmp_path: Path) -> Iterator[DataServer]:
    srv = DataServer(KEY, "127.0.0.1", 0, str(tmp_path / "data.sock"))
    try:
        yield srv
    finally:
        srv.close()


def _tcp(server: DataServer) -> socket.socket:
    return socket.create_connection(tuple(server.address), timeout=30)


def _unix(server: DataServer) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    assert server.unix_path
    sock.connect(server.unix_path)
    return sock


def test_a_put_over_tcp_is_staged_and_claimed_once(server: DataServer) -> None:
    tid = uuid.uuid4().hex
    payload = [b"abc", bytes(range(256)) * 8192]  # 3 B and 2 MiB
    with _tcp(server) as sock:
        sock.sendall(dataport.sign(KEY, dataport.request("put", tid, [3, 2 * 2**20])))
        assert dataport.read_reply(sock) == {"ok": True}
        sock.sendall(b"".join(payload))
        assert dataport.read_reply(sock) == {"ok": True, "bytes": 3 + 2 * 2**20}
    assert [bytes(b) for b in server.claim(tid)] == payload
    with pytest.raises(Exception, match="no data staged"):
        server.claim(tid)


def test_a_get_over_tcp_sends_what_a_pull_staged(server: DataServer) -> None:
    tid = uuid.uuid4().hex
    server.stage(tid, [memoryview(b"hello"), bytearray(b" world")])
    with _tcp(server) as sock:
        sock.sendall(dataport.sign(KEY, dataport.request("get", tid)))
        assert dataport.read_reply(sock) == {"ok": True, "sizes": [5, 6]}
        data = b""
        while len(data) < 11:
            data += sock.recv(11)
    assert data == b"hello world"


def test_the_unix_socket_takes_over_the_clients_connection(server: DataServer) -> None:
    """What the gateway does for a kernel on its host: the bytes come from the client's own
    socket (here one end of a socketpair), after a prefix the gateway had already read."""
    tid = uuid.uuid4().hex
    client_end, gateway_end = socket.socketpair()
    with _unix(server) as control, client_end, gateway_end:
        control.sendall(dataport.sign(KEY, dataport.request("put", tid, [4, 6])))
        assert dataport.read_reply(control) == {"ok": True}
        dataport.hand_over(control, gateway_end)
        control.sendall(dataport.frame(b"01"))  # the prefix
        client_end.sendall(b"23456789")  # the rest, straight from the "client"
        assert dataport.read_reply(control)["ok"]
    assert [bytes(b) for b in server.claim(tid)] == [b"0123", b"456789"]
    assert (Path(server.unix_path or "").stat().st_mode & 0o777) == 0o600


@pytest.mark.parametrize(
    ("key", "age", "why"),
    [(b"x" * 32, 0.0, "bad signature"), (KEY, 3600.0, "too old")],
)
def test_unsigned_or_stale_requests_are_refused(
    server: DataServer, key: bytes, age: float, why: str
) -> None:
    message = dataport.request("put", uuid.uuid4().hex, [10])
    message["ts"] -= age
    with _tcp(server) as sock:
        sock.sendall(dataport.sign(key, message))
        answer = dataport.read_reply(sock)
    assert answer["ok"] is False
    assert why in answer["error"]


def test_a_replayed_request_is_refused(server: DataServer) -> None:
    signed = dataport.sign(KEY, dataport.request("get", uuid.uuid4().hex))
    with _tcp(server) as sock:
        sock.sendall(signed)
        assert "no data staged" in dataport.read_reply(sock)["error"]
    with _tcp(server) as sock:
        sock.sendall(signed)
        assert "replayed" in dataport.read_reply(sock)["error"]


def test_a_transfer_cut_short_stages_nothing(server: DataServer) -> None:
    tid = uuid.uuid4().hex
    with _tcp(server) as sock:
        sock.sendall(dataport.sign(KEY, dataport.request("put", tid, [100])))
        assert dataport.read_reply(sock)["ok"]
        sock.sendall(b"x" * 10)
        sock.shutdown(socket.SHUT_WR)  # the sender stops 90 bytes short
        answer = dataport.read_reply(sock)
    assert answer == {"ok": False, "error": f"transfer {tid} broke off"}
    with pytest.raises(Exception, match="no data staged"):
        server.claim(tid)


def test_pump_moves_exact_byte_counts_with_splice_and_without() -> None:
    for mover in (dataport.pump, dataport.copy):
        a_in, a_out = socket.socketpair()
        b_in, b_out = socket.socketpair()
        with a_in, a_out, b_in, b_out:
            data = bytes(range(256)) * 4096 + b"tail"
            received: list[bytes] = []

            def receive(
                out: socket.socket = b_out, n: int = len(data) - 4, into: list[bytes] = received
            ) -> None:
                got = b""
                while len(got) < n:
                    got += out.recv(1 << 20)
                into.append(got)

            reader = threading.Thread(target=receive)
            reader.start()
            writer = threading.Thread(target=a_in.sendall, args=(data,))
            writer.start()
            mover(a_out, b_in, len(data) - 4)
            writer.join(timeout=60)
            reader.join(timeout=60)
            assert received == [data[:-4]]
            a_in.close()
            with pytest.raises(DataChannelError, match="short"):
                mover(a_out, b_in, 100)  # only 4 bytes were left


def test_headers_and_ids_are_validated() -> None:
    assert dataport.parse_sizes("1,2,3") == [1, 2, 3]
    assert dataport.parse_sizes("") == []
    for bad in ("1,x", "-1", ",".join(["1"] * 5000)):
        with pytest.raises(InvalidArgument):
            dataport.parse_sizes(bad)
    with pytest.raises(InvalidArgument):
        dataport.check_transfer_id("../../etc/passwd")
    with pytest.raises(InvalidArgument):
        DataServer(b"", "127.0.0.1", 0)
