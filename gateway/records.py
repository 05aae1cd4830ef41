"""Kernel records that outlive the gateway process, in the same SQLite file as Chronos's
partitions (their own table, through `gateway.sqlite`).

A record holds what a restarted gateway needs to talk to a kernel again: the kernelspec name,
the connection info (ports and HMAC key) and the provisioner's info (partition id, runtime
handle). It is written when a kernel has started or restarted and deleted when it shuts down;
a kernel that never got one (its start failed) costs no write, so a start refused because the
state file is locked or full is answered with that, not with a second failed write.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.sqlite import Table

_SCHEMA = """
CREATE TABLE IF NOT EXISTS gateway_kernels (
    kernel_id        TEXT PRIMARY KEY,
    kernel_name      TEXT NOT NULL,
    connection_info  TEXT NOT NULL,
    provisioner_info TEXT NOT NULL,
    saved_at         REAL NOT NULL
)
"""


@dataclass(frozen=True)
class KernelRecord:
    kernel_id: str
    kernel_name: str
    connection_info: dict[str, Any]
    provisioner_info: dict[str, Any]


def _jsonable(info: dict[str, Any]) -> dict[str, Any]:
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in info.items()}


class KernelRecords:
    """Durable kernel records; every call is one short transaction."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._table = Table(path, _SCHEMA, "kernel records")
        self._kept: set[str] = set()  # the ids with a record, as far as this process knows

    def save(
        self,
        kernel_id: str,
        kernel_name: str,
        connection_info: dict[str, Any],
        provisioner_info: dict[str, Any],
    ) -> None:
        row = (
            kernel_id, kernel_name, json.dumps(_jsonable(connection_info)),
            json.dumps(provisioner_info, default=str), time.time(),
        )  # fmt: skip
        self._table.execute("INSERT OR REPLACE INTO gateway_kernels VALUES (?,?,?,?,?)", row)
        self._kept.add(kernel_id)

    def delete(self, kernel_id: str) -> None:
        """Forget a kernel's record; none was saved or read here: nothing to do."""
        if kernel_id not in self._kept:
            return
        self._table.execute("DELETE FROM gateway_kernels WHERE kernel_id = ?", (kernel_id,))
        self._kept.discard(kernel_id)

    def all(self) -> list[KernelRecord]:
        rows = self._table.execute(
            "SELECT kernel_id, kernel_name, connection_info, provisioner_info "
            "FROM gateway_kernels ORDER BY saved_at"
        )
        records = [KernelRecord(k, n, json.loads(c), json.loads(p)) for k, n, c, p in rows]
        self._kept.update(r.kernel_id for r in records)
        return records

    def close(self) -> None:
        self._table.close()
