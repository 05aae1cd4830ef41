"""`Services`: what the gateway's parts share, built once by the app and handed down.

The provisioner (through its kernel's manager, `gateway.kernel`), the mapping kernel manager,
the expiry supervisor and the REST handlers get the whole object; the runtime, the broker and
the job runner get the parts they use. Nobody walks up a ``parent`` chain to find them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
from traitlets.config import Configurable

from chronos import Device, Partition, Store, discover
from cumulus_jupyter.errors import CumulusError
from gateway import metrics
from gateway.broker import PartitionBroker
from gateway.callback import Callbacks
from gateway.checkpoints import CheckpointStore
from gateway.discovery import DeviceDiscovery
from gateway.errors import chronos_boundary
from gateway.jobs.runner import JobRunner
from gateway.jobs.store import JobStore
from gateway.records import KernelRecords
from gateway.registry import KernelRegistry
from gateway.runtimes import Runtime, runtime_for
from gateway.scheduler import Rules
from gateway.settings import Settings


def devices_of(runtime: Runtime) -> list[Device]:
    """The runtime's devices, or this host's when the runtime leaves them to discovery (an
    empty list is an answer: a Swarm whose labelled nodes are all away has none now)."""
    found = runtime.devices()
    return discover() if found is None else found


@dataclass
class Services:
    settings: Settings
    runtime: Runtime  # where kernels run
    broker: PartitionBroker  # partitions (the Chronos store behind it) and their queue
    records: KernelRecords  # kernels a restarted gateway adopts
    callbacks: Callbacks  # tokens of kernels in containers
    registry: KernelRegistry  # the live kernels' partitions, end reasons, connections
    jobs: JobRunner
    checkpoints: CheckpointStore  # L2 per owner, and kernels' checkpoint tokens
    discovery: DeviceDiscovery  # the devices, discovered again while the gateway runs

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        runtime_name: str,
        state_path: str | None,
        kernels: AsyncMappingKernelManager,
        parent: Configurable | None = None,
    ) -> Services:
        """Everything, from the settings: the runtime called ``runtime_name`` (configured from
        ``parent``'s config), the Chronos store at ``state_path`` (None: Chronos's default)
        with the runtime's devices or this host's, and the tables beside it. ``kernels`` is the
        kernel manager jobs start their kernels with. Raises a `CumulusError` that says what
        is wrong with the settings."""
        callbacks = Callbacks()
        runtime = runtime_for(runtime_name, settings=settings, callbacks=callbacks, parent=parent)
        try:
            runtime.check()
        except CumulusError as exc:  # each kernel start will say it again, to its requester
            runtime.log.warning("%s runtime: %s", runtime.name, exc)
        with chronos_boundary():
            store = Store(devices_of(runtime), state_path or None)
        discovery = DeviceDiscovery(
            lambda: devices_of(runtime),
            store,
            runtime.log,
            settings.discovery_interval,
            on_states=metrics.update_device_states,
        )
        broker = PartitionBroker(
            store,
            on_allocated=metrics.ALLOCATION.observe,
            rules=Rules(
                settings.queue_policy,
                settings.fair_share_half_life,
                settings.fair_share_aging or None,
            ),
            on_waited=metrics.QUEUE_WAIT.observe,
            on_holdings=metrics.update_holders,
        )
        registry = KernelRegistry()
        jobs = JobRunner(kernels, JobStore(store.path), registry, settings)
        checkpoints = CheckpointStore.from_environment(Path(store.path).parent)
        return cls(
            settings,
            runtime,
            broker,
            KernelRecords(store.path),
            callbacks,
            registry,
            jobs,
            checkpoints,
            discovery,
        )

    def refresh(self) -> dict[str, Partition]:
        """Every kernel's partition as the store has it now (an operator may have changed
        one), read in one transaction; by kernel id."""
        partitions = self.registry.partitions
        current = self.broker.get_many([p.id for p in partitions.values()])
        for kernel_id, partition in list(partitions.items()):
            if partition.id in current and kernel_id in partitions:
                partitions[kernel_id] = current[partition.id]
        return dict(partitions)

    def describe(self) -> dict[str, Any]:
        """The gateway's state at a glance, for ``/api/cumulus/health``."""
        return {
            "runtime": self.runtime.name,
            "partitions": len(self.broker.partitions()),
            "queue": self.broker.queue_length,
            # every device the state file knows, and those the last discovery found
            "devices": len(self.broker.devices),
            "devices_online": sum(self.discovery.states_online()),
            "state": str(self.broker.path),
            "max_transfer_bytes": self.settings.max_transfer_bytes,
        }

    def close(self) -> None:
        self.records.close()
        self.jobs.store.close()
        self.broker.close()
