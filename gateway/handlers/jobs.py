"""``/api/cumulus/jobs``: submit, list, follow and cancel batch jobs (`gateway.jobs`), and read
a directory job's result document (``…/result``) and a result kept pickled (``…/result/pickle``)."""

from __future__ import annotations

import json
import re
from typing import Any

from tornado import web

from chronos import GpuAmount
from cumulus_jupyter.errors import Conflict, InvalidArgument, NotFound, PermissionDenied, TooLarge
from cumulus_jupyter.protocol.jobarchive import MAX_ARCHIVE_BYTES
from gateway.handlers.base import CumulusHandler, check_amount_text, check_username
from gateway.jobs.model import MAX_CODE_BYTES, Job, JobState, new_job
from gateway.jobs.runner import JobRunner
from gateway.quotas import Holdings, check_request

#: a script's code, or a directory job's zip in base64 (4 characters for each 3 bytes)
MAX_BODY_BYTES = max(MAX_CODE_BYTES, -(-MAX_ARCHIVE_BYTES // 3) * 4) + 65536
MAX_LOG_OFFSET = 2**62
_DIGITS = re.compile(r"[0-9]{1,19}")


class _JobHandler(CumulusHandler):
    @property
    def runner(self) -> JobRunner:
        return self.services.jobs

    def visible_job(self, job_id: str) -> Job:
        """The job, when this user may see it: `NotFound`, `PermissionDenied` otherwise."""
        job = self.runner.store.get(job_id)
        user = self.scoped_name()
        if user is not None and job.owner != user:
            raise PermissionDenied(f"Job {job_id} belongs to another user")
        return job

    def describe(self, job: Job, with_result: bool = False) -> dict[str, Any]:
        data = job.to_json()
        if job.state is JobState.PENDING:
            data["queue"] = self.services.broker.queue()
        if with_result:
            data["result"] = self.runner.store.result(job.id)
        return data

    def result(self, job: Job) -> dict[str, Any]:
        """The directory job's result document; `NotFound` for a script job, `Conflict` while
        the job has not ended."""
        if job.archive_bytes is None:
            raise NotFound(
                f"Job {job.id} is a script job: it has no result document (its output is "
                f"its log: cumulus logs {job.id})"
            )
        document = self.runner.store.result(job.id)
        if document is None:
            raise Conflict(f"Job {job.id} has no result yet: it is {job.state.value}")
        return document


class JobsHandler(_JobHandler):
    @web.authenticated
    async def get(self) -> None:
        user = self.scoped_name()
        jobs = [j for j in self.runner.store.all() if user is None or j.owner == user]
        self.finish(json.dumps([self.describe(j) for j in jobs]))

    @web.authenticated
    async def post(self) -> None:
        if len(self.request.body) > MAX_BODY_BYTES:
            raise TooLarge(
                f"A job's code must be under {MAX_CODE_BYTES // 2**20} MiB and its archive "
                f"under {MAX_ARCHIVE_BYTES // 2**20} MiB"
            )
        body = self.json_object()
        check_amount_text(body.get("gpu"))
        user = self.scoped_name()
        owner = user or check_username(str(body.get("owner") or "anonymous"), "owner")
        job, archive = new_job(body, owner)
        if user is not None:  # over a quota: refused now (and checked again when it starts)
            self._check_quotas(job)
        job = self.runner.submit(job, archive, exempt=user is None)
        self.set_status(201)
        self.finish(json.dumps(self.describe(job)))

    def _check_quotas(self, job: Job) -> None:
        """`ResourceExhausted` (429) for a job its owner's quotas would refuse at its start: the
        GPU and partitions they hold and have queued, and the longest duration allowed."""
        services = self.services
        broker = services.broker
        holdings = Holdings.of(
            job.owner, broker.partitions(), services.registry.partitions.values(), broker.queue()
        )
        quotas = services.settings.quotas
        check_request(
            quotas, holdings, GpuAmount.parse(job.gpu), job.duration_s, quotas.duration_limit()
        )


class JobHandler(_JobHandler):
    @web.authenticated
    async def get(self, job_id: str) -> None:
        self.finish(json.dumps(self.describe(self.visible_job(job_id), with_result=True)))

    @web.authenticated
    async def delete(self, job_id: str) -> None:
        self.visible_job(job_id)
        self.finish(json.dumps(self.describe(await self.runner.cancel(job_id))))


class JobLogHandler(_JobHandler):
    @web.authenticated
    async def get(self, job_id: str) -> None:
        job = self.visible_job(job_id)
        raw = self.get_argument("offset", "0")  # ASCII digits: int() takes "1_0" and other scripts
        offset = int(raw) if _DIGITS.fullmatch(raw) else -1
        if not 0 <= offset <= MAX_LOG_OFFSET:  # seek(2) takes at most a signed 64-bit offset
            raise InvalidArgument(f"offset must be a whole number of bytes, 0 to {MAX_LOG_OFFSET}")
        text, end = self.runner.store.read(job_id, offset)
        self.set_header("X-Cumulus-Log-Offset", str(end))
        self.set_header("X-Cumulus-Job-State", job.state.value)
        self.finish(text, set_content_type="text/plain; charset=utf-8")


class JobResultHandler(_JobHandler):
    @web.authenticated
    async def get(self, job_id: str) -> None:
        self.finish(json.dumps(self.result(self.visible_job(job_id))))


class JobResultPickleHandler(_JobHandler):
    @web.authenticated
    async def get(self, job_id: str) -> None:
        job = self.visible_job(job_id)
        document = self.result(job)
        pickled = self.runner.store.result_pickle(job_id)
        if pickled is None:
            where = "is in its result document" if document.get("status") == "success" else ""
            raise NotFound(
                f"Job {job_id} kept no pickled result"
                + (f": its result {where} (JSON)" if where else f" ({document.get('status')})")
            )
        self.finish(pickled, set_content_type="application/octet-stream")


_JOB_ID = r"(?P<job_id>j-[0-9a-f]{12})"
default_handlers = [  # loaded by jupyter_server as an extra service
    (r"/api/cumulus/jobs", JobsHandler),
    (rf"/api/cumulus/jobs/{_JOB_ID}", JobHandler),
    (rf"/api/cumulus/jobs/{_JOB_ID}/logs", JobLogHandler),
    (rf"/api/cumulus/jobs/{_JOB_ID}/result", JobResultHandler),
    (rf"/api/cumulus/jobs/{_JOB_ID}/result/pickle", JobResultPickleHandler),
]
