"""`JobRunner`: runs each submitted job in a kernel of the gateway's own, on its event loop.

It starts the kernel through the gateway's kernel manager (so the job waits in the partition
queue like any request, up to ``job_queue_timeout``), runs what `cumulus_jupyter.protocol.code`
builds before the job's own code (restoring a checkpoint, arming one before expiry, installing
the requirements), then the code, writing every output to the job's log; and shuts the kernel
down at the end, which releases the partition. A directory job's code is the agent's
(`cumulus_jupyter.agent.job`): it unpacks the zip and calls ``main()``; the result document it
publishes is kept (`JobStore.save_result`), and decides the job's state. A directory job that
ends before its ``main()`` could report (its requirements failed, its partition expired, it
was cancelled) gets an error document of the gateway's, so every ended one has a document.
A job that was pending or running when the gateway stopped is marked failed on the next start
("the gateway restarted"): nothing is re-run behind the user's back.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import datetime
import re
import time
import uuid
from typing import Any

from jupyter_core.utils import ensure_async
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager

from cumulus_jupyter.errors import KernelDied, PartitionExpired
from cumulus_jupyter.protocol import code as kernel_code
from cumulus_jupyter.protocol import env as names
from cumulus_jupyter.protocol import jobarchive
from cumulus_jupyter.protocol.jobarchive import RESULT_MIME
from gateway import metrics
from gateway.jobs.model import Job, JobState
from gateway.jobs.store import JobStore
from gateway.registry import KernelRegistry
from gateway.settings import Settings

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ALIVE_CHECK_S = 1.0


@dataclasses.dataclass(frozen=True)
class _Outcome:
    """How a job ended, recorded once its kernel is down."""

    state: JobState
    error: str | None
    error_type: str | None = None


class JobRunner:
    """Runs jobs in kernels started by ``kernels`` (the gateway's kernel manager)."""

    def __init__(
        self,
        kernels: AsyncMappingKernelManager,
        store: JobStore,
        registry: KernelRegistry,
        settings: Settings,
    ) -> None:
        self.kernels = kernels
        self.store = store
        self.registry = registry
        self.settings = settings
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._kernel_ids: set[str] = set()  # the kernels jobs run in now
        self._stopping: set[asyncio.Task[None]] = set()
        self._documents: dict[str, dict[str, Any]] = {}  # directory jobs' results, as they come

    def runs(self, kernel_id: str) -> bool:
        """Whether a job runs in this kernel (no client connects to a job's kernel)."""
        return kernel_id in self._kernel_ids

    async def recover(self) -> None:
        """After a restart: jobs the old gateway was running cannot be followed any more; they
        are marked failed and their kernels (adopted like any other) shut down."""
        for job in self.store.all():
            if not job.state.final:
                self._finish(
                    job, JobState.FAILED, "the gateway restarted while the job ran",
                    "GatewayRestarted",
                )  # fmt: skip
                self.store.drop_archive(job.id)
                if job.kernel_id and job.kernel_id in self.kernels:
                    with contextlib.suppress(Exception):
                        await self.kernels.shutdown_kernel(job.kernel_id, now=True)
        self.store.prune(self.settings.job_retention)

    def submit(self, job: Job, archive: bytes | None = None, exempt: bool = False) -> Job:
        """Run ``job`` (a directory job: from ``archive``, its zip, checked); ``exempt``:
        submitted with the operator token (no quotas apply)."""
        if archive is not None:
            self.store.save_archive(job.id, archive)
        self.store.save(job)
        self.store.append(job.id, "")
        self.tasks[job.id] = asyncio.ensure_future(self._run(job, exempt))
        self.tasks[job.id].add_done_callback(lambda _: self.tasks.pop(job.id, None))
        return job

    async def cancel(self, job_id: str) -> Job:
        """Cancel a job at any point: it leaves the partition queue, or its kernel (however far
        its start got) is shut down; returns once no kernel and no partition of it is left."""
        job = self.store.get(job_id)
        if job.state.final:
            return job
        task = self.tasks.get(job_id)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        job = self.store.get(job_id)
        if not job.state.final:  # cancelled before its task first ran
            self._finish(job, JobState.CANCELLED, "cancelled", "Cancelled")
        return job

    def _env(self, job: Job) -> dict[str, str]:
        return {
            names.KERNEL_GPU: job.gpu,
            names.KERNEL_DURATION: str(job.duration_s),
            names.KERNEL_USERNAME: job.owner,
            names.KERNEL_LAUNCH_TIMEOUT: str(self.settings.job_queue_timeout),
            names.JOB_ID: job.id,
            names.KERNEL_REQUEST_TAG: job.id,
        }

    async def _run(self, job: Job, exempt: bool = False) -> None:
        """Start the job's kernel, run the job, stop the kernel; only then is the job marked
        ended, so a job seen ended holds no kernel and no partition."""
        kernels = self.kernels
        kernel_id: str | None = None
        outcome = _Outcome(JobState.FAILED, "the job did not run", "Error")
        try:
            kernel_id = await kernels.start_kernel(
                kernel_name=kernels.default_kernel_name, env=self._env(job), quota_exempt=exempt
            )
            assert kernel_id is not None
            self._kernel_ids.add(kernel_id)
            partition = self.registry.partitions[kernel_id]
            job.kernel_id, job.partition_id = kernel_id, partition.id
            job.device = ",".join(partition.device_ids)
            job.state, job.started_at = JobState.RUNNING, time.time()
            self.store.save(job)
            outcome = await self._execute(job, kernel_id)
        except asyncio.CancelledError:
            outcome = _Outcome(JobState.CANCELLED, "cancelled", "Cancelled")
            raise
        except Exception as exc:
            reason = self.registry.end_reason(kernel_id) if kernel_id else None
            kind = "PartitionExpired" if reason else type(exc).__name__
            outcome = _Outcome(JobState.FAILED, reason or str(exc) or kind, kind)
        finally:
            self.store.drop_archive(job.id)
            try:
                if kernel_id is not None:
                    await self._stop(kernel_id)
            finally:
                self._finish(job, outcome.state, outcome.error, outcome.error_type)
                self._documents.pop(job.id, None)

    async def _stop(self, kernel_id: str) -> None:
        """Shut the job's kernel down politely (its checkpoint copies finish), and through to
        the end even when the job is cancelled again meanwhile."""

        async def stop() -> None:
            try:
                if kernel_id in self.kernels:
                    await self.kernels.shutdown_kernel(kernel_id)
            except Exception:
                self.kernels.log.exception("could not stop job kernel %s", kernel_id)
            finally:
                self._kernel_ids.discard(kernel_id)

        stopping = asyncio.ensure_future(stop())
        self._stopping.add(stopping)
        stopping.add_done_callback(self._stopping.discard)
        await asyncio.shield(stopping)

    async def _execute(self, job: Job, kernel_id: str) -> _Outcome:
        client: Any = self.kernels.get_kernel(kernel_id).client()  # an AsyncKernelClient
        client.start_channels()
        try:
            await client.wait_for_ready(timeout=self.settings.launch_timeout)
            prelude = self._prelude(job)
            if prelude and not await self._run_code(client, job, prelude, kernel_id):
                return _Outcome(JobState.FAILED, f"preparing the job failed: {job.error}")
            install = kernel_code.install(job.requirements) if job.requirements else ""
            if install and not await self._run_code(client, job, install, kernel_id):
                return _Outcome(
                    JobState.FAILED, "installing the requirements failed (see the log)",
                    "RequirementsFailed",
                )  # fmt: skip
            if job.archive_bytes is not None:
                return await self._run_directory(client, job, kernel_id)
            ok = await self._run_code(client, job, job.code, kernel_id)
            return _Outcome(JobState.COMPLETED if ok else JobState.FAILED, job.error)
        finally:
            client.stop_channels()

    def _system_info(self, job: Job) -> dict[str, Any]:
        return {"job_id": job.id, "chronos_partition": job.partition_id, "gpu_device": job.device}

    async def _run_directory(self, client: Any, job: Job, kernel_id: str) -> _Outcome:
        """The agent takes the zip through a comm (one binary buffer), unpacks it and calls
        ``main()``; its document says how it went."""
        if not await self._run_code(client, job, jobarchive.REGISTER, kernel_id):
            return _Outcome(JobState.FAILED, job.error, "AgentError")
        await self._send_archive(client, self.store.archive(job.id))
        code = jobarchive.run_code(self._system_info(job))
        ok = await self._run_code(client, job, code, kernel_id)
        document = self._documents.get(job.id)
        if document is None:
            return _Outcome(JobState.FAILED, job.error or "main() reported no result",
                            "NoResult" if ok else "AgentError")  # fmt: skip
        if document.get("status") == "success":
            return _Outcome(JobState.COMPLETED, None)
        return _Outcome(JobState.FAILED, f"{document.get('error_type')}: {document.get('error')}")

    def _prelude(self, job: Job) -> str:
        """Code run before the job's own: restoring a checkpoint, arming one before expiry."""
        partition = self.registry.partitions.get(job.kernel_id or "")
        armed = None
        if job.checkpoint and partition is not None:
            armed = (job.checkpoint["name"], job.checkpoint["names"], partition.expires_at)
        return kernel_code.prelude(job.resume, armed)

    async def _run_code(self, client: Any, job: Job, code: str, kernel_id: str) -> bool:
        """Execute ``code``; write its output to the job's log; whether it succeeded. A kernel
        that ends meanwhile (its partition expired, it died) fails the job with that reason."""
        run = asyncio.ensure_future(
            client.execute_interactive(
                code, store_history=False, allow_stdin=False,
                output_hook=lambda message: self._log_output(job, message),
            )
        )  # fmt: skip
        try:
            while not run.done():
                await asyncio.wait({run}, timeout=_ALIVE_CHECK_S)
                if not run.done() and not await self._alive(kernel_id):
                    reason = self.registry.end_reason(kernel_id)
                    raise PartitionExpired(reason) if reason else KernelDied("the kernel died")
            reply: dict[str, Any] = run.result()
        finally:
            run.cancel()
        content = reply["content"]
        if content.get("status") != "ok":
            job.error = f"{content.get('ename', 'Error')}: {content.get('evalue', '')}"
            return False
        return True

    async def _alive(self, kernel_id: str) -> bool:
        if kernel_id not in self.kernels:
            return False
        return bool(await ensure_async(self.kernels.get_kernel(kernel_id).is_alive()))

    async def _send_archive(self, client: Any, data: bytes) -> None:
        """A ``comm_open`` to the agent's `JOB_TARGET` with the zip as its buffer (buffers are
        not signed: the header, parent, metadata and content are); the kernel takes it before
        the execute sent after it."""
        content = {"comm_id": uuid.uuid4().hex, "target_name": jobarchive.JOB_TARGET, "data": {}}
        message = client.session.msg("comm_open", content)
        await client.shell_channel.socket.send_multipart(
            [*client.session.serialize(message), data], copy=False
        )

    def _keep_result(self, job: Job, payload: Any) -> None:
        """The agent's result display: the document, and the result pickled when it is not
        JSON; kept, never logged."""
        try:
            document = dict(payload["document"])
            encoded = payload.get("pickle")
            pickled = base64.b64decode(encoded, validate=True) if encoded else None
        except (TypeError, KeyError, ValueError, binascii.Error):
            self.store.append(job.id, "Cumulus: the job's result could not be read\n")
            return
        self.store.save_result(job.id, document, pickled)
        self._documents[job.id] = document

    def _log_output(self, job: Job, message: dict[str, Any]) -> None:
        kind, content = message["msg_type"], message["content"]
        data = content.get("data", {}) if kind == "display_data" else {}
        if job.archive_bytes is not None and RESULT_MIME in data:
            self._keep_result(job, data[RESULT_MIME])
        elif kind == "stream":
            self.store.append(job.id, content.get("text", ""))
        elif kind in ("execute_result", "display_data"):
            text = content.get("data", {}).get("text/plain")
            if text:
                self.store.append(job.id, text + "\n")
        elif kind == "error":
            traceback = "\n".join(content.get("traceback", []))
            self.store.append(job.id, _ANSI.sub("", traceback) + "\n")

    def _finish(
        self, job: Job, state: JobState, error: str | None, error_type: str | None = None
    ) -> None:
        job.state, job.finished_at = state, time.time()
        job.error = None if state is JobState.COMPLETED else error
        self.store.save(job)
        metrics.JOB_DURATION.labels(status=state.value).observe(
            max(0.0, job.finished_at - (job.started_at or job.created_at))
        )
        if job.archive_bytes is not None and job.id not in self._documents:
            self._gateway_document(job, error_type or "Error")

    def _gateway_document(self, job: Job, error_type: str) -> None:
        """The result document of a directory job whose ``main()`` never reported."""
        document = {
            "status": "error", "error": job.error or error_type, "error_type": error_type,
            "traceback": "", "execution_time": 0.0,
            "timestamp": datetime.datetime.now(datetime.UTC).isoformat(),
            "system_info": {"python_version": None, **self._system_info(job)},
        }  # fmt: skip
        self.store.save_result(job.id, document, None)
        self._documents[job.id] = document
