"""`CumulusKernelManager`: jupyter_server's kernel manager plus the gateway's partition state.

It owns the Chronos store and the `PartitionBroker`, the runtime kernels start on, the map from
kernel id to partition, and the record of kernels whose partition ended (so that a client
asking after one hears "partition expired", with a 410, rather than a bare 404).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
from typing import Any

from jupyter_client.provisioning.factory import KernelProvisionerFactory
from jupyter_server._tz import utcnow
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
from traitlets import Float, Unicode, default

from chronos import Partition, Store, discover
from gateway import metrics
from gateway.callback import Callbacks
from gateway.jobs import JobRunner, JobStore
from gateway.kernelspecs import BUILTIN_NAME
from gateway.partitions import PartitionBroker
from gateway.runtimes import Runtime, runtime_for
from gateway.state import KernelRecord, KernelRecords


def cumulus_model(partition: Partition) -> dict[str, Any]:
    """The ``cumulus`` object of a kernel model."""
    return {
        "partition_id": partition.id,
        "device": ",".join(partition.device_ids),
        "devices": partition.device_ids,
        "amount": partition.amount.value,
        "memory_bytes": partition.memory_bytes,
        "owner": partition.owner,
        "created_at": partition.created_at,
        "expires_at": partition.expires_at,
        "seconds_left": round(partition.seconds_left(), 3),
    }


class CumulusKernelManager(AsyncMappingKernelManager):  # type: ignore[misc]
    """Kernels in Chronos partitions, started through `CumulusProvisioner`."""

    runtime_name = Unicode(
        "local",
        config=True,
        help="Where kernels run: local (processes on this host), docker (a job container per "
        "kernel on this host's engine) or swarm (a Docker Swarm service per kernel).",
    )
    state_path = Unicode(
        "", config=True, help="Chronos state file (default: $CHRONOS_STATE or the user data dir)."
    )
    data_socket_dir = Unicode(
        config=True,
        help="Directory for the kernels' Unix data sockets, through which a client's transfer "
        "connection is handed to a kernel on this host; empty: relay transfers over TCP.",
    )
    launch_timeout = Float(
        60.0, config=True, help="Seconds a kernel request may wait in the queue for a partition."
    )

    job_queue_timeout = Float(
        86400.0, config=True, help="Seconds a batch job may wait in the queue for a partition."
    )
    job_retention = Float(
        7 * 86400.0,
        config=True,
        help="Seconds a finished job's state and log are kept (cumulus get/logs) after it ends.",
    )

    @default("data_socket_dir")
    def _default_data_socket_dir(self) -> str:
        return os.path.join(tempfile.gettempdir(), f"cumulus-data-{os.getuid()}")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.default_kernel_name = BUILTIN_NAME
        self.callbacks = Callbacks()
        self.runtime: Runtime = runtime_for(self.runtime_name, parent=self)
        try:
            self.runtime.check()
        except ValueError as exc:  # each kernel start will say it again, to its requester
            self.log.warning("%s runtime: %s", self.runtime.name, exc)
        store = Store(self.runtime.devices() or discover(), self.state_path or None)
        self.broker = PartitionBroker(store, on_allocated=metrics.ALLOCATION.observe)
        self.records = KernelRecords(store.path)
        self.partitions: dict[str, Partition] = {}
        self.ended: dict[str, str] = {}  # kernel id -> why its partition ended
        self.connections: dict[str, set[Any]] = {}  # kernel id -> open websocket handlers
        self.jobs = JobRunner(self, JobStore(store.path))

    async def start_kernel(  # type: ignore[override]
        self, *, kernel_id: str | None = None, path: Any = None, **kwargs: Any
    ) -> str:
        """Start a kernel; when its launch fails (no partition, bad input) nothing of it stays
        behind, so a later shutdown of all kernels does not wait on it."""
        kernel_id = kernel_id or str(uuid.uuid4())
        try:
            started: str = await super().start_kernel(kernel_id=kernel_id, path=path, **kwargs)
        except BaseException:
            self._pending_kernels.pop(kernel_id, None)
            self._kernels.pop(kernel_id, None)
            raise
        await self._save(started)
        return started

    async def restart_kernel(self, kernel_id: str, now: bool = False) -> None:  # type: ignore[override]
        await super().restart_kernel(kernel_id, now=now)
        await self._save(kernel_id)

    async def shutdown_kernel(  # type: ignore[override]
        self, kernel_id: str, now: bool = False, restart: bool = False
    ) -> None:
        """Shut a kernel down; one the restarter is bringing back (its process died) is let
        finish restarting first: jupyter_client reads ``ready.exception()`` and fails with
        ``InvalidStateError`` (a 500, partition kept) on a restart still under way."""
        km = self._kernels.get(kernel_id)
        deadline = time.monotonic() + self.launch_timeout
        # a restart is a shutdown then a start, each with its own pending `ready`
        while km is not None and not km.ready.done():
            try:
                await asyncio.wait_for(asyncio.shield(km.ready), deadline - time.monotonic())
            except Exception:  # a failed restart is handled below as usual
                if not km.ready.done():
                    break  # still pending at the launch timeout: jupyter_client decides
        await super().shutdown_kernel(kernel_id, now=now, restart=restart)
        if not restart:
            self.records.delete(kernel_id)

    def _handle_kernel_died(self, kernel_id: str) -> None:
        """The restarter gave up on a kernel: its partition must not outlive it."""
        partition = self.partitions.pop(kernel_id, None)
        km = self._kernels.get(kernel_id)
        outside = getattr(km.provisioner, "ended_outside", None) if km is not None else None
        if partition is not None:
            self.broker.release(partition.id, outside or "kernel died")
            what = (
                f"The kernel ended: {outside}"
                if outside
                else ("The kernel died and could not be restarted")
            )
            self.mark_ended(
                kernel_id, f"{what}; partition {partition.id} was released. Start a new kernel."
            )
        handle = getattr(km.provisioner, "handle", None) if km is not None else None
        if handle is not None:  # its container or service is not left behind
            task = asyncio.ensure_future(asyncio.to_thread(handle.remove))
            task.add_done_callback(
                lambda t: (
                    t.exception()
                    and self.log.warning(
                        "could not remove kernel %s's container: %s", kernel_id, t.exception()
                    )
                )
            )
        self.records.delete(kernel_id)
        super()._handle_kernel_died(kernel_id)

    async def _save(self, kernel_id: str) -> None:
        km = self.get_kernel(kernel_id)
        assert km.provisioner is not None
        info = await km.provisioner.get_provisioner_info()
        self.records.save(kernel_id, km.kernel_name, dict(km.get_connection_info()), info)

    async def adopt_kernels(self) -> None:
        """After a restart: take back every recorded kernel whose process still runs; release
        the partitions of those that died meanwhile."""
        for record in self.records.all():
            try:
                adopted = await self._adopt(record)
            except Exception:
                self.log.exception("Could not adopt kernel %s", record.kernel_id)
                adopted = False
            if not adopted:
                self._forget(record)

    async def _adopt(self, record: KernelRecord) -> bool:
        km = self.kernel_manager_factory(
            connection_file=os.path.join(self.connection_dir, f"kernel-{record.kernel_id}.json"),
            parent=self,
            log=self.log,
            kernel_name=record.kernel_name,
            kernel_spec_manager=self.kernel_spec_manager,
        )
        km.load_connection_info(record.connection_info)
        km.kernel_id = record.kernel_id
        km.provisioner = KernelProvisionerFactory.instance(parent=self).create_provisioner_instance(
            record.kernel_id, km.kernel_spec, parent=km
        )
        await km.provisioner.load_provisioner_info(record.provisioner_info)
        partition = km.provisioner.partition
        if km.provisioner.process is None or partition is None or not partition.is_active:
            return False
        km.provisioner.connection_info = km.get_connection_info()
        km.ready.set_result(None)
        km._connect_control_socket()
        km.start_restarter()
        self._kernels[record.kernel_id] = km
        self.partitions[record.kernel_id] = partition
        self._kernel_connections[record.kernel_id] = 0
        km.execution_state = "idle"
        km.reason = ""
        km.last_activity = utcnow()
        await self._finish_kernel_start(record.kernel_id)
        self.log.info("Adopted kernel %s (partition %s)", record.kernel_id, partition.id)
        return True

    def _forget(self, record: KernelRecord) -> None:
        partition_id = record.provisioner_info.get("partition_id")
        if partition_id:
            self.broker.release(partition_id, "kernel gone while the gateway was down")
        process = self.runtime.adopt(record.provisioner_info.get("runtime") or {})
        if process is not None:  # its partition ended: the kernel must not run on
            process.kill()
            process.remove()
        self.records.delete(record.kernel_id)
        self.log.info("Kernel %s did not survive; its partition was released", record.kernel_id)

    def kernel_model(self, kernel_id: str) -> dict[str, Any]:
        model: dict[str, Any] = super().kernel_model(kernel_id)
        partition = self.partitions.get(kernel_id)
        model["cumulus"] = cumulus_model(partition) if partition else None
        return model

    def owner_of(self, kernel_id: str) -> str | None:
        partition = self.partitions.get(kernel_id)
        return partition.owner if partition else None

    def end_reason(self, kernel_id: str) -> str | None:
        """Why a kernel that is gone ended, when its partition ended under it."""
        return self.ended.get(kernel_id)

    def mark_ended(self, kernel_id: str, reason: str) -> None:
        self.ended[kernel_id] = reason
        if len(self.ended) > 10_000:  # bounded: keep the most recent
            for old in list(self.ended)[:1_000]:
                del self.ended[old]

    def refresh(self) -> dict[str, Partition]:
        """Every kernel's partition as the store has it now (an operator may have changed
        one), read in one transaction; by kernel id."""
        current = self.broker.store.get_many([p.id for p in self.partitions.values()])
        for kernel_id, partition in list(self.partitions.items()):
            if partition.id in current and kernel_id in self.partitions:
                self.partitions[kernel_id] = current[partition.id]
        return dict(self.partitions)

    def now(self) -> float:
        return time.time()
