"""`gateway.kernel.EagerStream`: a client's message reaches the kernel's socket as it is sent,
not one event-loop turn later, and never ahead of one already queued."""

from __future__ import annotations

import asyncio
import time

import zmq
from zmq.eventloop.zmqstream import ZMQStream

from gateway.kernel import EagerStream, _eager


def _pair(context: zmq.Context[zmq.Socket[bytes]]) -> tuple[zmq.Socket[bytes], zmq.Socket[bytes]]:
    near, far = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    near.bind("inproc://eager")
    far.connect("inproc://eager")
    return near, far


def test_a_message_is_written_before_the_loop_turns() -> None:
    async def run() -> None:
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        near, far = _pair(context)
        stream = _eager(ZMQStream(near))
        try:
            assert isinstance(stream, EagerStream)
            stream.send_multipart([b"header", b"content"])
            assert far.poll(0) == zmq.POLLIN  # no await in between: already written
            assert far.recv_multipart() == [b"header", b"content"]
        finally:
            stream.close()
            far.close()
            context.term()

    asyncio.run(run())


def test_a_plain_stream_writes_only_when_the_loop_turns() -> None:
    """What `EagerStream` changes (and what this test would see without it)."""

    async def run() -> None:
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        near, far = _pair(context)
        stream = ZMQStream(near)
        try:
            stream.send_multipart([b"late"])
            assert far.poll(0) == 0
            for _ in range(50):
                await asyncio.sleep(0.01)
                if far.poll(0):
                    break
            assert far.recv_multipart() == [b"late"]
        finally:
            stream.close()
            far.close()
            context.term()

    asyncio.run(run())


def test_order_is_kept_behind_a_queued_message() -> None:
    async def run() -> None:
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        near, far = _pair(context)
        stream = _eager(ZMQStream(near))
        try:
            ZMQStream.send_multipart(stream, [b"first"])  # queued, as a full socket would
            stream.send_multipart([b"second"])  # must not overtake it
            stream.send_multipart([b"third"], track=True)  # tracking: always queued
            got = []
            for _ in range(100):
                await asyncio.sleep(0.01)
                while far.poll(0):
                    got.append(far.recv_multipart()[0])
                if len(got) == 3:
                    break
            assert got == [b"first", b"second", b"third"]
            stream.send_multipart([b"fourth"])  # the queue is empty again: at once
            assert far.poll(0) == zmq.POLLIN
        finally:
            stream.close()
            far.close()
            context.term()

    asyncio.run(run())


def test_a_message_that_came_in_meanwhile_is_still_read() -> None:
    """A send on the socket can take the read edge of its ZMQ_FD: a reply already there must
    still reach the stream's reader, not wait for the next message to wake it."""

    async def run() -> None:
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        kernel, gateway = context.socket(zmq.ROUTER), context.socket(zmq.DEALER)
        kernel.bind("inproc://wedge")
        gateway.setsockopt(zmq.IDENTITY, b"gw")
        gateway.connect("inproc://wedge")
        stream = _eager(ZMQStream(gateway))
        got: list[bytes] = []
        stream.on_recv(lambda parts: got.append(parts[0]))
        try:
            stream.send_multipart([b"hello"])
            assert kernel.recv_multipart() == [b"gw", b"hello"]
            await asyncio.sleep(0.05)  # the stream is idle, its fd registered
            kernel.send_multipart([b"gw", b"reply"])
            time.sleep(0.05)  # delivered, and not read: the loop does not turn meanwhile
            stream.send_multipart([b"next request"])  # at once, on the same socket
            for _ in range(100):
                if got:
                    break
                await asyncio.sleep(0.01)
            assert got == [b"reply"]
        finally:
            stream.close()
            kernel.close()
            context.term()

    asyncio.run(run())
