"""``/api/cumulus/jobs``: submit, list, follow and cancel batch jobs (`gateway.jobs`)."""

from __future__ import annotations

import json
import re
from typing import Any

from tornado import web

from cumulus_jupyter.errors import InvalidArgument, PermissionDenied, TooLarge
from gateway.handlers.base import CumulusHandler, check_amount_text, check_username
from gateway.jobs.model import MAX_CODE_BYTES, Job, JobState, new_job
from gateway.jobs.runner import JobRunner

MAX_BODY_BYTES = MAX_CODE_BYTES + 65536
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

    def describe(self, job: Job) -> dict[str, Any]:
        data = job.to_json()
        if job.state is JobState.PENDING:
            data["queue"] = self.services.broker.queue()
        return data


class JobsHandler(_JobHandler):
    @web.authenticated
    async def get(self) -> None:
        user = self.scoped_name()
        jobs = [j for j in self.runner.store.all() if user is None or j.owner == user]
        self.finish(json.dumps([self.describe(j) for j in jobs]))

    @web.authenticated
    async def post(self) -> None:
        if len(self.request.body) > MAX_BODY_BYTES:
            raise TooLarge(f"A job's code must be under {MAX_CODE_BYTES // 2**20} MiB")
        body = self.json_object()
        check_amount_text(body.get("gpu"))
        user = self.scoped_name()
        owner = user or check_username(str(body.get("owner") or "anonymous"), "owner")
        job = self.runner.submit(new_job(body, owner), exempt=user is None)
        self.set_status(201)
        self.finish(json.dumps(self.describe(job)))


class JobHandler(_JobHandler):
    @web.authenticated
    async def get(self, job_id: str) -> None:
        self.finish(json.dumps(self.describe(self.visible_job(job_id))))

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
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.set_header("X-Cumulus-Log-Offset", str(end))
        self.set_header("X-Cumulus-Job-State", job.state.value)
        self.finish(text)


_JOB_ID = r"(?P<job_id>j-[0-9a-f]{12})"
default_handlers = [  # loaded by jupyter_server as an extra service
    (r"/api/cumulus/jobs", JobsHandler),
    (rf"/api/cumulus/jobs/{_JOB_ID}", JobHandler),
    (rf"/api/cumulus/jobs/{_JOB_ID}/logs", JobLogHandler),
]
