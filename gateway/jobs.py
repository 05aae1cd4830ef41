"""Batch jobs: a script run to completion in a partition, with tracked state and kept output.

A job is not a second way to run code: it is a kernel of the gateway's own (the same kernelspec,
provisioner, runtime, partition queue and expiry as any other) that the gateway itself drives,
executing the job's code once, writing everything the kernel prints to the job's log, and
shutting the kernel down at the end, which releases the partition.

States: ``pending`` (waiting for a partition) → ``running`` → ``completed`` | ``failed`` |
``cancelled``. Jobs and their logs are kept in the gateway's state (a table in the same SQLite
file, logs in a directory beside it) until ``retention_s`` after they finished, so they outlive
a gateway restart; a job that was pending or running when the gateway stopped is marked failed
("the gateway restarted") on the next start, and its kernel is shut down by the usual adoption
(nothing is re-run behind the user's back).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jupyter_core.utils import ensure_async

from chronos import GpuAmount, StateUnavailable, parse_duration
from cumulus_jupyter.errors import InvalidArgument, NotFound

if TYPE_CHECKING:
    from gateway.manager import CumulusKernelManager

MAX_CODE_BYTES = 4 * 2**20
_CHECKPOINT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS gateway_jobs (
    id          TEXT PRIMARY KEY,
    record      TEXT NOT NULL,
    state       TEXT NOT NULL,
    finished_at REAL
)
"""


class JobState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED)


@dataclass
class Job:
    id: str
    owner: str
    name: str  # the script's file name, or "-c"
    code: str = field(repr=False)
    gpu: str
    duration_s: int
    requirements: list[str]
    state: JobState = JobState.PENDING
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    kernel_id: str | None = None
    partition_id: str | None = None
    device: str | None = None
    error: str | None = None
    resume: str | None = None  # a checkpoint restored into the namespace before the code runs
    checkpoint: dict[str, Any] | None = None  # {"name", "names"}: saved at T-1 min

    def to_json(self, with_code: bool = False) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        data["runtime_s"] = (
            round((self.finished_at or time.time()) - self.started_at, 3)
            if self.started_at
            else None
        )
        if not with_code:
            del data["code"]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Job:
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        fields["state"] = JobState(fields["state"])
        return cls(**fields)


def new_job(body: dict[str, Any], owner: str) -> Job:
    """A pending job from a submission; `InvalidArgument` saying what is wrong otherwise."""
    code = body.get("code")
    if not isinstance(code, str) or not code.strip():
        raise InvalidArgument("A job needs code: a script's text or -c CODE")
    if len(code.encode()) > MAX_CODE_BYTES:
        raise InvalidArgument(f"A job's code must be under {MAX_CODE_BYTES // 2**20} MiB")
    name = str(body.get("name") or "-c")[:200]
    requirements = body.get("requirements") or []
    if not isinstance(requirements, list) or not all(isinstance(r, str) for r in requirements):
        raise InvalidArgument("requirements must be a list of pip requirement strings")
    try:
        gpu = str(GpuAmount.parse(str(body.get("gpu", "0.5"))))
        duration_s = parse_duration(body.get("duration", "1h"))
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from exc
    job_id = "j-" + secrets.token_hex(6)
    job = Job(job_id, owner, name, code, gpu, duration_s, list(requirements))
    resume = body.get("resume")
    if resume is not None and (not isinstance(resume, str) or not _CHECKPOINT.fullmatch(resume)):
        raise InvalidArgument(f"Invalid checkpoint name to resume from: {resume!r}")
    job.resume = resume
    checkpoint = body.get("checkpoint")
    if checkpoint is not None:
        names = checkpoint.get("names") if isinstance(checkpoint, dict) else None
        if not isinstance(names, list) or not all(
            isinstance(n, str) and n.isidentifier() for n in names
        ):
            raise InvalidArgument("checkpoint.names must be a list of variable names")
        label = str(checkpoint.get("name") or job_id)
        if not _CHECKPOINT.fullmatch(label):
            raise InvalidArgument(f"Invalid checkpoint name: {label!r}")
        job.checkpoint = {"name": label, "names": names}
    return job


class JobStore:
    """Jobs in the state file, logs beside it; every call is one short transaction."""

    def __init__(self, state_path: Path, timeout: float = 10.0) -> None:
        self.logs = state_path.with_name(state_path.name + ".jobs")
        self._lock = threading.Lock()
        try:
            self.logs.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                state_path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
            self._db.execute(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise StateUnavailable(f"State file {state_path} cannot hold jobs: {exc}") from exc

    def save(self, job: Job) -> None:
        row = (job.id, json.dumps(job.to_json(with_code=True)), job.state.value, job.finished_at)
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO gateway_jobs VALUES (?,?,?,?)", row)

    def get(self, job_id: str) -> Job:
        with self._lock:
            row = self._db.execute(
                "SELECT record FROM gateway_jobs WHERE id = ?", (job_id,)
            ).fetchone()
        if row is None:
            raise NotFound(f"No job {job_id}")
        return Job.from_json(json.loads(row[0]))

    def all(self) -> list[Job]:
        with self._lock:
            rows = self._db.execute("SELECT record FROM gateway_jobs").fetchall()
        jobs = [Job.from_json(json.loads(r[0])) for r in rows]
        return sorted(jobs, key=lambda j: j.created_at)

    def log_path(self, job_id: str) -> Path:
        return self.logs / f"{job_id}.log"

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
        with self._lock:
            gone = [
                r[0]
                for r in self._db.execute(
                    "SELECT id FROM gateway_jobs WHERE finished_at IS NOT NULL AND finished_at < ?",
                    (horizon,),
                ).fetchall()
            ]
            self._db.executemany("DELETE FROM gateway_jobs WHERE id = ?", [(g,) for g in gone])
        for job_id in gone:
            self.log_path(job_id).unlink(missing_ok=True)
        return gone

    def close(self) -> None:
        with self._lock:
            self._db.close()


class JobRunner:
    """Runs each submitted job in a kernel of the gateway's own, on the gateway's event loop."""

    def __init__(self, manager: CumulusKernelManager, store: JobStore) -> None:
        self.manager = manager
        self.store = store
        self.tasks: dict[str, asyncio.Task[None]] = {}

    async def recover(self) -> None:
        """After a restart: jobs the old gateway was running cannot be followed any more; they
        are marked failed and their kernels (adopted like any other) shut down."""
        for job in self.store.all():
            if not job.state.final:
                self._finish(job, JobState.FAILED, "the gateway restarted while the job ran")
                if job.kernel_id and job.kernel_id in self.manager:
                    with contextlib.suppress(Exception):
                        await self.manager.shutdown_kernel(job.kernel_id, now=True)
        self.store.prune(self.manager.job_retention)

    def submit(self, job: Job) -> Job:
        self.store.save(job)
        self.store.append(job.id, "")
        self.tasks[job.id] = asyncio.ensure_future(self._run(job))
        self.tasks[job.id].add_done_callback(lambda _: self.tasks.pop(job.id, None))
        return job

    async def cancel(self, job_id: str) -> Job:
        job = self.store.get(job_id)
        if job.state.final:
            return job
        task = self.tasks.get(job_id)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return self.store.get(job_id)

    async def _run(self, job: Job) -> None:
        km = self.manager
        env = {
            "KERNEL_GPU": job.gpu,
            "KERNEL_DURATION": str(job.duration_s),
            "KERNEL_USERNAME": job.owner,
            "KERNEL_LAUNCH_TIMEOUT": str(km.job_queue_timeout),
            "CUMULUS_JOB_ID": job.id,
        }
        kernel_id: str | None = None
        try:
            kernel_id = await km.start_kernel(kernel_name=km.default_kernel_name, env=env)
            partition = km.partitions[kernel_id]
            job.kernel_id, job.partition_id = kernel_id, partition.id
            job.device = ",".join(partition.device_ids)
            job.state, job.started_at = JobState.RUNNING, time.time()
            self.store.save(job)
            await self._execute(job, kernel_id)
        except asyncio.CancelledError:
            self._finish(job, JobState.CANCELLED, "cancelled")
            raise
        except Exception as exc:
            reason = km.end_reason(kernel_id) if kernel_id else None
            self._finish(job, JobState.FAILED, reason or str(exc) or type(exc).__name__)
        finally:
            if kernel_id is not None and kernel_id in km:
                with contextlib.suppress(Exception):  # politely: its checkpoint copies finish
                    await km.shutdown_kernel(kernel_id)

    async def _execute(self, job: Job, kernel_id: str) -> None:
        client: Any = self.manager.get_kernel(kernel_id).client()  # an AsyncKernelClient
        client.start_channels()
        try:
            await client.wait_for_ready(timeout=self.manager.launch_timeout)
            prelude = self._prelude(job)
            if prelude and not await self._run_code(client, job, prelude, kernel_id):
                raise RuntimeError(f"preparing the job failed: {job.error}")
            if job.requirements:
                install = f"print(_cumulus_remote.install({job.requirements!r}))"
                code = f"import cumulus_jupyter.remote as _cumulus_remote\n{install}"
                if not await self._run_code(client, job, code, kernel_id):
                    raise RuntimeError("installing the requirements failed (see the log)")
            ok = await self._run_code(client, job, job.code, kernel_id)
            self._finish(job, JobState.COMPLETED if ok else JobState.FAILED, job.error)
        finally:
            client.stop_channels()

    def _prelude(self, job: Job) -> str:
        """Code run before the job's own: restoring a checkpoint, arming one before expiry."""
        lines = []
        if job.resume:
            lines.append(f"print('Cumulus:', _cumulus_ck.restore({job.resume!r}, globals()))")
        if job.checkpoint and job.kernel_id in self.manager.partitions:
            expires = self.manager.partitions[job.kernel_id].expires_at
            name, names = job.checkpoint["name"], job.checkpoint["names"]
            lines.append(
                f"print('Cumulus:', _cumulus_ck.before_expiry({name!r}, {names!r}, globals(), "
                f"{expires!r}))"
            )
        if not lines:
            return ""
        return "\n".join(["import cumulus_jupyter.checkpoint as _cumulus_ck", *lines])

    async def _run_code(self, client: Any, job: Job, code: str, kernel_id: str) -> bool:
        """Execute ``code``; write its output to the job's log; whether it succeeded. A kernel
        that ends meanwhile (its partition expired, it died) fails the job with that reason."""
        km = self.manager
        run = asyncio.ensure_future(
            client.execute_interactive(
                code, store_history=False, allow_stdin=False,
                output_hook=lambda message: self._log_output(job, message),
            )
        )  # fmt: skip
        try:
            while not run.done():
                await asyncio.wait({run}, timeout=1.0)
                if run.done():
                    break
                if kernel_id not in km or not await ensure_async(
                    km.get_kernel(kernel_id).is_alive()
                ):
                    raise RuntimeError(km.end_reason(kernel_id) or "the kernel died")
            reply: dict[str, Any] = run.result()
        finally:
            run.cancel()
        content = reply["content"]
        if content.get("status") != "ok":
            job.error = f"{content.get('ename', 'Error')}: {content.get('evalue', '')}"
            return False
        return True

    def _log_output(self, job: Job, message: dict[str, Any]) -> None:
        kind, content = message["msg_type"], message["content"]
        if kind == "stream":
            self.store.append(job.id, content.get("text", ""))
        elif kind in ("execute_result", "display_data"):
            text = content.get("data", {}).get("text/plain")
            if text:
                self.store.append(job.id, text + "\n")
        elif kind == "error":
            import re

            traceback = "\n".join(content.get("traceback", []))
            self.store.append(job.id, re.sub(r"\x1b\[[0-9;]*m", "", traceback) + "\n")

    def _finish(self, job: Job, state: JobState, error: str | None) -> None:
        job.state, job.finished_at = state, time.time()
        job.error = None if state is JobState.COMPLETED else error
        self.store.save(job)


def _handlers() -> list[tuple[str, Any]]:
    """The REST endpoints (built lazily: this module's model is used without a server too)."""
    from tornado import web

    from gateway.handlers import GatewayError, _Errors, scoped_name

    class _JobHandler(_Errors):
        @property
        def runner(self) -> JobRunner:
            return self.cumulus.jobs

        def job_or_404(self, job_id: str) -> Job:
            try:
                job = self.runner.store.get(job_id)
            except NotFound as exc:
                raise GatewayError(404, str(exc)) from exc
            user = scoped_name(self)
            if user is not None and job.owner != user:
                raise GatewayError(403, f"Job {job_id} belongs to another user")
            return job

        def describe(self, job: Job) -> dict[str, Any]:
            data = job.to_json()
            if job.state is JobState.PENDING:
                data["queue"] = self.cumulus.broker.queue()
            return data

    class JobsHandler(_JobHandler):
        @web.authenticated
        async def get(self) -> None:
            user = scoped_name(self)
            jobs = [j for j in self.runner.store.all() if user is None or j.owner == user]
            self.finish(json.dumps([self.describe(j) for j in jobs]))

        @web.authenticated
        async def post(self) -> None:
            if len(self.request.body) > MAX_CODE_BYTES + 65536:
                raise GatewayError(413, f"A job's code must be under {MAX_CODE_BYTES // 2**20} MiB")
            body = self.get_json_body() or {}
            if not isinstance(body, dict):
                raise GatewayError(400, "request body must be a JSON object")
            user = scoped_name(self)
            owner = user or str(body.get("owner") or "anonymous")[:64]
            try:
                job = self.runner.submit(new_job(body, owner))
            except InvalidArgument as exc:
                raise GatewayError.from_exception(exc) from exc
            self.set_status(201)
            self.finish(json.dumps(self.describe(job)))

    class JobHandler(_JobHandler):
        @web.authenticated
        async def get(self, job_id: str) -> None:
            self.finish(json.dumps(self.describe(self.job_or_404(job_id))))

        @web.authenticated
        async def delete(self, job_id: str) -> None:
            self.job_or_404(job_id)
            self.finish(json.dumps(self.describe(await self.runner.cancel(job_id))))

    class JobLogHandler(_JobHandler):
        @web.authenticated
        async def get(self, job_id: str) -> None:
            job = self.job_or_404(job_id)
            try:
                offset = int(self.get_argument("offset", "0"))
            except ValueError as exc:
                raise GatewayError(400, "offset must be a whole number of bytes") from exc
            text, end = self.runner.store.read(job_id, offset)
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.set_header("X-Cumulus-Log-Offset", str(end))
            self.set_header("X-Cumulus-Job-State", job.state.value)
            self.finish(text)

    job_id = r"(?P<job_id>j-[0-9a-f]{12})"
    return [
        (r"/api/cumulus/jobs", JobsHandler),
        (rf"/api/cumulus/jobs/{job_id}", JobHandler),
        (rf"/api/cumulus/jobs/{job_id}/logs", JobLogHandler),
    ]


def __getattr__(name: str) -> Any:
    if name == "default_handlers":  # read by jupyter_server when it loads this service
        return _handlers()
    raise AttributeError(name)
