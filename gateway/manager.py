"""`CumulusKernelManager`: jupyter_server's kernel manager plus the gateway's partition state.

It owns the Chronos store and the `PartitionBroker`, the runtime kernels start on, the map from
kernel id to partition, and the record of kernels whose partition ended (so that a client
asking after one hears "partition expired", with a 410, rather than a bare 404).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
from traitlets import Float, Unicode

from chronos import Partition, Store, discover
from gateway.kernelspecs import BUILTIN_NAME
from gateway.partitions import PartitionBroker
from gateway.runtimes import Runtime, runtime_for


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
        "local", config=True, help="Where kernels run: local (docker, swarm: not yet)."
    )
    state_path = Unicode(
        "", config=True, help="Chronos state file (default: $CHRONOS_STATE or the user data dir)."
    )
    launch_timeout = Float(
        60.0, config=True, help="Seconds a kernel request may wait in the queue for a partition."
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.default_kernel_name = BUILTIN_NAME
        self.broker = PartitionBroker(Store(discover(), self.state_path or None))
        self.runtime: Runtime = runtime_for(self.runtime_name)
        self.partitions: dict[str, Partition] = {}
        self.ended: dict[str, str] = {}  # kernel id -> why its partition ended
        self.connections: dict[str, set[Any]] = {}  # kernel id -> open websocket handlers

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
        return started

    def kernel_model(self, kernel_id: str) -> dict[str, Any]:
        model: dict[str, Any] = super().kernel_model(kernel_id)
        partition = self.partitions.get(kernel_id)
        model["cumulus"] = cumulus_model(partition) if partition else None
        return model

    def end_reason(self, kernel_id: str) -> str | None:
        """Why a kernel that is gone ended, when its partition ended under it."""
        return self.ended.get(kernel_id)

    def mark_ended(self, kernel_id: str, reason: str) -> None:
        self.ended[kernel_id] = reason
        if len(self.ended) > 10_000:  # bounded: keep the most recent
            for old in list(self.ended)[:1_000]:
                del self.ended[old]

    def refresh(self, kernel_id: str) -> Partition | None:
        """The kernel's partition as the store has it now (an operator may have changed it)."""
        partition = self.partitions.get(kernel_id)
        if partition is None:
            return None
        current = self.broker.store.get(partition.id)
        self.partitions[kernel_id] = current
        return current

    def now(self) -> float:
        return time.time()
