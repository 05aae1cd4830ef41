"""The durable partition store: one SQLite file (WAL) shared by every process on the host.

The CLI, the gateway and its supervisor each open the same file; every change runs in one
``BEGIN IMMEDIATE`` transaction, so two processes allocating at once are serialised by SQLite
and can never over-commit a device. Partitions outlive the process that made them. Expired ones
are reaped inside every write transaction and by `Store.reap`, so whoever touches the store
next frees their capacity.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import platformdirs
import psutil

from chronos import allocator
from chronos.amount import (
    MAX_DURATION_S,
    TENTHS_PER_DEVICE,
    GpuAmount,
    format_duration,
    parse_duration,
)
from chronos.device import Device, Reconciled, reconcile, resolve
from chronos.errors import InvalidArgument, NotFound, ResourceExhausted, StateUnavailable
from chronos.partition import (
    Partition,
    PartitionState,
    ProcessRef,
    new_partition_id,
)

STATE_ENV = "CHRONOS_STATE"
LOCK_TIMEOUT_ENV = "CHRONOS_LOCK_TIMEOUT"
SCHEMA_VERSION = 2  # 2: the devices table (a schema-1 file gains it on open)
DEFAULT_LOCK_TIMEOUT_S = 10.0
DEFAULT_RETENTION_S = 7 * 86_400
LOCAL_NODE = "local"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS partitions (
    id           TEXT PRIMARY KEY,
    node         TEXT NOT NULL,
    devices      TEXT NOT NULL,
    tenths       INTEGER NOT NULL,
    memory_bytes INTEGER NOT NULL,
    owner        TEXT NOT NULL,
    created_at   REAL NOT NULL,
    expires_at   REAL NOT NULL,
    state        TEXT NOT NULL,
    ended_at     REAL,
    end_reason   TEXT
);
CREATE INDEX IF NOT EXISTS partitions_state ON partitions (state, expires_at);
-- what active partitions hold, one row per device: the capacity check sums this
CREATE TABLE IF NOT EXISTS shares (
    partition_id TEXT NOT NULL,
    node         TEXT NOT NULL,
    device       INTEGER NOT NULL,
    tenths       INTEGER NOT NULL,
    PRIMARY KEY (partition_id, device)
);
CREATE INDEX IF NOT EXISTS shares_device ON shares (node, device);
-- processes confined to a partition, kept after it ends until the watchdog has stopped them
CREATE TABLE IF NOT EXISTS processes (
    partition_id TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    started      REAL NOT NULL,
    PRIMARY KEY (partition_id, pid)
);
-- every device this file has known, under the index partitions and shares refer to: a
-- restarted process matches its discovery against these, so no device is renumbered
CREATE TABLE IF NOT EXISTS devices (
    idx    INTEGER PRIMARY KEY,
    record TEXT NOT NULL
);
"""

_COLUMNS = (
    "id, node, devices, tenths, memory_bytes, owner, created_at, expires_at, state, ended_at, "
    "end_reason"
)


def default_state_path() -> Path:
    """``$CHRONOS_STATE`` if set, else ``chronos.sqlite3`` in the user's data dir."""
    configured = os.environ.get(STATE_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path(platformdirs.user_data_dir("cumulus", appauthor=False)) / "chronos.sqlite3"


def process_ref(pid: int) -> ProcessRef:
    """The running process ``pid`` with its start time; `InvalidArgument` if there is none."""
    try:
        return ProcessRef(pid=pid, started=psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError) as exc:
        raise InvalidArgument(f"Invalid pid: {pid}. No such running process") from exc


class Store:
    """Partitions of ``devices`` on ``node``, kept in the SQLite file at ``path``.

    Safe to share between threads (one connection behind a lock) and between processes (SQLite
    transactions). ``clock`` exists so tests and the supervisor can agree on "now".

    ``devices`` is what this process discovered; the store's `devices` is every device the
    state file has known, by index (its devices table, kept across restarts). Opening the
    store, and each later discovery (`follow`), matches the devices found against the known
    ones (`chronos.device.reconcile`): known ones keep their index, those found for the first
    time are appended, known ones not found are ``offline``: no new partition is cut from
    those until they are found again, under the same index (partitions on them stay as they
    are).
    """

    def __init__(
        self,
        devices: Sequence[Device],
        path: Path | str | None = None,
        *,
        node: str = LOCAL_NODE,
        lock_timeout: float | None = None,
        retention: float = DEFAULT_RETENTION_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.devices: list[Device] = []
        self.offline: frozenset[int] = frozenset()  # indices of devices not found lately
        self.path = Path(path) if path is not None else default_state_path()
        self.node = node
        self.retention = retention
        self.clock = clock
        timeout = lock_timeout if lock_timeout is not None else _env_lock_timeout()
        self._lock = threading.Lock()
        self._db = self._connect(timeout)
        try:
            self.follow(devices)
        except BaseException:
            self._db.close()
            raise

    # -- opening -------------------------------------------------------------------------------

    def _connect(self, timeout: float) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateUnavailable(
                f"Cannot create the state directory {self.path.parent}: {exc.strerror}"
            ) from exc
        with self._mapped_errors("open"):
            db = sqlite3.connect(
                self.path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
            try:
                db.execute("PRAGMA journal_mode=WAL")
                # WAL + NORMAL survives any process crash; only a power cut can lose the last
                # commits, which is an acceptable trade for ~20x faster transactions.
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute("PRAGMA foreign_keys=ON")
                self._migrate(db)
            except BaseException:
                db.close()
                raise
        return db

    def _migrate(self, db: sqlite3.Connection) -> None:
        if self._schema_ready(db):
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            if self._schema_ready(db):  # another process created it while we waited
                db.execute("COMMIT")
                return
            # executescript would commit early, so run the statements one by one
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _schema_ready(self, db: sqlite3.Connection) -> bool:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return True
        if 0 < version < SCHEMA_VERSION:  # an older Chronos store: _SCHEMA adds what it lacks
            return False
        has_tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if version > SCHEMA_VERSION or (version == 0 and has_tables):
            raise StateUnavailable(
                f"State file {self.path} is not a Chronos store of schema {SCHEMA_VERSION} "
                f"(found version {version}); move it aside or set {STATE_ENV}"
            )
        return False

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- devices -------------------------------------------------------------------------------

    def follow(self, found: Sequence[Device]) -> Reconciled:
        """Take a new discovery's ``found`` devices: new ones are appended (next index),
        known ones missing are offline, known ones found again are online. What changed is in
        the answer (``added``, ``offline``); `devices` and `offline` are replaced whole, so a
        reader in another thread sees the old state or the new one.

        The known devices are the state file's, read in the same transaction that records
        the new ones, so two processes sharing the file (the gateway, ``chronos``) never give
        one index to two devices. Only a discovery that changes the table takes the writer
        lock: a process opening the store beside a long transaction still reads."""
        with self._read("devices") as db:
            known = _stored_devices(db)
            changed = reconcile(known, found)
            if not _changed_devices(known, changed):
                return self._take(changed)
        with self._transaction("devices") as db:
            known = _stored_devices(db)  # again: another process may have added some since
            changed = reconcile(known, found)
            db.executemany(
                "INSERT OR REPLACE INTO devices (idx, record) VALUES (?, ?)",
                [(d.index, json.dumps(d.to_json())) for d in _changed_devices(known, changed)],
            )
        with self._lock:
            return self._take(changed)

    def _take(self, changed: Reconciled) -> Reconciled:
        self.devices = list(changed.devices)
        self.offline = changed.offline
        return changed

    def is_online(self, index: int) -> bool:
        return index not in self.offline and 0 <= index < len(self.devices)

    # -- transactions --------------------------------------------------------------------------

    @contextmanager
    def _mapped_errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise StateUnavailable(
                    f"State file {self.path} is locked by another process; gave up after "
                    f"waiting ({doing}). Retry, or raise {LOCK_TIMEOUT_ENV}"
                ) from exc
            raise StateUnavailable(
                f"State file {self.path} cannot be used ({doing}): {exc}"
            ) from exc
        except sqlite3.DatabaseError as exc:
            raise StateUnavailable(
                f"State file {self.path} is corrupt or not a Chronos store ({exc}); "
                f"move it aside or set {STATE_ENV}"
            ) from exc

    @contextmanager
    def _transaction(self, doing: str) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction (the writer lock taken up front), rolled back whole on
        any error so that a failed call changes nothing."""
        with self._lock, self._mapped_errors(doing):
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    @contextmanager
    def _write(self, doing: str) -> Iterator[sqlite3.Connection]:
        """A transaction that first reaps expired partitions, so their capacity is free."""
        with self._transaction(doing) as db:
            self._reap_in(db, self.clock())
            yield db

    @contextmanager
    def _read(self, doing: str) -> Iterator[sqlite3.Connection]:
        with self._lock, self._mapped_errors(doing):
            yield self._db

    # -- operations ----------------------------------------------------------------------------

    def create(
        self,
        amount: GpuAmount | str | float | int,
        duration: str | float | int | None = None,
        *,
        devices: str | Sequence[str] | None = None,
        owner: str = "",
        pids: Sequence[int] = (),
    ) -> Partition:
        """Take a partition of ``amount`` for ``duration`` on one of ``devices`` (refs such as
        ``"0"``, ``"gpu1"`` or a UUID; ``None`` or ``"any"``: every device).

        Raises `InvalidArgument` for a bad amount, duration, device or pid, and
        `ResourceExhausted` (with ``retry_after``) when nothing fits now.
        """
        gpu = GpuAmount.parse(amount)
        seconds = parse_duration(duration)
        candidates = self._online(self._candidates(devices))
        refs = [process_ref(pid) for pid in pids]
        with self._write("create") as db:
            now = self.clock()
            used = self._used(db)
            try:
                hosts = {d.index: d.host for d in self.devices if d.host}
                chosen = allocator.place(gpu, candidates, used, hosts or None)
            except ResourceExhausted as exc:
                exc.retry_after = self._retry_after(db, candidates, now)
                raise
            memory = min(self.devices[i].memory_bytes for i in chosen)
            partition = Partition(
                id=new_partition_id(),
                node=self.node,
                devices=tuple(chosen),
                amount=gpu,
                memory_bytes=memory * gpu.tenths_per_device // TENTHS_PER_DEVICE,
                owner=owner,
                created_at=now,
                expires_at=now + seconds,
                processes=tuple(refs),
            )
            db.execute(
                f"INSERT INTO partitions ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    partition.id, partition.node, json.dumps(chosen), gpu.tenths,
                    partition.memory_bytes, owner, now, partition.expires_at,
                    PartitionState.ACTIVE.value, None, None,
                ),
            )  # fmt: skip
            db.executemany(
                "INSERT INTO shares VALUES (?,?,?,?)",
                [(partition.id, self.node, i, gpu.tenths_per_device) for i in chosen],
            )
            self._insert_processes(db, partition.id, refs)
        return partition

    def release(self, partition_id: str, reason: str = "released") -> Partition:
        """End an active partition now; `NotFound` / `PartitionEnded` otherwise."""
        return self._end(partition_id, PartitionState.RELEASED, reason)

    def _end(self, partition_id: str, state: PartitionState, reason: str) -> Partition:
        checked = _checked_id(partition_id)
        with self._write(state.value) as db:
            row = db.execute(
                "UPDATE partitions SET state=?, ended_at=?, end_reason=? "
                f"WHERE id=? AND state='active' RETURNING {_COLUMNS}",
                (state.value, self.clock(), reason, checked),
            ).fetchone()
            if row is None:  # unknown or already ended: say which
                self._get(db, checked).require_active()
            db.execute("DELETE FROM shares WHERE partition_id=?", (checked,))
            return _row_to_partition(row, self._processes_of(db, checked), self.clock())

    def extend(self, partition_id: str, seconds: float) -> Partition:
        """Move an active partition's expiry ``seconds`` later, in one transaction.

        The partition's whole life (creation to the new expiry) stays within Chronos's longest
        duration; `InvalidArgument` otherwise or for a non-positive ``seconds``, `NotFound` /
        `PartitionEnded` for an unknown or ended partition (one past its expiry is reaped
        first, so it is ended).
        """
        checked = _checked_id(partition_id)
        if not math.isfinite(seconds) or seconds <= 0:
            raise InvalidArgument(
                f"Invalid extension: {seconds!r}. Must be a positive number of seconds"
            )
        with self._write("extend") as db:
            current = self._get(db, checked)
            current.require_active()
            lasts = current.expires_at - current.created_at
            if lasts + seconds > MAX_DURATION_S:
                raise InvalidArgument(
                    f"Invalid extension: {format_duration(seconds)} would make partition "
                    f"{checked} last {format_duration(lasts + seconds)}; a partition lasts at "
                    f"most {format_duration(MAX_DURATION_S)}, so it can be extended by "
                    f"{format_duration(MAX_DURATION_S - lasts)} at most"
                )
            db.execute(
                "UPDATE partitions SET expires_at=? WHERE id=? AND state='active'",
                (current.expires_at + seconds, checked),
            )
            return self._get(db, checked)

    def attach(self, partition_id: str, pid: int) -> Partition:
        """Confine process ``pid`` (and its descendants) to an active partition."""
        ref = process_ref(pid)
        with self._write("attach") as db:
            current = self._get(db, _checked_id(partition_id))
            current.require_active()
            self._insert_processes(db, current.id, [ref])
            return self._get(db, current.id)

    def forget_process(self, partition_id: str, pid: int) -> None:
        """Drop a process record (the watchdog calls this once the process is gone)."""
        with self._write("forget process") as db:
            db.execute("DELETE FROM processes WHERE partition_id=? AND pid=?", (partition_id, pid))

    def get(self, partition_id: str) -> Partition:
        """The partition ``partition_id``, active or ended; `NotFound` if unknown."""
        with self._read("get") as db:
            return self._get(db, _checked_id(partition_id))

    def get_many(self, partition_ids: Sequence[str]) -> dict[str, Partition]:
        """The known ones of ``partition_ids``, by id, read in one transaction (a gateway
        re-reads every kernel's partition each second)."""
        ids = [_checked_id(p) for p in partition_ids]
        found: dict[str, Partition] = {}
        with self._read("get") as db:
            processes = self._processes(db)
            for start in range(0, len(ids), 500):  # under SQLite's bound-variable limit
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = db.execute(
                    f"SELECT {_COLUMNS} FROM partitions WHERE id IN ({marks})", chunk
                ).fetchall()
                now = self.clock()
                for row in rows:
                    found[row[0]] = _row_to_partition(row, processes.get(row[0], ()), now)
        return found

    def partitions(self, *, include_ended: bool = False) -> list[Partition]:
        """Active partitions (and recently ended ones with ``include_ended``), oldest first."""
        where = "" if include_ended else "WHERE state = 'active' AND expires_at > ?"
        args: tuple[float, ...] = () if include_ended else (self.clock(),)
        with self._read("list") as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM partitions {where} ORDER BY created_at, id", args
            ).fetchall()
            processes = self._processes(db)
        now = self.clock()
        return [_row_to_partition(row, processes.get(row[0], ()), now) for row in rows]

    def with_processes(self) -> list[Partition]:
        """Every partition, active or ended, that still has process records (the watchdog's
        work list)."""
        with self._read("watch") as db:
            processes = self._processes(db)
            if not processes:
                return []
            marks = ",".join("?" * len(processes))
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM partitions WHERE id IN ({marks})", list(processes)
            ).fetchall()
        now = self.clock()
        return [_row_to_partition(row, processes[row[0]], now) for row in rows]

    def used(self) -> dict[int, int]:
        """Tenths held on each device of this node by active partitions."""
        with self._write("usage") as db:
            return self._used(db)

    def reap(self) -> list[str]:
        """Mark every partition past its expiry as expired, and forget ended ones older than
        the retention; returns the ids newly expired. Every write reaps too; the watchdog and
        the gateway's supervisor call this on their own schedule."""
        with self._transaction("reap") as db:
            now = self.clock()
            reaped = self._reap_in(db, now)
            self._prune_in(db, now)
            return reaped

    # -- helpers (inside a transaction) --------------------------------------------------------

    def _reap_in(self, db: sqlite3.Connection, now: float) -> list[str]:
        reaped = [
            row[0]
            for row in db.execute(
                "UPDATE partitions SET state='expired', ended_at=expires_at, end_reason='expired' "
                "WHERE state='active' AND expires_at <= ? RETURNING id",
                (now,),
            ).fetchall()
        ]
        if reaped:
            marks = ",".join("?" * len(reaped))
            db.execute(f"DELETE FROM shares WHERE partition_id IN ({marks})", reaped)
        return reaped

    def _prune_in(self, db: sqlite3.Connection, now: float) -> None:
        """Forget ended partitions older than the retention (their processes long gone)."""
        if self.retention >= 0:
            db.execute(
                "DELETE FROM partitions WHERE state != 'active' AND ended_at < ? "
                "AND id NOT IN (SELECT partition_id FROM processes)",
                (now - self.retention,),
            )

    def _used(self, db: sqlite3.Connection) -> dict[int, int]:
        rows = db.execute(
            "SELECT device, SUM(tenths) FROM shares WHERE node=? GROUP BY device", (self.node,)
        )
        return {int(device): int(total) for device, total in rows}

    def _retry_after(self, db: sqlite3.Connection, candidates: list[int], now: float) -> float:
        marks = ",".join("?" * len(candidates))
        row = db.execute(
            "SELECT MIN(p.expires_at) FROM partitions p JOIN shares s ON s.partition_id = p.id "
            f"WHERE s.node=? AND s.device IN ({marks})",
            (self.node, *candidates),
        ).fetchone()
        return max(1.0, round(row[0] - now, 1)) if row and row[0] is not None else 60.0

    def _get(self, db: sqlite3.Connection, partition_id: str) -> Partition:
        row = db.execute(
            f"SELECT {_COLUMNS} FROM partitions WHERE id=?", (partition_id,)
        ).fetchone()
        if row is None:
            raise NotFound(f"Unknown partition: {partition_id}")
        return _row_to_partition(row, self._processes_of(db, partition_id), self.clock())

    @staticmethod
    def _processes_of(db: sqlite3.Connection, partition_id: str) -> tuple[ProcessRef, ...]:
        refs = db.execute(
            "SELECT pid, started FROM processes WHERE partition_id=? ORDER BY pid",
            (partition_id,),
        ).fetchall()
        return tuple(ProcessRef(p, s) for p, s in refs)

    def _processes(self, db: sqlite3.Connection) -> dict[str, tuple[ProcessRef, ...]]:
        found: dict[str, list[ProcessRef]] = {}
        for pid_owner, pid, started in db.execute(
            "SELECT partition_id, pid, started FROM processes ORDER BY pid"
        ):
            found.setdefault(pid_owner, []).append(ProcessRef(pid, started))
        return {k: tuple(v) for k, v in found.items()}

    @staticmethod
    def _insert_processes(
        db: sqlite3.Connection, partition_id: str, refs: list[ProcessRef]
    ) -> None:
        db.executemany(
            "INSERT OR REPLACE INTO processes VALUES (?,?,?)",
            [(partition_id, r.pid, r.started) for r in refs],
        )

    def candidates(self, refs: str | Sequence[str] | None) -> list[int]:
        """The indices of the devices ``refs`` name (as `create` reads them; ``None`` or
        ``"any"``: every device, offline ones too); `InvalidArgument` for a device that is not
        there."""
        return self._candidates(refs)

    def _online(self, candidates: list[int]) -> list[int]:
        """The online ones of ``candidates``; `ResourceExhausted` when none is (the device
        may be found again: a request can wait for it like for capacity)."""
        online = [i for i in candidates if self.is_online(i)]
        if not online:
            names = ", ".join(self.devices[i].id for i in candidates)
            raise ResourceExhausted(
                f"No device asked for is online: {names} not found by the last discovery "
                "(a host left or a device fell off); it is offered again once found",
                retry_after=60.0,
            )
        return online

    def _candidates(self, refs: str | Sequence[str] | None) -> list[int]:
        if not self.devices:
            raise InvalidArgument(
                "No devices: none was discovered (OpenCL, NVML) and none is configured "
                "(CHRONOS_DEVICES)"
            )
        if refs is None:
            return [d.index for d in self.devices]
        items = refs.split(",") if isinstance(refs, str) else list(refs)
        if [r.strip().lower() for r in items] == ["any"]:
            return [d.index for d in self.devices]
        chosen = [resolve(self.devices, r).index for r in items]
        return list(dict.fromkeys(chosen))


def _stored_devices(db: sqlite3.Connection) -> list[Device]:
    rows = db.execute("SELECT idx, record FROM devices ORDER BY idx").fetchall()
    try:
        devices = [Device.from_record(json.loads(record)) for _, record in rows]
    except (ValueError, KeyError, TypeError) as exc:
        raise sqlite3.DatabaseError(f"unreadable device record: {exc!r}") from exc
    # partitions refer to devices by index and the store to devices by place in its list
    if [d.index for d in devices] != list(range(len(rows))) or any(
        int(idx) != d.index for d, (idx, _) in zip(devices, rows, strict=True)
    ):
        raise sqlite3.DatabaseError("the devices table is not numbered 0, 1, 2, ...")
    return devices


def _changed_devices(known: list[Device], now: Reconciled) -> list[Device]:
    """The devices that are new or changed (a known one may be found on a new host); the
    others are left as they are, so a discovery that changes nothing writes nothing."""
    before = {d.index: d for d in known}
    return [d for d in now.devices if before.get(d.index) != d]


def _checked_id(partition_id: str) -> str:
    text = partition_id.strip()
    if not text.startswith("p-") or not 3 <= len(text) <= 64 or not text.isascii():
        raise InvalidArgument(
            f"Invalid partition id: {partition_id!r}. Ids look like p-1a2b3c4d5e6f"
        )
    return text


def _row_to_partition(
    row: tuple[object, ...], processes: tuple[ProcessRef, ...], now: float
) -> Partition:
    (pid, node, devices, tenths, memory, owner, created, expires, state, ended, reason) = row
    if state == PartitionState.ACTIVE and float(str(expires)) <= now:
        # past its expiry but not yet reaped by a writer: show it as what it is
        state, ended, reason = PartitionState.EXPIRED.value, expires, "expired"
    return Partition(
        id=str(pid),
        node=str(node),
        devices=tuple(json.loads(str(devices))),
        amount=GpuAmount(int(str(tenths))),
        memory_bytes=int(str(memory)),
        owner=str(owner),
        created_at=float(str(created)),
        expires_at=float(str(expires)),
        state=PartitionState(str(state)),
        ended_at=float(str(ended)) if ended is not None else None,
        end_reason=str(reason) if reason is not None else None,
        processes=processes,
    )


def _env_lock_timeout() -> float:
    raw = os.environ.get(LOCK_TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_LOCK_TIMEOUT_S
    try:
        return max(0.0, float(raw))
    except ValueError:
        raise InvalidArgument(
            f"Invalid {LOCK_TIMEOUT_ENV}: {raw!r}. Must be a number of seconds"
        ) from None
