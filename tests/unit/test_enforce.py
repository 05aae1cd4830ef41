import os
import subprocess
import sys
from pathlib import Path

import pytest

from chronos import Device, Store, confinement_env
from chronos.enforce import FrameworkCaps, MpsLimits, Visibility

pytestmark = pytest.mark.unit


def test_pocl_partition_hides_cuda_and_selects_its_opencl_device(store: Store) -> None:
    partition = store.create("0.5", "30m")
    env = confinement_env(partition, store.devices)
    device = store.devices[partition.devices[0]]
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    assert env["PYOPENCL_CTX"] == f"{device.opencl[0]}:{device.opencl[1]}"  # type: ignore[index]
    assert env["CHRONOS_PARTITION_ID"] == partition.id
    assert env["CHRONOS_MEMORY_FRACTION"] == "0.5"
    assert int(env["CHRONOS_MEMORY_BYTES"]) == device.memory_bytes // 2
    assert env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.5"
    assert env["CUPY_GPU_MEMORY_LIMIT"] == env["CHRONOS_MEMORY_BYTES"]


def test_a_real_opencl_program_under_the_env_gets_the_partition_device(store: Store) -> None:
    partition = store.create("0.3", "30m")
    env = os.environ | confinement_env(partition, store.devices)
    code = (
        "import pyopencl as cl, numpy as np\n"
        "ctx = cl.create_some_context(interactive=False)\n"
        "q = cl.CommandQueue(ctx)\n"
        "a = np.arange(16, dtype=np.float32)\n"
        "buf = cl.Buffer(ctx, cl.mem_flags.READ_WRITE | cl.mem_flags.COPY_HOST_PTR, hostbuf=a)\n"
        "prg = cl.Program(ctx, '__kernel void dbl(__global float *x){int i=get_global_id(0); x[i]*=2;}').build()\n"
        "prg.dbl(q, a.shape, None, buf)\n"
        "cl.enqueue_copy(q, a, buf)\n"
        "print(ctx.devices[0].name.strip(), int(a.sum()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{store.devices[partition.devices[0]].name} 240"


def test_nvidia_partition_uses_uuids_and_only_its_devices(
    four_devices: list[Device], tmp_path: Path
) -> None:
    with Store(four_devices, tmp_path / "s.sqlite3") as s:
        s.create("0.5", "1h", devices="gpu1")
        two = s.create("2", "1h")
        env = confinement_env(two, four_devices, [Visibility(four_devices), FrameworkCaps()])
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-0,GPU-2"
    assert env["CHRONOS_MEMORY_FRACTION"] == "1"
    assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in env  # whole devices: no framework cap


def test_mps_limits_only_when_a_control_daemon_listens(
    four_devices: list[Device], tmp_path: Path
) -> None:
    pipe = tmp_path / "mps"
    pipe.mkdir()
    with Store(four_devices, tmp_path / "s.sqlite3") as s:
        partition = s.create("0.3", "1h")
    layer = MpsLimits({"CUDA_MPS_PIPE_DIRECTORY": str(pipe)})
    chosen = [four_devices[i] for i in partition.devices]
    assert layer.environment(partition, chosen) == {}
    (pipe / "control").touch()
    env = layer.environment(partition, chosen)
    assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "30"
    assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == f"0={partition.memory_bytes // 2**20}M"
    assert env["CUDA_MPS_PIPE_DIRECTORY"] == str(pipe)
