"""Checks that need a real NVIDIA GPU and driver: NVML discovery and per-process accounting,
the watchdog stopping a real over-cap CUDA process, and PyTorch's in-process cap.
Skipped, loudly (see the terminal summary), where NVML is unavailable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path

import pytest

from chronos import Device, Store, Vendor, Watchdog, confinement_env, discover, nvml
from chronos.watchdog import EventKind
from tests.support.wait import wait_until

pytestmark = pytest.mark.gpu

# Allocates raw device memory through the driver API, ignoring every framework cap: exactly
# what the watchdog exists to catch. Needs nothing but libcuda.
RAW_CUDA_ALLOC = textwrap.dedent(
    """
    import ctypes, sys, time
    cuda = ctypes.CDLL("libcuda.so.1")
    assert cuda.cuInit(0) == 0, "cuInit failed"
    dev, ctx, ptr = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_uint64()
    assert cuda.cuDeviceGet(ctypes.byref(dev), 0) == 0
    assert cuda.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev) == 0
    assert cuda.cuCtxSetCurrent(ctx) == 0
    rc = cuda.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(int(sys.argv[1])))
    print("allocated" if rc == 0 else f"cuMemAlloc failed: {rc}", flush=True)
    time.sleep(600)
    """
)


@pytest.fixture
def nvidia(state_path: Path) -> Iterator[tuple[Store, Device]]:
    found = discover({})
    gpus = [d for d in found if d.vendor is Vendor.NVIDIA]
    assert gpus, f"NVML is available but discovery found no NVIDIA device: {found}"
    with Store(found, state_path) as store:
        yield store, gpus[0]


def wait_for_usage(monitor: nvml.NvmlMonitor, pid: int, minimum: int) -> int:
    """NVML lists a new context within a moment; poll for it rather than sleep a fixed time."""

    def held() -> int:
        total = sum(u.bytes for u in monitor.usage() if u.pid == pid)
        return total if total >= minimum else 0

    return wait_until(held, 60, f"NVML to report {minimum} bytes for pid {pid}")


def start(code: str, *args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "allocated"
    return proc


def test_nvml_discovery_gives_uuid_memory_and_bus_id(nvidia: tuple[Store, Device]) -> None:
    _, gpu = nvidia
    assert gpu.uuid and gpu.uuid.startswith("GPU-")
    assert gpu.memory_bytes > 8 * 2**30
    assert gpu.pci_bus_id and ":" in gpu.pci_bus_id
    assert "nvml" in gpu.sources


def test_the_watchdog_stops_a_real_cuda_process_over_its_cap(nvidia: tuple[Store, Device]) -> None:
    store, gpu = nvidia
    partition = store.create("0.1", "1h", devices=gpu.id)
    env = os.environ | confinement_env(partition, store.devices)
    assert env["CUDA_VISIBLE_DEVICES"] == gpu.uuid
    monitor = nvml.NvmlMonitor()
    dog = Watchdog(store, monitor, grace=10)

    within = start(RAW_CUDA_ALLOC, str(partition.memory_bytes // 2), env=env)
    over = start(RAW_CUDA_ALLOC, str(partition.memory_bytes + 2**30), env=env)
    try:
        store.attach(partition.id, within.pid)
        store.attach(partition.id, over.pid)
        wait_for_usage(monitor, within.pid, partition.memory_bytes // 2)
        wait_for_usage(monitor, over.pid, partition.memory_bytes + 2**30)

        events = dog.tick()
        assert [(e.kind, e.pid) for e in events] == [(EventKind.TERMINATED, over.pid)]
        assert "over its cap" in events[0].reason
        assert over.wait(timeout=30) == -signal.SIGTERM
        assert within.poll() is None  # the process inside its cap runs on
        assert store.get(partition.id).is_active
    finally:
        for proc in (within, over):
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
            assert proc.stdout is not None
            proc.stdout.close()


@pytest.mark.skipif(find_spec("torch") is None, reason="PyTorch is not installed here")
def test_pytorch_is_capped_to_the_partition_fraction(
    nvidia: tuple[Store, Device], tmp_path: Path
) -> None:
    store, gpu = nvidia
    partition = store.create("0.1", "1h", devices=gpu.id)
    (tmp_path / "alloc_job.py").write_text(
        textwrap.dedent(
            """
            import sys, torch
            cap = int(sys.argv[1])
            small = torch.empty(cap // 2, dtype=torch.uint8, device="cuda")
            print("within cap: ok", flush=True)
            try:
                big = torch.empty(cap + 2**30, dtype=torch.uint8, device="cuda")
                print("over cap: allowed")
            except torch.OutOfMemoryError as exc:
                print("over cap: refused", "per process memory fraction" in str(exc) or "allowed" in str(exc))
            """
        )
    )
    env = (
        os.environ
        | confinement_env(partition, store.devices)
        | {"PYTHONPATH": f"{tmp_path}:{os.environ.get('PYTHONPATH', '')}"}
    )
    done = subprocess.run(
        [sys.executable, "-m", "chronos.confine", "alloc_job", str(partition.memory_bytes)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:2] == ["within cap: ok", "over cap: refused True"], done.stdout


@pytest.mark.skipif(find_spec("torch") is None, reason="PyTorch is not installed here")
def test_without_confine_the_same_allocation_succeeds(nvidia: tuple[Store, Device]) -> None:
    """The control for the test above: the refusal comes from our cap, not from the GPU."""
    store, gpu = nvidia
    partition = store.create("0.1", "1h", devices=gpu.id)
    code = f"import torch; t = torch.empty({partition.memory_bytes + 2**30}, dtype=torch.uint8, device='cuda'); print('allocated')"
    env = os.environ | {"CUDA_VISIBLE_DEVICES": str(gpu.uuid)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.stdout.strip() == "allocated", done.stderr


MPS_ALLOC = textwrap.dedent(
    """
    import ctypes, sys
    cuda = ctypes.CDLL("libcuda.so.1")
    dev, ctx, ptr = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_uint64()
    assert cuda.cuInit(0) == 0
    assert cuda.cuDeviceGet(ctypes.byref(dev), 0) == 0
    assert cuda.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev) == 0
    assert cuda.cuCtxSetCurrent(ctx) == 0
    for size in sys.argv[1:]:
        print(cuda.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(int(size))))
    """
)


@pytest.fixture
def mps_daemon(tmp_path: Path) -> Iterator[dict[str, str]]:
    import shutil

    control = shutil.which("nvidia-cuda-mps-control")
    if control is None:
        pytest.skip("nvidia-cuda-mps-control is not installed here")
    env = os.environ | {
        "CUDA_MPS_PIPE_DIRECTORY": str(tmp_path / "pipe"),
        "CUDA_MPS_LOG_DIRECTORY": str(tmp_path / "log"),
    }
    (tmp_path / "pipe").mkdir()
    (tmp_path / "log").mkdir()
    subprocess.run([control, "-d"], env=env, check=True, timeout=60)
    try:
        yield env
    finally:
        subprocess.run([control], input="quit\n", text=True, env=env, timeout=60)


def test_mps_pins_the_partition_memory_limit(
    nvidia: tuple[Store, Device], mps_daemon: dict[str, str]
) -> None:
    from chronos.enforce import FrameworkCaps, MpsLimits, Visibility

    store, gpu = nvidia
    partition = store.create("0.1", "1h", devices=gpu.id)
    layers = [Visibility(store.devices), FrameworkCaps(), MpsLimits(mps_daemon)]
    env = mps_daemon | confinement_env(partition, store.devices, layers)
    assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "10"
    sizes = [str(partition.memory_bytes // 2), str(partition.memory_bytes)]
    done = subprocess.run(
        [sys.executable, "-c", MPS_ALLOC, *sizes],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        "0",
        "2",
    ]  # half fits; the rest would pass the pinned limit: CUDA_ERROR_OUT_OF_MEMORY
