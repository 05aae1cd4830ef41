"""Batch jobs from a terminal, the client side of ``/api/cumulus/jobs`` (see `gateway.jobs`).

``cumulus submit script.py --gpu 0.5 --duration 1h [--follow]`` sends the script's text; the
gateway runs it in a partition in a kernel of its own and keeps its state and output, so the
terminal may go away. `follow` shows the queue position while the job waits, then streams its
output until it ends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cumulus_jupyter.connection import GatewayClient
from cumulus_jupyter.errors import InvalidArgument
from cumulus_jupyter.remote_kernel import estimated_start, own_entry

FINAL = ("completed", "failed", "cancelled")
POLL_S = 0.5


def script_body(
    script: str | None, code: str | None, gpu: str, duration: str, requirements: list[str]
) -> dict[str, Any]:
    """The submission for a script file or ``-c`` code; `InvalidArgument` when neither or both
    are given or the file cannot be read."""
    if (script is None) == (code is None):
        raise InvalidArgument("Give a script file or -c CODE (not both)")
    if script is not None:
        path = Path(script)
        try:
            code = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidArgument(f"Cannot read {script}: {exc}") from exc
        name = path.name
    else:
        name = "-c"
    return {"code": code, "name": name, "gpu": gpu, "duration": duration,
            "requirements": requirements}  # fmt: skip


async def submit(client: GatewayClient, body: dict[str, Any]) -> dict[str, Any]:
    return dict(await client.request("POST", "/api/cumulus/jobs", json=body))


async def get(client: GatewayClient, job_id: str) -> dict[str, Any]:
    return dict(await client.request("GET", f"/api/cumulus/jobs/{job_id}"))


async def listing(client: GatewayClient) -> list[dict[str, Any]]:
    return list(await client.request("GET", "/api/cumulus/jobs"))


async def cancel(client: GatewayClient, job_id: str) -> dict[str, Any]:
    return dict(await client.request("DELETE", f"/api/cumulus/jobs/{job_id}"))


async def log_chunk(client: GatewayClient, job_id: str, offset: int) -> tuple[str, int, str]:
    """The job's output from ``offset`` on, the next offset, and the job's state."""
    response = await client.respond("GET", f"/api/cumulus/jobs/{job_id}/logs?offset={offset}")
    return (
        response.text,
        int(response.headers.get("X-Cumulus-Log-Offset", offset)),
        response.headers.get("X-Cumulus-Job-State", ""),
    )


def waiting_line(job: dict[str, Any]) -> str:
    waited = time.time() - float(job["created_at"])
    queue = job.get("queue") or []
    if queue:
        head = own_entry(queue, job["id"])
        return (f"{job['id']} pending: queue position {head['position']} "
                f"({head['waiting_for']}){estimated_start(head)}, {waited:.0f} s")  # fmt: skip
    return f"{job['id']} pending: starting its kernel, {waited:.0f} s"


async def follow(
    client: GatewayClient,
    job_id: str,
    on_output: Callable[[str], None],
    on_progress: Callable[[str], None],
    logs_only: bool = False,
) -> dict[str, Any]:
    """Stream the job's output until it ends; the final job. While it is pending, report the
    queue position every few seconds (``on_progress``)."""
    offset, last_progress = 0, 0.0
    while True:
        job = await get(client, job_id)
        pending = job["state"] == "pending" and not logs_only
        if pending and time.monotonic() - last_progress >= 2:
            on_progress(waiting_line(job))
            last_progress = time.monotonic()
        text, offset, state = await log_chunk(client, job_id, offset)
        if text:
            on_output(text)
        if state in FINAL:
            text, offset, _ = await log_chunk(client, job_id, offset)  # what came at the end
            if text:
                on_output(text)
            return await get(client, job_id)
        await asyncio.sleep(POLL_S)


def describe(job: dict[str, Any]) -> str:
    """One line for the end of a job."""
    where = f" on {job['device']}" if job.get("device") else ""
    took = f" in {job['runtime_s']:.1f} s" if job.get("runtime_s") is not None else ""
    why = f": {job['error']}" if job.get("error") else ""
    return f"{job['id']} {job['state']}{took}{where}{why}"


def table(jobs: list[dict[str, Any]]) -> str:
    """``cumulus list``: id, user, state, gpu, device, started, runtime."""
    heads = ("ID", "USER", "STATE", "GPU", "DEVICE", "STARTED", "RUNTIME")
    rows = [heads]
    for job in jobs:
        started = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job["started_at"]))
            if job.get("started_at")
            else "-"
        )
        runtime = f"{job['runtime_s']:.1f}s" if job.get("runtime_s") is not None else "-"
        rows.append((job["id"], job["owner"], job["state"], job["gpu"], job.get("device") or "-",
                     started, runtime))  # fmt: skip
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(heads))]
    return "\n".join(
        "  ".join(
            str(value).ljust(width) for value, width in zip(row, widths, strict=True)
        ).rstrip()
        for row in rows
    )
