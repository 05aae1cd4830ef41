"""What the docker and swarm runtimes ask the engine for, per partition: the devices, limits and
confinement (the docker tier checks the same on real containers; GPUs are only here)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from chronos import Device, Vendor
from cumulus_jupyter.errors import InvalidArgument
from gateway.runtimes import DockerRuntime, Launch, SwarmRuntime, runtime_for
from gateway.runtimes.docker import exit_code, gpu_options

pytestmark = pytest.mark.unit


def device(index: int, vendor: Vendor, kind: str = "gpu", uuid: str | None = None) -> Device:
    return Device(index, f"dev{index}", vendor, kind, 80 * 2**30, uuid=uuid)


def launch(*devices: Device) -> Launch:
    argv = ["/usr/bin/python3", "-m", "chronos.confine", "ipykernel_launcher", "-f", "/x.json"]
    env = {"KERNEL_GPU": "0.5", "PATH": "/gateway/venv/bin", "CHRONOS_MEMORY_FRACTION": "0.5"}
    return Launch(argv, env, None, "k-1", list(devices))


def test_nvidia_devices_are_requested_by_uuid_and_others_by_device_node() -> None:
    (request,) = gpu_options([device(0, Vendor.NVIDIA, uuid="GPU-abc")])["device_requests"]
    assert request["Driver"] == "nvidia" and request["DeviceIDs"] == ["GPU-abc"]
    assert request["Capabilities"] == [["gpu"]]
    assert gpu_options([device(1, Vendor.AMD)])["devices"] == [
        "/dev/kfd:/dev/kfd:rwm", "/dev/dri:/dev/dri:rwm"
    ]  # fmt: skip
    assert gpu_options([device(2, Vendor.INTEL)])["devices"] == ["/dev/dri:/dev/dri:rwm"]
    assert gpu_options([device(3, Vendor.OTHER, kind="cpu")]) == {}


def test_a_container_is_confined_and_gets_none_of_the_gateways_environment() -> None:
    runtime = DockerRuntime(memory="2g", cpus=0.5, callback_url="http://127.0.0.1:9")
    options = runtime.container_options(launch(device(0, Vendor.NVIDIA, uuid="GPU-1")), "tok")
    assert options["command"] == [
        "python", "-m", "cumulus_jupyter.agent.launcher", "-m", "chronos.confine",
        "ipykernel_launcher", "-f", "/x.json",
    ]  # fmt: skip
    assert options["read_only"] and options["user"] == "1000:1000"
    assert options["cap_drop"] == ["ALL"] and options["security_opt"] == ["no-new-privileges"]
    assert options["mem_limit"] == options["memswap_limit"] == "2g"
    assert options["nano_cpus"] == 500_000_000 and options["network_mode"] == "host"
    assert "uid=1000" in options["tmpfs"]["/work"]
    env = options["environment"]
    assert "PATH" not in env and env["CHRONOS_MEMORY_FRACTION"] == "0.5"
    assert env["CUMULUS_CALLBACK_TOKEN"] == "tok"
    assert options["device_requests"][0]["DeviceIDs"] == ["GPU-1"]


def test_root_is_refused_as_the_kernels_user() -> None:
    with pytest.raises(InvalidArgument, match="must not be root"):
        DockerRuntime(user="0:0").container_options(launch(), "tok")


def test_a_swarm_kernel_is_placed_on_the_node_of_its_devices() -> None:
    runtime = SwarmRuntime(callback_url="http://10.0.0.1:8888")
    on_b = replace(device(1, Vendor.NVIDIA, uuid="GPU-b"), host="node-b")
    options = runtime.service_options(launch(on_b), "tok")
    assert options["constraints"] == ["node.id==node-b"]
    assert "NVIDIA_VISIBLE_DEVICES=GPU-b" in options["env"]
    assert (
        "CUMULUS_CALLBACK_URL=http://10.0.0.1:8888/api/cumulus/kernels/k-1/callback"
        in options["env"]
    )
    on_a = replace(device(0, Vendor.NVIDIA), host="node-a")
    with pytest.raises(InvalidArgument, match="must all be on one node"):
        runtime.service_options(launch(on_a, on_b), "t")


def test_exit_codes_follow_popen() -> None:
    assert exit_code({"ExitCode": 137}) == -9 and exit_code({"ExitCode": 3}) == 3


def test_unknown_runtimes_name_the_choices() -> None:
    with pytest.raises(InvalidArgument, match="Choose one of: docker, local, swarm"):
        runtime_for("kubernetes")


def test_checkpoints_go_to_a_mounted_host_directory_when_one_is_configured() -> None:
    mounted = DockerRuntime(checkpoint_dir="/srv/ckpt", callback_url="http://127.0.0.1:9")
    options = mounted.container_options(launch(), "tok")  # the owner's own directory only
    assert options["volumes"] == {"/srv/ckpt/anonymous": {"bind": "/checkpoints", "mode": "rw"}}
    plain_launch = launch()
    owned = Launch(
        plain_launch.argv, {**plain_launch.env, "KERNEL_USERNAME": "../bob"}, None, "k-2"
    )
    mounted_for_bob = mounted.container_options(owned, "tok")["volumes"]
    assert list(mounted_for_bob) == ["/srv/ckpt/%2E%2E%2Fbob"]  # one path component
    assert options["environment"]["CUMULUS_CHECKPOINT_DIR"] == "/checkpoints"
    plain = DockerRuntime(callback_url="http://127.0.0.1:9").container_options(launch(), "tok")
    assert "volumes" not in plain
    assert plain["environment"]["CUMULUS_CHECKPOINT_DIR"] == "/work/.checkpoints"
