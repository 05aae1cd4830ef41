"""The environment that confines a process to its partition.

Enforcement is defence in depth, one layer each, none pretending to be total:

1. `Visibility`: the vendor variables that hide every device but the partition's
   (``CUDA_VISIBLE_DEVICES``, ``ROCR_VISIBLE_DEVICES``, ``ZE_AFFINITY_MASK``) and the OpenCL
   selection pyopencl honours (``PYOPENCL_CTX``);
2. `FrameworkCaps`: memory caps the frameworks read from the environment (JAX, CuPy,
   TensorFlow growth), plus the ``CHRONOS_*`` facts that `chronos.confine` turns into in-process
   caps (PyTorch's per-process memory fraction, TensorFlow's logical-device limit);
3. `MpsLimits`: CUDA MPS pinned-memory and thread-percentage limits, only when an MPS control
   daemon is running;
4. the watchdog (`chronos.watchdog`), which terminates what slips past the other three.

A later MIG layer fits here too: it would map the partition to a MIG instance and replace the
visibility variables with that instance's UUID. Layers run in order; a later one may override
what an earlier one set.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from chronos.amount import TENTHS_PER_DEVICE
from chronos.device import Device, Vendor
from chronos.partition import Partition

MPS_PIPE_ENV = "CUDA_MPS_PIPE_DIRECTORY"
DEFAULT_MPS_PIPE_DIR = "/tmp/nvidia-mps"


class EnforcementLayer(Protocol):
    """One confinement layer: the variables it sets for a partition's processes."""

    def environment(self, partition: Partition, devices: Sequence[Device]) -> dict[str, str]:
        """Called once per process launch with the partition and *its* devices, in order."""
        ...


def _indices_within(vendor: Vendor, chosen: Sequence[Device], every: Sequence[Device]) -> str:
    family = [d.index for d in every if d.vendor is vendor]
    return ",".join(str(family.index(d.index)) for d in chosen if d.vendor is vendor)


class Visibility:
    """Hide every device but the partition's from the vendor runtimes and from OpenCL."""

    def __init__(self, every_device: Sequence[Device]) -> None:
        self.every_device = list(every_device)

    def environment(self, partition: Partition, devices: Sequence[Device]) -> dict[str, str]:
        env: dict[str, str] = {}
        nvidia = [d for d in devices if d.vendor is Vendor.NVIDIA]
        if nvidia and all(d.uuid for d in nvidia):
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(d.uuid) for d in nvidia)
        else:
            # an empty list hides every CUDA device: a partition on another vendor's device
            # must not reach the host's NVIDIA GPUs either
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
            env["CUDA_VISIBLE_DEVICES"] = _indices_within(Vendor.NVIDIA, devices, self.every_device)
        if any(d.vendor is Vendor.AMD for d in devices):
            env["ROCR_VISIBLE_DEVICES"] = _indices_within(Vendor.AMD, devices, self.every_device)
        if any(d.vendor is Vendor.INTEL and d.kind == "gpu" for d in devices):
            env["ZE_AFFINITY_MASK"] = _indices_within(Vendor.INTEL, devices, self.every_device)
        opencl = [f"{d.opencl[0]}:{d.opencl[1]}" for d in devices if d.opencl is not None]
        if opencl:
            env["PYOPENCL_CTX"] = opencl[0]
            env["CHRONOS_OPENCL_DEVICES"] = ",".join(opencl)
        return env


class FrameworkCaps:
    """Memory caps for the frameworks, and the facts `chronos.confine` applies in-process."""

    def environment(self, partition: Partition, devices: Sequence[Device]) -> dict[str, str]:
        fraction = partition.amount.tenths_per_device / TENTHS_PER_DEVICE
        env = {
            "CHRONOS_PARTITION_ID": partition.id,
            "CHRONOS_PARTITION_EXPIRES_AT": f"{partition.expires_at:.3f}",
            "CHRONOS_GPU_AMOUNT": str(partition.amount),
            "CHRONOS_GPU_DEVICES": ",".join(d.id for d in devices),
            "CHRONOS_MEMORY_BYTES": str(partition.memory_bytes),
            "CHRONOS_MEMORY_FRACTION": f"{fraction:g}",
        }
        if partition.amount.is_fraction:
            env |= {
                "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
                "XLA_PYTHON_CLIENT_MEM_FRACTION": f"{fraction:g}",
                "CUPY_GPU_MEMORY_LIMIT": str(partition.memory_bytes),
                "TF_FORCE_GPU_ALLOW_GROWTH": "true",
            }
        return env


class MpsLimits:
    """CUDA MPS client limits, set only when an MPS control daemon is listening."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        self.pipe_dir = Path(environ.get(MPS_PIPE_ENV, DEFAULT_MPS_PIPE_DIR))

    def running(self) -> bool:
        return (self.pipe_dir / "control").exists()

    def environment(self, partition: Partition, devices: Sequence[Device]) -> dict[str, str]:
        nvidia = [d for d in devices if d.vendor is Vendor.NVIDIA]
        if not nvidia or not self.running():
            return {}
        mebibytes = max(1, partition.memory_bytes // 2**20)
        # ordinals are those the client sees, i.e. after CUDA_VISIBLE_DEVICES
        limits = ",".join(f"{ordinal}={mebibytes}M" for ordinal in range(len(nvidia)))
        percent = max(1, partition.amount.tenths_per_device * 100 // TENTHS_PER_DEVICE)
        return {
            MPS_PIPE_ENV: str(self.pipe_dir),
            "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": limits,
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(percent),
        }


def default_layers(every_device: Sequence[Device]) -> list[EnforcementLayer]:
    return [Visibility(every_device), FrameworkCaps(), MpsLimits()]


def confinement_env(
    partition: Partition,
    every_device: Sequence[Device],
    layers: Sequence[EnforcementLayer] | None = None,
) -> dict[str, str]:
    """Every variable a process needs to be confined to ``partition``."""
    chosen = [every_device[i] for i in partition.devices]
    env: dict[str, str] = {}
    for layer in layers if layers is not None else default_layers(every_device):
        env |= layer.environment(partition, chosen)
    return env
