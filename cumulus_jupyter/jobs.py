"""Batch jobs from a terminal, the client side of ``/api/cumulus/jobs`` (see `gateway.jobs`).

``cumulus submit script.py --gpu 0.5 --duration 1h [--follow]`` sends the script's text; the
gateway runs it in a partition in a kernel of its own and keeps its state and output, so the
terminal may go away. `follow` shows the queue position while the job waits, then streams its
output until it ends.

``cumulus submit DIR`` (or a zip of one) is the seed's job: ``main.py`` defining ``main()``,
optionally ``requirements.txt``, packed as a zip (`cumulus_jupyter.protocol.jobarchive`: capped,
no unsafe names, checked here before anything is sent and again by the gateway). Its result
document is ``cumulus result ID``; from Python, `result` gives ``main()``'s value itself (a
result that was not JSON-serialisable comes back unpickled), and `submit_directory` / `wait`
drive a job without the CLI.
"""

from __future__ import annotations

import asyncio
import base64
import difflib
import os
import re
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import IO, Any, Never

from cumulus_jupyter import loop
from cumulus_jupyter.connection import GatewayClient, GatewaySettings
from cumulus_jupyter.errors import InvalidArgument, RemoteError
from cumulus_jupyter.protocol import jobarchive
from cumulus_jupyter.protocol.amounts import parse_amount
from cumulus_jupyter.remote_kernel import estimated_start, own_entry

__all__ = ["result", "result_document", "submit_directory", "wait"]

FINAL = ("completed", "failed", "cancelled")
POLL_S = 0.5
SUBMIT_OPTIONS = ("gpu", "duration", "requirements", "gateway", "token")
#: a positional argument of this shape names a file (that should exist), not code
_FILE_NAME = re.compile(r"[^\s;()=\"']+\.(py|zip)")


def kind_of(target: str) -> str:
    """What ``cumulus submit TARGET`` means: ``directory`` (an existing one), ``zip`` or
    ``script`` (an existing file, or a name like ``x.py`` that then must exist), else ``code``."""
    path = Path(target)
    if path.is_dir() or (target.endswith("/") and "\n" not in target):
        return "directory"
    if path.suffix == ".zip" and (path.is_file() or _FILE_NAME.fullmatch(target)):
        return "zip"
    if path.is_file() or _FILE_NAME.fullmatch(target):
        return "script"
    return "code"


def directory_body(target: str, gpu: str, duration: str, requirements: list[str]) -> dict[str, Any]:
    """The submission of a job directory (or a zip of one), checked here first: no main.py,
    no main(), over the cap or unsafe names are `InvalidArgument` with nothing sent."""
    path = Path(target)
    if path.is_dir():
        data = jobarchive.pack(path)
        name = path.resolve().name
    else:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InvalidArgument(f"Cannot read {target}: {exc.strerror}") from exc
        jobarchive.inspect(data)
        name = path.stem
    return {"archive": base64.b64encode(data).decode(), "name": name, "gpu": gpu,
            "duration": duration, "requirements": requirements}  # fmt: skip


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


async def document(client: GatewayClient, job_id: str) -> dict[str, Any]:
    """A directory job's result document (`NotFound` for a script job, `Conflict` before
    it ended)."""
    return dict(await client.request("GET", f"/api/cumulus/jobs/{job_id}/result"))


async def value(client: GatewayClient, job_id: str) -> Any:
    """``main()``'s value: from the document, or unpickled when it was not JSON; an error
    document is raised as `RemoteError` with the job's traceback."""
    doc = await document(client, job_id)
    if doc["status"] != "success":
        raise RemoteError(
            str(doc.get("error_type", "Error")), str(doc.get("error", "")),
            str(doc.get("traceback") or "").splitlines(),
        )  # fmt: skip
    if doc.get("result_serializable", True):
        return doc["result"]
    response = await client.respond("GET", f"/api/cumulus/jobs/{job_id}/result/pickle")
    import cloudpickle

    return cloudpickle.loads(response.content)


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


# -- colours: on a terminal only ----------------------------------------------------------------

_STATE_COLOURS = {"pending": "33", "running": "36", "completed": "32", "failed": "31",
                  "cancelled": "35"}  # fmt: skip


def use_colour(stream: IO[str]) -> bool:
    """Colour for a terminal; never when piped, with ``NO_COLOR`` set, or on a dumb terminal."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def paint(state: str, text: str, colour: bool) -> str:
    """``text`` (a state, maybe padded) in its state's colour when ``colour``."""
    code = _STATE_COLOURS.get(state)
    return f"\x1b[{code}m{text}\x1b[0m" if colour and code else text


def describe(job: dict[str, Any], colour: bool = False) -> str:
    """One line for the end of a job."""
    where = f" on {job['device']}" if job.get("device") else ""
    took = f" in {job['runtime_s']:.1f} s" if job.get("runtime_s") is not None else ""
    why = f": {job['error']}" if job.get("error") else ""
    return f"{job['id']} {paint(job['state'], job['state'], colour)}{took}{where}{why}"


def table(jobs: list[dict[str, Any]], colour: bool = False) -> str:
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
    lines = []
    for number, row in enumerate(rows):
        cells = [str(value).ljust(width) for value, width in zip(row, widths, strict=True)]
        if number:  # padded first, so the colour codes do not shift the columns
            cells[2] = paint(str(row[2]), cells[2], colour)
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


# -- from Python: the same, synchronously -------------------------------------------------------


def _call(gateway: str | None, token: str | None, work: Callable[[GatewayClient], Any]) -> Any:
    async def run() -> Any:
        client = GatewayClient(GatewaySettings.resolve(gateway, token))
        try:
            return await work(client)
        finally:
            await client.aclose()

    coro: Coroutine[Any, Any, Any] = run()
    return loop.call(coro)


def submit_directory(
    directory: str | os.PathLike[str],
    *,
    gpu: str | float = 0.5,
    duration: str | int = "1h",
    requirements: Sequence[str] = (),
    gateway: str | None = None,
    token: str | None = None,
    **unknown: Never,
) -> str:
    """Submit a job directory (``main.py`` with ``main()``, optional ``requirements.txt``) or
    a zip of one; its job id. Checked before anything is sent (`InvalidArgument`, an unknown
    keyword included)."""
    if unknown:
        name = sorted(unknown)[0]
        close = difflib.get_close_matches(name, SUBMIT_OPTIONS, n=1)
        hint = f" (did you mean {close[0]}=?)" if close else ""
        raise InvalidArgument(
            f"Unknown option {name}= for jobs.submit_directory{hint}. "
            f"Its options: {', '.join(SUBMIT_OPTIONS)}"
        )
    parse_amount(gpu)
    body = directory_body(str(directory), str(gpu), str(duration), list(requirements))
    job: dict[str, Any] = _call(gateway, token, lambda client: submit(client, body))
    return str(job["id"])


def wait(
    job_id: str, *, gateway: str | None = None, token: str | None = None,
    on_output: Callable[[str], None] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Wait for the job to end, passing its output to ``on_output`` (default: dropped); the
    final job, with its result document under ``result``."""
    shown = on_output or (lambda text: None)

    async def work(client: GatewayClient) -> dict[str, Any]:
        await follow(client, job_id, shown, lambda line: None)
        return await get(client, job_id)

    return dict(_call(gateway, token, work))


def result_document(job_id: str, *, gateway: str | None = None, token: str | None = None) -> Any:
    """The job's result document, as ``cumulus result ID`` prints it."""
    return _call(gateway, token, lambda client: document(client, job_id))


def result(job_id: str, *, gateway: str | None = None, token: str | None = None) -> Any:
    """What the directory job's ``main()`` returned (unpickled when it was not JSON); its
    failure as `RemoteError`; `Conflict` while it has not ended. Unpickling runs code the
    job's own code chose: take results of jobs you trust (your own; the operator's token
    sees every user's)."""
    return _call(gateway, token, lambda client: value(client, job_id))
