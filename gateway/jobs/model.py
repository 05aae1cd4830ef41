"""A batch job as the gateway keeps it: `Job`, its `JobState`, and `new_job` from a submission.

States: ``pending`` (waiting for a partition) → ``running`` → ``completed`` | ``failed`` |
``cancelled``.

A job is a script (``code``) or a directory (``archive``: base64 of a zip with ``main.py``
defining ``main()``, checked by `cumulus_jupyter.protocol.jobarchive`; its ``requirements.txt``
joins the job's requirements). A submission with a field not in `FIELDS` is refused.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from chronos import GpuAmount, parse_duration
from cumulus_jupyter.errors import InvalidArgument
from cumulus_jupyter.protocol import jobarchive
from gateway.errors import chronos_boundary

MAX_CODE_BYTES = 4 * 2**20
#: the fields of a submission (``POST /api/cumulus/jobs``)
FIELDS = ("code", "archive", "name", "gpu", "duration", "requirements", "resume", "checkpoint",
          "owner")  # fmt: skip
CHECKPOINT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


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
    name: str  # the script's file name, the directory's name, or "-c"
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
    archive_bytes: int | None = None  # a directory job: its zip's size (the zip is kept apart)

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


def _known_fields(body: dict[str, Any]) -> None:
    for key in body:
        if key not in FIELDS:
            close = difflib.get_close_matches(str(key), FIELDS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise InvalidArgument(
                f"Unknown field {str(key)[:100]!r} in a job submission{hint}. "
                f"Its fields: {', '.join(FIELDS)}"
            )


def _archive(body: dict[str, Any]) -> tuple[bytes, jobarchive.JobArchive] | None:
    """The submitted directory's zip, checked, and what it holds; None for a script job."""
    encoded = body.get("archive")
    if encoded is None:
        return None
    if body.get("code") is not None:
        raise InvalidArgument("A job is code or an archive, not both")
    if not isinstance(encoded, str):
        raise InvalidArgument("archive must be a base64 string of a zip")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument("archive must be a base64 string of a zip") from None
    return data, jobarchive.inspect(data)


def new_job(body: dict[str, Any], owner: str) -> tuple[Job, bytes | None]:
    """A pending job from a submission, and a directory job's zip; `InvalidArgument` saying
    what is wrong otherwise."""
    _known_fields(body)
    archive = _archive(body)
    code = "" if archive else body.get("code")
    if not archive and (not isinstance(code, str) or not code.strip()):
        raise InvalidArgument("A job needs code (a script's text or -c CODE) or a directory")
    assert isinstance(code, str)
    if len(code.encode()) > MAX_CODE_BYTES:
        raise InvalidArgument(f"A job's code must be under {MAX_CODE_BYTES // 2**20} MiB")
    name = str(body.get("name") or ("job" if archive else "-c"))[:200]
    requirements = body.get("requirements") or []
    if not isinstance(requirements, list) or not all(isinstance(r, str) for r in requirements):
        raise InvalidArgument("requirements must be a list of pip requirement strings")
    with chronos_boundary():
        gpu = str(GpuAmount.parse(str(body.get("gpu", "0.5"))))
        duration_s = parse_duration(body.get("duration", "1h"))
    job_id = "j-" + secrets.token_hex(6)
    if archive:
        requirements = [*requirements, *archive[1].requirements]
    job = Job(job_id, owner, name, code, gpu, duration_s, list(requirements))
    job.resume = _resume(body.get("resume"))
    job.checkpoint = _checkpoint(body.get("checkpoint"), job_id)
    if archive:
        job.archive_bytes = len(archive[0])
    return job, archive[0] if archive else None


def _resume(resume: object) -> str | None:
    if resume is None:
        return None
    if not isinstance(resume, str) or not CHECKPOINT_NAME.fullmatch(resume):
        raise InvalidArgument(f"Invalid checkpoint name to resume from: {resume!r}")
    return resume


def _identifiers(names: object) -> bool:
    return isinstance(names, list) and all(isinstance(n, str) and n.isidentifier() for n in names)


def _checkpoint(checkpoint: object, job_id: str) -> dict[str, Any] | None:
    if checkpoint is None:
        return None
    names = checkpoint.get("names") if isinstance(checkpoint, dict) else None
    if not isinstance(checkpoint, dict) or not _identifiers(names):
        raise InvalidArgument("checkpoint.names must be a list of variable names")
    label = str(checkpoint.get("name") or job_id)
    if not CHECKPOINT_NAME.fullmatch(label):
        raise InvalidArgument(f"Invalid checkpoint name: {label!r}")
    return {"name": label, "names": names}
