"""The comm targets the client talks to inside the remote kernel.

- ``cumulus.vars``: ``push`` puts unpickled values into the user namespace, ``pull`` pickles
  named ones back (protocol 5, buffers out of band). Large buffers do not ride in the comm:
  they are staged on the kernel's data port (`cumulus_jupyter.agent.dataserver`) and the comm
  names the staged transfer instead. One comm per operation.
- ``cumulus.sync``: the first message carries a directory archive as a binary buffer; it is
  unpacked (`cumulus_jupyter.archive.unpack`, traversal-safe and size-capped) into this
  kernel's work directory, which becomes the working directory. The comm answers with what it
  wrote or why it refused.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from cumulus_jupyter import archive, transfer
from cumulus_jupyter.agent import dataserver
from cumulus_jupyter.errors import CumulusError, InvalidArgument
from cumulus_jupyter.protocol import env

Namespace = dict[str, Any]


def user_namespace() -> Namespace:
    from IPython import get_ipython

    namespace: Namespace = get_ipython().user_ns
    return namespace


def push(data: dict[str, Any], buffers: list[Any], namespace: Namespace) -> dict[str, Any]:
    staged = data.get("staged")
    values = transfer.unpack_namespace(
        data["entries"], dataserver.current().claim(staged) if staged else buffers
    )
    namespace.update(values)
    return {"ok": True, "names": sorted(values)}


def _pull(data: dict[str, Any], namespace: Namespace) -> tuple[dict[str, Any], list[Any]]:
    asked = list(data.get("names", []))
    names = [n for n in asked if n in namespace]
    limit = data.get("max_bytes")
    refs = {n: transfer.describe(namespace[n]) for n in names if limit is not None
            and transfer.size_of(n, namespace[n]) > int(limit)}  # fmt: skip
    entries, frames = transfer.pack_namespace({n: namespace[n] for n in names if n not in refs})
    missing = [n for n in asked if n not in namespace]
    reply: dict[str, Any] = {"ok": True, "entries": entries, "missing": missing, "refs": refs}
    stage_above = data.get("stage_above")
    if dataserver.port() and stage_above is not None and _nbytes(frames) >= int(stage_above):
        transfer_id = uuid.uuid4().hex  # the client fetches it over the data path
        dataserver.current().stage(transfer_id, frames)
        reply["staged"], frames = transfer_id, []
    return reply, frames


def _nbytes(frames: list[Any]) -> int:
    return sum(memoryview(f).nbytes for f in frames)


def on_vars_open(comm: Any, open_msg: dict[str, Any]) -> None:
    """``cumulus.vars``: one ``push`` or ``pull``, answered on the comm, which then closes."""
    data = open_msg.get("content", {}).get("data", {})
    try:
        if data.get("op") == "push":
            buffers = open_msg.get("buffers") or []
            comm.send(push(data, buffers, user_namespace()))
        elif data.get("op") == "pull":
            reply, frames = _pull(data, user_namespace())
            comm.send(reply, buffers=frames)
        else:
            comm.send({"ok": False, "error": f"unknown operation {data.get('op')!r}"})
    except Exception as exc:  # report anything (unpicklable values first of all) to the caller
        comm.send({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
    finally:
        comm.close()


def on_sync_open(comm: Any, open_msg: dict[str, Any]) -> None:
    """``cumulus.sync``: unpack the archive into the work directory and make it the cwd."""
    data = open_msg.get("content", {}).get("data", {})
    buffers = open_msg.get("buffers") or []
    kernel_id = os.environ.get(env.KERNEL_ID, str(os.getpid()))
    try:
        if not buffers:
            raise InvalidArgument("no archive was sent")
        limit = int(data.get("max_bytes", archive.DEFAULT_MAX_BYTES))
        target = env.workdir(kernel_id)
        summary = archive.unpack(bytes(buffers[0]), target, limit)
        os.chdir(target)
        comm.send({"ok": True, "files": summary.files, "bytes": summary.bytes, "path": str(target)})
    except (CumulusError, OSError, ValueError) as exc:
        comm.send({"ok": False, "error": str(exc)})
    finally:
        comm.close()
