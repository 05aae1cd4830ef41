"""The gateway's own tables in the state file (kernel records, jobs): one helper for all of them.

Chronos keeps its partitions in the same SQLite file, in WAL mode (the Chronos store sets it),
so readers in other processes are not blocked. Each gateway table has its own connection
(autocommit: every statement is its own short transaction; a busy timeout), one lock (the
connection is shared by the event loop and worker threads), and turns every ``sqlite3.Error``
into `Unavailable` naming the file.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from cumulus_jupyter.errors import Unavailable

TIMEOUT_S = 10.0


class Table:
    """One connection to the state file, for the rows of one part of the gateway."""

    def __init__(self, path: Path, schema: str, what: str, timeout: float = TIMEOUT_S) -> None:
        self.path = path
        self.what = what  # "kernel records", "jobs": said in every error
        self.timeout = timeout
        self._lock = threading.Lock()
        with self._unavailable():
            self._db = sqlite3.connect(
                path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
            self._db.execute(schema)

    @contextlib.contextmanager
    def _unavailable(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise Unavailable(
                    f"State file {self.path} is locked by another process; gave up after "
                    f"waiting {self.timeout:g} s ({self.what}). Retry"
                ) from exc
            raise Unavailable(f"State file {self.path} cannot hold {self.what}: {exc}") from exc
        except sqlite3.Error as exc:
            raise Unavailable(f"State file {self.path} cannot hold {self.what}: {exc}") from exc

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement; its rows."""
        with self._lock, self._unavailable():
            return self._db.execute(sql, parameters).fetchall()

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._lock, self._unavailable():
            self._db.executemany(sql, rows)

    def close(self) -> None:
        with self._lock:
            self._db.close()
