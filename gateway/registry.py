"""`KernelRegistry`: what the gateway knows of its live kernels beyond jupyter_server's models.

By kernel id: the partition each kernel runs in (as last read from the store), why a kernel that
is gone ended (so a client asking after it hears "partition expired", a 410, not a bare 404), and
the kernel's open WebSocket connections (through which expiry warnings reach its clients), and
the kernels adopted after a gateway restart (`gateway.adoption`).
"""

from __future__ import annotations

from typing import Any, Protocol

from chronos import Partition
from gateway.adoption import Adoptions

MAX_ENDED = 10_000  # end reasons kept; the oldest are forgotten first


class Connection(Protocol):
    """A client's WebSocket on a kernel, as the expiry supervisor reaches it."""

    def inject_iopub(self, frames: list[bytes]) -> None: ...


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


class KernelRegistry:
    """Partitions, end reasons and connections of the gateway's kernels. Event loop only."""

    def __init__(self) -> None:
        self.partitions: dict[str, Partition] = {}
        self.ended: dict[str, tuple[str, str | None]] = {}  # kernel id: (why, whose)
        self.connections: dict[str, set[Connection]] = {}
        self.adoptions = Adoptions()

    def owner_of(self, kernel_id: str) -> str | None:
        partition = self.partitions.get(kernel_id)
        return partition.owner if partition else None

    def end_reason(self, kernel_id: str) -> str | None:
        """Why a kernel that is gone ended, when its partition ended under it."""
        ended = self.ended.get(kernel_id)
        return ended[0] if ended else None

    def ended_owner(self, kernel_id: str) -> str | None:
        """Whose a kernel that is gone was (None: unknown, or the operator's)."""
        ended = self.ended.get(kernel_id)
        return ended[1] if ended else None

    def mark_ended(self, kernel_id: str, reason: str, owner: str | None = None) -> None:
        """Keep why ``kernel_id`` ended, and whose it was (default: its partition's owner)."""
        self.ended[kernel_id] = (reason, owner or self.owner_of(kernel_id))
        self.adoptions.forget(kernel_id)
        if len(self.ended) > MAX_ENDED:  # bounded: keep the most recent
            for old in list(self.ended)[: MAX_ENDED // 10]:
                del self.ended[old]

    def connect(self, kernel_id: str, connection: Connection) -> None:
        self.connections.setdefault(kernel_id, set()).add(connection)

    def disconnect(self, kernel_id: str, connection: Connection) -> None:
        self.connections.get(kernel_id, set()).discard(connection)

    def clients(self, kernel_id: str) -> list[Connection]:
        return list(self.connections.get(kernel_id, ()))
