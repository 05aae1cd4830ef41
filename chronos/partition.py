"""Partitions: a share of one device, or whole devices, held by an owner until an expiry."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from chronos.amount import GpuAmount, format_duration
from chronos.errors import PartitionEnded


class PartitionState(StrEnum):
    """A partition is active until it is released or expires; both are final."""

    ACTIVE = "active"
    RELEASED = "released"
    EXPIRED = "expired"

    def check_can_end(self, partition_id: str, ended_at: float | None) -> None:
        """Raise `PartitionEnded` unless the partition is active (ending is final)."""
        if self is not PartitionState.ACTIVE:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ended_at or 0))
            raise PartitionEnded(f"Partition {partition_id} was already {self.value} at {when}")


@dataclass(frozen=True)
class ProcessRef:
    """A host process, told apart from a later process that reuses its PID by its start time."""

    pid: int
    started: float


@dataclass(frozen=True)
class Partition:
    """What a holder gets: devices (indices), amount, a memory cap per device, an expiry."""

    id: str
    node: str
    devices: tuple[int, ...]
    amount: GpuAmount
    memory_bytes: int
    owner: str
    created_at: float
    expires_at: float
    state: PartitionState = PartitionState.ACTIVE
    ended_at: float | None = None
    end_reason: str | None = None
    processes: tuple[ProcessRef, ...] = field(default=())

    @property
    def device_ids(self) -> list[str]:
        return [f"gpu{i}" for i in self.devices]

    def seconds_left(self, now: float | None = None) -> float:
        return max(0.0, self.expires_at - (time.time() if now is None else now))

    def to_json(self, now: float | None = None) -> dict[str, Any]:
        """The partition as the CLI's ``--json`` and the gateway's ``cumulus`` object show it."""
        return {
            "id": self.id,
            "node": self.node,
            "devices": self.device_ids,
            "device_indices": list(self.devices),
            "amount": self.amount.value,
            "memory_bytes": self.memory_bytes,
            "owner": self.owner,
            "pids": [p.pid for p in self.processes],
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "seconds_left": round(self.seconds_left(now), 3) if self.is_active else 0.0,
            "state": self.state.value,
            "ended_at": self.ended_at,
            "end_reason": self.end_reason,
        }

    @property
    def is_active(self) -> bool:
        return self.state is PartitionState.ACTIVE

    def require_active(self) -> None:
        """Raise `PartitionEnded` (saying when and how) unless the partition is active."""
        self.state.check_can_end(self.id, self.ended_at)

    def describe(self, now: float | None = None) -> str:
        """One line for people: ``p-1a2b3c on gpu0: 0.5 GPU, 40.0 GiB, 29m59s left``."""
        left = format_duration(self.seconds_left(now)) + " left" if self.is_active else self.state
        return (
            f"{self.id} on {','.join(self.device_ids)}: {self.amount} GPU, "
            f"{format_bytes(self.memory_bytes)}, {left}"
        )


def new_partition_id() -> str:
    return f"p-{secrets.token_hex(6)}"


def format_bytes(n: float) -> str:
    """``42949672960`` -> ``"40.0 GiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
