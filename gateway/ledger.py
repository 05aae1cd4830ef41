"""The fair-share ledger that outlives the gateway process: each owner's decayed GPU-seconds
(`gateway.scheduler.FairShare`) and the partitions still to be charged, in the state file
beside Chronos's partitions (their own tables, through `gateway.sqlite`).

A gateway restarted (or killed and started again) reads both back: the queue is ordered by the
same recent use as before, and a partition handed out before the restart is charged when it
ends, like any other. Usage is stored as ``(GPU-seconds, as of)`` and decayed on reading, so the
time the gateway was down counts as time passed. One gateway writes the ledger of a state file.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from gateway.scheduler import FairShare
from gateway.sqlite import Table

_SCHEMA = """
CREATE TABLE IF NOT EXISTS gateway_fair_share (
    owner       TEXT PRIMARY KEY,
    gpu_seconds REAL NOT NULL,
    as_of       REAL NOT NULL
)
"""
_PENDING_SCHEMA = """
CREATE TABLE IF NOT EXISTS gateway_fair_share_pending (
    partition_id TEXT PRIMARY KEY
)
"""


class FairShareLedger:
    """`FairShare` kept in the state file at ``path``: `load` fills one from it, `charge`
    charges and writes, `expect` notes a partition to charge when it ends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._usage = Table(path, _SCHEMA, "the fair-share ledger")
        self._pending = Table(path, _PENDING_SCHEMA, "the fair-share ledger")

    def load(self, share: FairShare) -> list[str]:
        """Put every owner's stored use into ``share``; the ids of the partitions that were
        handed out and not yet charged."""
        for owner, gpu_seconds, as_of in self._usage.execute(
            "SELECT owner, gpu_seconds, as_of FROM gateway_fair_share"
        ):
            share.restore(owner, float(gpu_seconds), float(as_of))
        return [row[0] for row in self._pending.execute(
            "SELECT partition_id FROM gateway_fair_share_pending ORDER BY partition_id"
        )]  # fmt: skip

    def expect(self, partition_id: str) -> None:
        """``partition_id`` is to be charged when it ends."""
        self._pending.execute(
            "INSERT OR IGNORE INTO gateway_fair_share_pending (partition_id) VALUES (?)",
            (partition_id,),
        )

    def forget(self, partition_ids: Iterable[str]) -> None:
        """Stop expecting ``partition_ids`` (gone from the store: nothing to charge)."""
        self._pending.executemany(
            "DELETE FROM gateway_fair_share_pending WHERE partition_id = ?",
            [(p,) for p in partition_ids],
        )

    def charge(
        self, share: FairShare, owner: str, gpu_seconds: float, at: float, partition_id: str
    ) -> None:
        """Charge ``owner`` in ``share`` for ``partition_id`` and write it down. The partition
        leaves the pending list first: a crash between the two writes loses this one charge
        rather than making a restarted gateway charge it twice."""
        share.charge(owner, gpu_seconds, at)
        self.forget([partition_id])
        value, as_of = share.entry(owner)
        self._usage.execute(
            "INSERT INTO gateway_fair_share (owner, gpu_seconds, as_of) VALUES (?, ?, ?) "
            "ON CONFLICT(owner) DO UPDATE SET gpu_seconds = excluded.gpu_seconds, "
            "as_of = excluded.as_of",
            (owner, value, as_of),
        )

    def close(self) -> None:
        self._usage.close()
        self._pending.close()
