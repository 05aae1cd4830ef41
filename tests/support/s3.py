"""moto's standalone S3 server on loopback, started and stopped (by PID) by a test fixture."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.support.gateway import free_port
from tests.support.wait import wait_until


@contextlib.contextmanager
def moto_s3(tmp: Path, bucket: str = "ckpt") -> Iterator[dict[str, Any]]:
    """A running moto S3 server with ``bucket``; yields the fsspec (s3fs) options to reach it."""
    port = free_port()
    log = (tmp / "moto.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(endpoint), what="moto's S3 server")
        options = {"endpoint_url": endpoint, "key": "testing", "secret": "testing",
                   "client_kwargs": {"region_name": "eu-west-1"}}  # fmt: skip
        import s3fs

        s3fs.S3FileSystem(**options).mkdir(bucket)
        yield options
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def _answers(endpoint: str) -> bool:
    try:
        return httpx.get(endpoint, timeout=2).status_code < 500
    except httpx.TransportError:
        return False
