"""A kernel in a job container behind a gateway that serves HTTPS: the container's launcher
calls back on https://, trusting only the certificate the gateway handed it (never its key),
and the kernel's link to the gateway is CurveZMQ-encrypted (what Swarm kernels on other hosts
use: the swarm runtime builds on the docker runtime's environment and callback)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cumulus_jupyter.connection import GatewaySettings
from cumulus_jupyter.session import RemoteSession
from tests.docker.conftest import kernel_containers
from tests.docker.test_docker_runtime import container_of
from tests.support.engine import Engine
from tests.support.tls import HttpsGateway, make_pki

pytestmark = [pytest.mark.docker, pytest.mark.timeout(600)]  # the first builds the image


@pytest.fixture
def https_docker(tmp_path: Path, engine: Engine, job_image: str) -> Iterator[HttpsGateway]:
    pki = make_pki(tmp_path)
    gw = HttpsGateway(tmp_path, pki, "--runtime=docker", env={"DOCKER_HOST": engine.url})
    try:
        yield gw
    finally:
        gw.stop()
    assert not kernel_containers(engine), "containers left behind"


def test_a_container_kernel_calls_back_over_https_and_speaks_curve(
    https_docker: HttpsGateway, engine: Engine
) -> None:
    settings = GatewaySettings(https_docker.url, https_docker.token, str(https_docker.pki.ca))
    session = RemoteSession("curve", settings)
    session.start("0.2", "10m", lambda line: None)
    try:
        assert session.kernel is not None
        kernel_id = session.kernel.id
        big = np.arange(2**18, dtype=np.float64)  # 2 MiB: the data path, relayed from TLS
        session.push({"big": big})
        assert session.data_bytes >= big.nbytes, session.data_error
        reply = session.execute("total = float(big.sum())", lambda message: None)
        assert reply["content"]["status"] == "ok"
        values, _ = session.pull(["total"])
        assert values["total"] == float(big.sum())
        container = container_of(engine, kernel_id)
        env = dict(e.split("=", 1) for e in container.attrs["Config"]["Env"])
        assert env["CUMULUS_CALLBACK_URL"].startswith("https://")
        assert "BEGIN CERTIFICATE" in env["CUMULUS_CALLBACK_CERT"]
        assert "PRIVATE KEY" not in env["CUMULUS_CALLBACK_CERT"]
        logs = container.logs().decode(errors="replace")
        assert "without encryption" not in logs, logs
        with sqlite3.connect(https_docker.state) as db:
            (info,) = db.execute(
                "SELECT connection_info FROM gateway_kernels WHERE kernel_id = ?", (kernel_id,)
            ).fetchone()
        assert len(json.loads(info)["curve_publickey"]) == 40  # Z85 of a Curve25519 key
    finally:
        session.release()
