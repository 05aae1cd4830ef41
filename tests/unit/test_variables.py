"""Variables' bookkeeping on both ends, in-process: the session's ledger (what the remote holds,
so only changes are pushed) and the agent's push/pull handlers it talks to, over messages and
over a real data port."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import numpy as np
import pytest

from cumulus_jupyter import transfer
from cumulus_jupyter.agent import comms, dataserver
from cumulus_jupyter.errors import InvalidArgument
from cumulus_jupyter.protocol import dataport, env

pytestmark = pytest.mark.unit


def test_only_what_changed_is_pushed_again() -> None:
    ledger = transfer.Ledger()
    data = np.arange(1000)
    values = {"data": data, "n": 3, "f": lambda x: x + 1}
    pickled, prints = ledger.changes(values)
    assert sorted(pickled) == ["data", "f", "n"]
    ledger.sent(prints)
    assert ledger.changes(values) == ({}, {})
    data[7] = -1  # changed in place: the same object, other bytes
    values["n"] = 4
    assert sorted(ledger.changes(values)[0]) == ["data", "n"]
    assert sorted(ledger.changes(values, force=True)[0]) == ["data", "f", "n"]


def test_a_failed_push_is_sent_again() -> None:
    ledger = transfer.Ledger()
    ledger.changes({"x": 1})  # computed, never confirmed as sent
    assert list(ledger.changes({"x": 1})[0]) == ["x"]


def test_what_came_back_is_not_sent_back_and_a_ref_is_forgotten() -> None:
    ledger = transfer.Ledger()
    ledger.received({"y": [1, 2, 3], "big": b"x" * 10})
    assert ledger.changes({"y": [1, 2, 3]}) == ({}, {})
    ledger.forget("big")
    assert list(ledger.changes({"big": b"x" * 10})[0]) == ["big"]


def pushed(values: dict[str, object]) -> tuple[dict[str, object], list[object]]:
    pickled, _ = transfer.Ledger().changes(values)
    entries, frames = transfer.pack_namespace(values, pickled)
    return {"op": "push", "entries": entries}, frames


def test_push_then_pull_round_trips_through_the_agent() -> None:
    remote: dict[str, object] = {}
    request, frames = pushed({"a": np.ones(5), "label": "x"})
    assert comms.push(request, frames, remote) == {"ok": True, "names": ["a", "label"]}
    remote["b"] = remote["label"] * 2  # type: ignore[operator]
    reply, frames = comms._pull({"op": "pull", "names": ["a", "b", "nope"]}, remote)
    assert reply["ok"] and reply["missing"] == ["nope"] and reply["refs"] == {}
    back = transfer.unpack_namespace(reply["entries"], frames)
    assert back["b"] == "xx" and np.array_equal(back["a"], np.ones(5))  # type: ignore[arg-type]


def test_a_value_over_the_limit_stays_remote_as_a_description() -> None:
    remote: dict[str, object] = {"big": np.zeros(1 << 20), "small": 1}
    reply, frames = comms._pull({"names": ["big", "small"], "max_bytes": 1 << 16}, remote)
    assert set(reply["refs"]) == {"big"} and "ndarray" in str(reply["refs"]["big"])
    assert transfer.unpack_namespace(reply["entries"], frames) == {"small": 1}


@pytest.fixture
def data_port(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, int]]:
    monkeypatch.setenv(env.DATA_PORT, "0")
    monkeypatch.setenv(env.DATA_HOST, "127.0.0.1")
    monkeypatch.delenv(env.DATA_SOCKET, raising=False)
    dataserver.open_port(b"k" * 32)
    try:
        yield "127.0.0.1", dataserver.port() or 0
    finally:
        dataserver.current().close()
        dataserver._OPEN.clear()


def fetch(address: tuple[str, int], transfer_id: str) -> list[bytes]:
    with socket.create_connection(address, timeout=30) as sock:
        sock.sendall(dataport.sign(b"k" * 32, dataport.request("get", transfer_id)))
        answer = dataport.read_reply(sock)
        assert answer["ok"], answer
        return [dataport.recv_exact(sock, size) for size in answer["sizes"]]


def test_a_large_pull_is_staged_on_the_data_port(data_port: tuple[str, int]) -> None:
    remote: dict[str, object] = {"w": np.arange(300_000, dtype=np.float64)}
    reply, frames = comms._pull({"names": ["w"], "stage_above": 1 << 20}, remote)
    assert frames == [] and reply["staged"]
    back = transfer.unpack_namespace(reply["entries"], fetch(data_port, reply["staged"]))
    assert np.array_equal(back["w"], remote["w"])  # type: ignore[arg-type]


def test_a_push_names_its_staged_buffers(data_port: tuple[str, int]) -> None:
    request, frames = pushed({"v": np.arange(10)})
    dataserver.current().stage("a" * 32, frames)
    remote: dict[str, object] = {}
    assert comms.push(request | {"staged": "a" * 32}, [], remote)["names"] == ["v"]
    assert np.array_equal(remote["v"], np.arange(10))  # type: ignore[arg-type]


def test_without_a_data_port_a_staged_push_says_so() -> None:
    request, _ = pushed({"v": 1})
    with pytest.raises(InvalidArgument, match="no data port"):
        comms.push(request | {"staged": "b" * 32}, [], {})


def test_gather_describes_what_cannot_travel_defers_past_the_budget_skips_unchanged() -> None:
    remote = {"kept": [1, 2], "gen": (i for i in range(2)), "a": b"x" * 100, "b": b"y" * 100}
    held = transfer.fingerprint(*transfer.dumps("kept", remote["kept"]))
    found = comms.gather(["gen", "a", "b", "nope"], remote, None, {"kept": held}, budget=150)
    assert found.refs["gen"]["type"] == "generator" and "unpicklable" in found.refs["gen"]
    assert [e["name"] for e in found.entries] == ["a"] and found.deferred == ["b"]
    assert found.missing == ["nope"]  # and `kept`, unchanged, does not come back
    remote["kept"].append(3)
    changed = comms.gather([], remote, None, {"kept": held})
    assert [e["name"] for e in changed.entries] == ["kept"]
    assert transfer.unpack_namespace(changed.entries, changed.frames) == {"kept": [1, 2, 3]}
