"""The docker tier: a dockerd of the tests' own, the job image built once per run, gateways on
the docker runtime. Where no engine can be started the tier is skipped, loudly, except under CI,
where that is a failure."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.engine import Engine
from tests.support.gateway import Gateway
from tests.support.wait import wait_until

pytestmark = pytest.mark.docker

LABEL = "cumulus.kernel"


@pytest.fixture(scope="package")  # dockerd stops after the docker tier
def engine() -> Iterator[Engine]:
    why = Engine.unavailable()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"docker tier cannot run in CI: {why}")
        pytest.skip(f"docker tier NOT run: {why}")
    eng = Engine()
    eng.start()
    try:
        yield eng
    finally:
        try:
            remove_everything(eng)
        finally:
            eng.stop()


def client(engine: Engine) -> Any:
    return engine.client


def remove_everything(engine: Engine) -> None:
    """What a test left behind (it should be nothing: the tests assert that first)."""
    c = client(engine)
    swarm = c.info().get("Swarm", {}).get("LocalNodeState") == "active"
    for service in c.services.list(filters={"label": LABEL}) if swarm else []:
        service.remove()
    for container in c.containers.list(all=True, filters={"label": LABEL}):
        container.remove(force=True)
    if swarm:
        c.swarm.leave(force=True)


@pytest.fixture(scope="package")  # dockerd stops after the docker tier
def job_image(engine: Engine) -> str:
    from gateway.container.build import build

    return build(docker_url=engine.url)


def kernel_containers(engine: Engine) -> list[str]:
    """The names of the kernel containers on the engine, in one call (a listing that inspects
    each container races with one being removed)."""
    found = client(engine).api.containers(all=True, filters={"label": LABEL})
    return [name.lstrip("/") for c in found for name in c["Names"][:1]]


@contextlib.contextmanager
def runtime_gateway(
    tmp_path: Path, engine: Engine, runtime: str, *args: str, host: str = "127.0.0.1"
) -> Iterator[Gateway]:
    """A gateway on ``runtime``, using ``engine``, stopped (with its kernels) afterwards."""
    gw = Gateway(
        tmp_path / "state" / "chronos.sqlite3", tmp_path / "gateway.log", f"--runtime={runtime}",
        *args, env={"DOCKER_HOST": engine.url}, host=host,
    )  # fmt: skip
    try:
        yield gw
    finally:
        gw.stop()


def label_node(manager: Engine, node_id: str, worker: Engine, image: str) -> None:
    """Label ``node_id`` with the devices `scripts/setup-worker.sh --detect` finds on the
    ``worker`` engine through the job image (what the script writes as an engine label)."""
    detection = subprocess.run(
        ["scripts/setup-worker.sh", "--detect", "--image-tag", image],
        env=os.environ | {"DOCKER_HOST": worker.url}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert detection.returncode == 0, detection.stderr
    node = manager.client.nodes.get(node_id)
    spec = node.attrs["Spec"]
    spec["Labels"] = (spec.get("Labels") or {}) | {"cumulus.devices": detection.stdout.strip()}
    node.update(spec)


@pytest.fixture
def docker_gateway(tmp_path: Path, engine: Engine, job_image: str) -> Iterator[Gateway]:
    with runtime_gateway(tmp_path, engine, "docker") as gw:
        yield gw
    left = kernel_containers(engine)
    assert not left, f"containers left behind: {left}"


@pytest.fixture(scope="package")  # dockerd stops after the docker tier
def swarm(engine: Engine, job_image: str) -> Iterator[str]:
    """A single-node Swarm on loopback whose node carries the devices that
    ``scripts/setup-worker.sh --detect`` finds through the job image; its node id."""
    c = client(engine)
    if c.info()["Swarm"]["LocalNodeState"] == "active":  # another module's Swarm
        c.swarm.leave(force=True)
    c.swarm.init(advertise_addr="127.0.0.1", listen_addr="127.0.0.1:2377")
    try:
        node_id = c.info()["Swarm"]["NodeID"]
        label_node(engine, node_id, engine, job_image)
        yield node_id
    finally:
        if c.info()["Swarm"]["LocalNodeState"] == "active":
            c.swarm.leave(force=True)


@pytest.fixture
def swarm_gateway(tmp_path: Path, engine: Engine, swarm: str) -> Iterator[Gateway]:
    with runtime_gateway(tmp_path, engine, "swarm") as gw:
        yield gw
    left = client(engine).services.list(filters={"label": LABEL})
    assert not left, f"services left behind: {[s.name for s in left]}"
    # a removed service's container goes a moment after the service
    wait_until(lambda: not kernel_containers(engine), 30, "the removed services' containers")
