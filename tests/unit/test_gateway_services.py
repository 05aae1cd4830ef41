"""The services are built once and handed down: runtimes from settings without any manager,
the kernel manager's per-kernel managers and their provisioners get the same services, and a
bad setting is one `CumulusError` with its exit code."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from cumulus_jupyter.errors import InvalidArgument, Unavailable
from gateway.app import build_services
from gateway.callback import Callbacks
from gateway.kernel import CumulusServerKernelManager
from gateway.kernelspecs import CumulusKernelSpecManager
from gateway.manager import CumulusKernelManager
from gateway.provisioner import CumulusProvisioner
from gateway.runtimes import DockerRuntime, Launch, SwarmRuntime, runtime_for
from gateway.services import Services
from gateway.settings import Settings

pytestmark = pytest.mark.unit

DEVICES = json.dumps([{"name": "H100", "vendor": "nvidia", "memory_bytes": 2**34, "uuid": "G-0"}])


@pytest.fixture
def manager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CumulusKernelManager]:
    monkeypatch.setenv("CHRONOS_DEVICES", DEVICES)
    km = CumulusKernelManager(
        root_dir=str(tmp_path),
        connection_dir=str(tmp_path),
        state_path=str(tmp_path / "state.sqlite3"),
        launch_timeout=7.0,
        job_retention=60.0,
    )
    km.kernel_spec_manager = CumulusKernelSpecManager()
    yield km
    if km._services is not None:
        km.services.close()


def test_a_runtime_needs_only_its_settings_and_callbacks() -> None:
    settings, callbacks = Settings(port=9123, base_url="/gw/", launch_timeout=5), Callbacks()
    runtime = runtime_for("docker", settings=settings, callbacks=callbacks)
    assert isinstance(runtime, DockerRuntime) and runtime.callbacks is callbacks
    assert runtime.base_url() == "http://127.0.0.1:9123/gw"
    launch = Launch(["python", "-m", "ipykernel_launcher"], {}, None, "k-1")
    env = runtime.environment(launch, "tok")
    assert (
        env["CUMULUS_CALLBACK_URL"] == "http://127.0.0.1:9123/gw/api/cumulus/kernels/k-1/callback"
    )
    swarm = SwarmRuntime(settings=settings, callback_url="http://10.0.0.1:8888/")
    assert swarm.base_url() == "http://10.0.0.1:8888"
    assert DockerRuntime().settings == Settings()  # defaults, for the option tests


def test_an_unknown_runtime_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match="Choose one of: docker, local, swarm") as refused:
        runtime_for("kubernetes")
    assert refused.value.exit_code == 2


def test_the_manager_hands_its_services_to_every_kernel_and_provisioner(
    manager: CumulusKernelManager, tmp_path: Path
) -> None:
    services = build_services(manager, max_transfer_bytes=1024)
    assert isinstance(services, Services) and manager.services is services
    assert services.settings.launch_timeout == 7.0 and services.settings.job_retention == 60.0
    assert services.settings.max_transfer_bytes == 1024
    assert services.runtime.name == "local" and services.runtime.settings is services.settings
    assert services.broker.path == tmp_path / "state.sqlite3"
    assert [d.uuid for d in services.broker.devices] == ["G-0"]
    assert services.jobs.kernels is manager and services.jobs.registry is services.registry
    km = manager.kernel_manager_factory(
        connection_file=str(tmp_path / "kernel-k1.json"), parent=manager, log=manager.log,
        kernel_name="cumulus-gpu", kernel_spec_manager=manager.kernel_spec_manager,
    )  # fmt: skip
    assert isinstance(km, CumulusServerKernelManager) and km.services is services
    provisioner = CumulusProvisioner(kernel_id="k1", kernel_spec=km.kernel_spec, parent=km)
    assert provisioner.services is services


def test_a_state_file_that_is_not_a_store_is_unavailable(
    manager: CumulusKernelManager, tmp_path: Path
) -> None:
    (tmp_path / "state.sqlite3").write_bytes(b"not a database" * 100)
    with pytest.raises(Unavailable, match="is corrupt or not a Chronos store") as refused:
        build_services(manager)
    assert refused.value.exit_code == 5


def test_the_queue_policy_and_half_life_reach_the_broker(
    manager: CumulusKernelManager,
) -> None:
    manager.queue_policy, manager.fair_share_half_life = "backfill", 600.0
    broker = build_services(manager).broker
    assert (broker.rules.policy.value, broker.rules.half_life_s) == ("backfill", 600.0)
    assert broker.share.half_life_s == 600.0


@pytest.mark.parametrize("half_life", [0.0, -5.0, float("nan")])
def test_a_half_life_that_is_not_positive_is_one_clear_line(
    manager: CumulusKernelManager, half_life: float
) -> None:
    manager.fair_share_half_life = half_life
    with pytest.raises(InvalidArgument, match="fair_share_half_life must be a positive") as no:
        build_services(manager)
    assert no.value.exit_code == 2 and "\n" not in str(no.value)


def test_the_aging_bound_is_a_setting(manager: CumulusKernelManager) -> None:
    manager.fair_share_half_life = 600.0
    assert build_services(manager).broker.rules.aged_after_s == 1200.0  # 0: twice the half-life
    manager.fair_share_aging = 5400.0
    assert build_services(manager).broker.rules.aged_after_s == 5400.0


@pytest.mark.parametrize("aging", [-1.0, float("nan"), float("inf")])
def test_an_aging_bound_that_is_not_seconds_is_one_clear_line(
    manager: CumulusKernelManager, aging: float
) -> None:
    manager.fair_share_aging = aging
    with pytest.raises(InvalidArgument, match="fair_share_aging must be seconds") as no:
        build_services(manager)
    assert no.value.exit_code == 2 and "\n" not in str(no.value)
