"""`RemoteSession._execute_async` (the session's own executes at start-up) waits on the loop:
cancelled, it leaves no thread behind that Python would join at exit (a notebook's kernel
that interrupted a session's start would hang as it shut down)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from cumulus_jupyter.connection import GatewaySettings
from cumulus_jupyter.session import RemoteSession


class _Silent:
    """A remote kernel that takes every message and never answers."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    async def send(self, channel: str, parts: Any) -> None:
        self.sent.append((channel, parts))


def _session() -> RemoteSession:
    session = RemoteSession("s", GatewaySettings(url="http://127.0.0.1:9", token="t"))
    session.kernel = _Silent()  # type: ignore[assignment]
    return session


def test_a_cancelled_wait_leaves_no_thread() -> None:
    async def run() -> None:
        session = _session()
        before = threading.active_count()
        task = asyncio.ensure_future(session._execute_async("1 + 1"))
        await asyncio.sleep(0.05)
        assert session._routes  # waiting for its reply
        assert threading.active_count() == before  # and not in a thread
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert not session._routes

    asyncio.run(run())


def test_the_reply_wakes_the_wait_from_the_loop_and_from_another_thread() -> None:
    async def run(from_thread: bool) -> Any:
        session = _session()
        task = asyncio.ensure_future(session._execute_async("1 + 1"))
        while not session._routes:
            await asyncio.sleep(0.01)
        (route,) = session._routes.values()
        done = {"msg_type": "_done", "reply": {"content": {"status": "ok"}}}
        if from_thread:
            worker = threading.Thread(target=route.put, args=(done,))
            worker.start()
            worker.join()
        else:
            route.put(done)
        return await asyncio.wait_for(task, 10)

    assert asyncio.run(run(False)) == {"content": {"status": "ok"}}
    assert asyncio.run(run(True)) == {"content": {"status": "ok"}}
