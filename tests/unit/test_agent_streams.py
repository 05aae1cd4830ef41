"""The agent's output streams (`cumulus_jupyter.agent.streams`) on ipykernel's own IOPub
thread and ``OutStream``: a flush with nothing to flush does not wait on the IOPub thread; one
with text written, or with a flush under way, waits until the text has been handed on."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import zmq
from ipykernel.iostream import IOPubThread, OutStream
from jupyter_client.session import Session

from cumulus_jupyter.agent import streams


class Recording(Session):
    """A session that notes what the stream hands on (as the agent's own ``send`` does), and
    can be held inside a send until released."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[str] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def send(self, stream: Any, msg_or_type: Any, *args: Any, **kwargs: Any) -> Any:
        self.entered.set()
        self.release.wait(60)
        self.sent.append(msg_or_type["content"]["text"])
        return super().send(stream, msg_or_type, *args, **kwargs)


@pytest.fixture
def stream() -> Iterator[OutStream]:
    context = zmq.Context()
    socket = context.socket(zmq.PUB)
    socket.bind("inproc://agent-streams")
    thread = IOPubThread(socket)
    thread.start()
    out = OutStream(Recording(), thread, "stdout", watchfd=False)
    out.flush_timeout = 120  # ipykernel's own flush waits this long for a busy IOPub thread
    streams.install([out])
    try:
        yield out
    finally:
        thread.stop()
        thread.close()
        context.term()


def flush_in_a_thread(out: OutStream, log: list[str]) -> threading.Thread:
    def flush() -> None:
        out.flush()
        log.append("flushed")

    flusher = threading.Thread(target=flush)
    flusher.start()
    return flusher


def hold_iopub(out: OutStream) -> threading.Event:
    """Keep the IOPub thread busy until the returned event is set."""
    held, free = threading.Event(), threading.Event()

    def hold() -> None:
        held.set()
        free.wait(60)

    out.pub_thread.schedule(hold)
    assert held.wait(30)
    return free


def test_a_flush_with_nothing_written_does_not_wait_on_the_iopub_thread(stream: OutStream) -> None:
    free = hold_iopub(stream)  # ipykernel's own flush would wait here until it is free
    log: list[str] = []
    try:
        flush_in_a_thread(stream, log).join(30)
        assert log == ["flushed"]
    finally:
        free.set()


def test_text_written_is_handed_on_before_the_flush_returns(stream: OutStream) -> None:
    stream.write("hello\n")
    stream.flush()
    assert stream.session.sent == ["hello\n"]  # type: ignore[attr-defined]
    stream.flush()  # nothing new: nothing sent twice
    assert stream.session.sent == ["hello\n"]  # type: ignore[attr-defined]


def test_a_flush_waits_for_one_under_way_on_the_iopub_thread(stream: OutStream) -> None:
    """The IOPub thread's own flush has taken the text (nothing is pending or buffered any
    more) but not yet handed it on: a flush now must wait for it."""
    session: Recording = stream.session  # type: ignore[assignment]
    session.release.clear()
    stream.write("late\n")
    stream.pub_thread.schedule(stream._flush)  # as ipykernel's timed flush does
    assert session.entered.wait(30)
    flusher = flush_in_a_thread(stream, session.sent)
    flusher.join(0.5)  # a flush that did not wait would be done by now
    session.sent.append("released")
    session.release.set()
    flusher.join(30)
    assert session.sent == ["released", "late\n", "flushed"]


def test_a_stream_without_ipykernels_internals_is_left_as_it_is() -> None:
    plain = io.StringIO()
    streams.install([plain])
    assert plain.flush == io.StringIO.flush.__get__(plain)
