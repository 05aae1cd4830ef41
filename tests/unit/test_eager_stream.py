"""`gateway.kernel.EagerStream`: a client's message reaches the kernel's socket as it is sent,
not one event-loop turn later, and never ahead of one already queued."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import zmq
from zmq.eventloop.zmqstream import ZMQStream

from gateway.kernel import EagerStream, _eager

Socket = zmq.Socket[bytes]


@contextlib.asynccontextmanager
async def linked(
    near_type: int = zmq.PAIR, far_type: int = zmq.PAIR, eager: bool = True
) -> AsyncIterator[tuple[ZMQStream, Socket]]:
    """A stream on one end of an inproc pair (eager or plain) and the socket at the other."""
    context: zmq.Context[Socket] = zmq.Context()
    far, near = context.socket(far_type), context.socket(near_type)
    far.bind("inproc://eager")
    near.setsockopt(zmq.IDENTITY, b"gw")
    near.connect("inproc://eager")
    stream = ZMQStream(near)
    try:
        yield (_eager(stream) if eager else stream), far
    finally:
        stream.close()
        far.close()
        context.term()


async def _until(done: Callable[[], bool]) -> None:
    for _ in range(200):
        if done():
            return
        await asyncio.sleep(0.01)


def test_a_message_is_written_before_the_loop_turns() -> None:
    async def run() -> None:
        async with linked() as (stream, far):
            assert isinstance(stream, EagerStream)
            stream.send_multipart([b"header", b"content"])
            assert far.poll(0) == zmq.POLLIN  # no await in between: already written
            assert far.recv_multipart() == [b"header", b"content"]

    asyncio.run(run())


def test_a_plain_stream_writes_only_when_the_loop_turns() -> None:
    """What `EagerStream` changes (and what this test would see without it)."""

    async def run() -> None:
        async with linked(eager=False) as (stream, far):
            stream.send_multipart([b"late"])
            assert far.poll(0) == 0
            await _until(lambda: bool(far.poll(0)))
            assert far.recv_multipart() == [b"late"]

    asyncio.run(run())


def test_order_is_kept_behind_a_queued_message() -> None:
    async def run() -> None:
        async with linked() as (stream, far):
            ZMQStream.send_multipart(stream, [b"first"])  # queued, as a full socket would
            stream.send_multipart([b"second"])  # must not overtake it
            stream.send_multipart([b"third"], track=True)  # tracking: always queued
            got: list[bytes] = []

            def read() -> bool:
                while far.poll(0):
                    got.append(far.recv_multipart()[0])
                return len(got) == 3

            await _until(read)
            assert got == [b"first", b"second", b"third"]
            stream.send_multipart([b"fourth"])  # the queue is empty again: at once
            assert far.poll(0) == zmq.POLLIN

    asyncio.run(run())


def test_a_message_that_came_in_meanwhile_is_still_read() -> None:
    """A send on the socket can take the read edge of its ZMQ_FD: a reply already there must
    still reach the stream's reader, not wait for the next message to wake it."""

    async def run() -> None:
        async with linked(zmq.DEALER, zmq.ROUTER) as (stream, kernel):
            got: list[bytes] = []
            stream.on_recv(lambda parts: got.append(parts[0]))
            stream.send_multipart([b"hello"])
            assert kernel.recv_multipart() == [b"gw", b"hello"]
            await asyncio.sleep(0.05)  # the stream is idle, its fd registered
            kernel.send_multipart([b"gw", b"reply"])
            time.sleep(0.05)  # delivered, and not read: the loop does not turn meanwhile
            stream.send_multipart([b"next request"])  # at once, on the same socket
            await _until(lambda: bool(got))
            assert got == [b"reply"]

    asyncio.run(run())
