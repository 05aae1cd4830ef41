"""`JobStore`: jobs in the gateway's state file (their own table, through `gateway.sqlite`) and
their logs in a directory beside it, kept until ``retention_s`` after they finished, so they
outlive a gateway restart. A directory job's zip waits there until its run ends; its result
document (``ID.result.json``) and a result kept pickled (``ID.result.pickle``) stay as long as
its log."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from cumulus_jupyter.errors import NotFound, Unavailable
from gateway.jobs.model import Job
from gateway.sqlite import Table

_SCHEMA = """
CREATE TABLE IF NOT EXISTS gateway_jobs (
    id          TEXT PRIMARY KEY,
    record      TEXT NOT NULL,
    state       TEXT NOT NULL,
    finished_at REAL
)
"""


class JobStore:
    """Jobs in the state file, logs beside it; every call is one short transaction."""

    def __init__(self, state_path: Path) -> None:
        self.logs = state_path.with_name(state_path.name + ".jobs")
        try:
            self.logs.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise Unavailable(f"State file {state_path} cannot hold jobs: {exc}") from exc
        self._table = Table(state_path, _SCHEMA, "jobs")

    def save(self, job: Job) -> None:
        row = (job.id, json.dumps(job.to_json(with_code=True)), job.state.value, job.finished_at)
        self._table.execute("INSERT OR REPLACE INTO gateway_jobs VALUES (?,?,?,?)", row)

    def get(self, job_id: str) -> Job:
        rows = self._table.execute("SELECT record FROM gateway_jobs WHERE id = ?", (job_id,))
        if not rows:
            raise NotFound(f"No job {job_id}")
        return Job.from_json(json.loads(rows[0][0]))

    def all(self) -> list[Job]:
        rows = self._table.execute("SELECT record FROM gateway_jobs")
        jobs = [Job.from_json(json.loads(r[0])) for r in rows]
        return sorted(jobs, key=lambda j: j.created_at)

    def log_path(self, job_id: str) -> Path:
        return self.logs / f"{job_id}.log"

    def _path(self, job_id: str, suffix: str) -> Path:
        return self.logs / f"{job_id}{suffix}"

    def _write(self, path: Path, data: bytes) -> None:
        """Written whole or not at all: a reader never sees half a file."""
        partial = path.with_name(path.name + ".partial")
        partial.write_bytes(data)
        partial.replace(path)

    def save_archive(self, job_id: str, data: bytes) -> None:
        self._write(self._path(job_id, ".zip"), data)

    def archive(self, job_id: str) -> bytes:
        return self._path(job_id, ".zip").read_bytes()

    def drop_archive(self, job_id: str) -> None:
        self._path(job_id, ".zip").unlink(missing_ok=True)

    def save_result(self, job_id: str, document: dict[str, Any], pickled: bytes | None) -> None:
        if pickled is not None:
            self._write(self._path(job_id, ".result.pickle"), pickled)
        self._write(self._path(job_id, ".result.json"), json.dumps(document).encode())

    def result(self, job_id: str) -> dict[str, Any] | None:
        """A directory job's result document, or None (none yet, or a script job)."""
        try:
            document: dict[str, Any] = json.loads(self._path(job_id, ".result.json").read_bytes())
        except FileNotFoundError:
            return None
        return document

    def result_pickle(self, job_id: str) -> bytes | None:
        try:
            return self._path(job_id, ".result.pickle").read_bytes()
        except FileNotFoundError:
            return None

    def append(self, job_id: str, text: str) -> None:
        with self.log_path(job_id).open("a", encoding="utf-8") as log:
            log.write(text)

    def read(self, job_id: str, offset: int = 0) -> tuple[str, int]:
        """The log from byte ``offset`` on, and the offset after it."""
        path = self.log_path(job_id)
        try:
            with path.open("rb") as log:
                log.seek(max(0, offset))
                data = log.read()
        except FileNotFoundError:
            return "", offset
        return data.decode("utf-8", errors="replace"), offset + len(data)

    def prune(self, retention_s: float, now: float | None = None) -> list[str]:
        """Forget jobs that finished more than ``retention_s`` ago; their ids."""
        horizon = (now or time.time()) - retention_s
        gone = [
            r[0]
            for r in self._table.execute(
                "SELECT id FROM gateway_jobs WHERE finished_at IS NOT NULL AND finished_at < ?",
                (horizon,),
            )
        ]
        self._table.executemany("DELETE FROM gateway_jobs WHERE id = ?", [(g,) for g in gone])
        for job_id in gone:
            for suffix in (".log", ".zip", ".result.json", ".result.pickle"):
                self._path(job_id, suffix).unlink(missing_ok=True)
        return gone

    def close(self) -> None:
        self._table.close()
