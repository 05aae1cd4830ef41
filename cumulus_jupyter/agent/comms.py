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
from dataclasses import dataclass, field
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
    for name in [n for n in values if n.startswith(transfer.MODULE_PREFIX)]:
        # a local module of the client's that the cell imports, with its submodules
        transfer.install_module(name.removeprefix(transfer.MODULE_PREFIX), values.pop(name))
    namespace.update(values)
    for name in data.get("delete") or []:  # deleted on the client's side since
        namespace.pop(name, None)
    return {"ok": True, "names": sorted(values)}


def _pull(data: dict[str, Any], namespace: Namespace) -> tuple[dict[str, Any], list[Any]]:
    found = gather(
        list(data.get("names", [])), namespace, data.get("max_bytes"), budget=data.get("budget")
    )
    reply: dict[str, Any] = {"ok": True, "entries": found.entries, "missing": found.missing,
                             "refs": found.refs, "deferred": found.deferred}  # fmt: skip
    frames = found.frames
    stage_above = data.get("stage_above")
    if dataserver.port() and stage_above is not None and _nbytes(frames) >= int(stage_above):
        transfer_id = uuid.uuid4().hex  # the client fetches it over the data path
        dataserver.current().stage(transfer_id, frames)
        reply["staged"], frames = transfer_id, []
    return reply, frames


@dataclass
class Gathered:
    """Values of a pull, each pickled once (`gather`)."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    frames: list[Any] = field(default_factory=list)
    refs: dict[str, Any] = field(default_factory=dict)  # name: what stays remote, described
    missing: list[str] = field(default_factory=list)  # asked for, not bound here
    deferred: list[str] = field(default_factory=list)  # over the budget: ask again alone


def gather(
    names: list[str],
    namespace: Namespace,
    max_bytes: int | None,
    watched: dict[str, str] | None = None,
    budget: int | None = None,
) -> Gathered:
    """The values of ``names`` and of the ``watched`` ones (name: the fingerprint the client
    holds) that changed. A value over ``max_bytes``, or one that cannot be pickled (an open
    file, a widget), stays here and is described in ``refs`` (with ``unpicklable``: why);
    past ``budget`` bytes in all, values are named in ``deferred`` instead (the first value
    is always taken: one over the budget is the transfer's to refuse)."""
    watched = watched or {}
    found = Gathered(missing=[n for n in names if n not in namespace])
    chosen: dict[str, transfer.Pickled] = {}  # what comes back, pickled alone (sizes, prints)
    same: dict[str, tuple[transfer.Pickled, dict[int, Any]]] = {}  # watched, unchanged
    shared: set[int] = set()  # the state what comes back holds
    used = 0

    def take(name: str, pickled: transfer.Pickled) -> bool:
        nonlocal used
        size = transfer.pickled_size(pickled)
        if max_bytes is not None and size > int(max_bytes):
            found.refs[name] = transfer.describe(namespace[name], pickled)
            return False
        if budget is not None and used and used + size > budget:
            found.deferred.append(name)
            return False
        used += size
        chosen[name] = pickled
        return True

    for name in dict.fromkeys([*names, *watched]):
        if name not in namespace:
            continue
        value = namespace[name]
        holders: dict[int, Any] = {}
        try:
            # the notebook's functions (a method of a class defined in a cell) go rebound to
            # the client's namespace, as they came: not with a private copy of their globals
            pickled = transfer.dumps(name, value, namespace, holders)
        except CumulusError as exc:
            found.refs[name] = {"type": type(value).__name__, "unpicklable": str(exc)}
            continue
        if name not in names and transfer.fingerprint(*pickled) == watched[name]:
            same[name] = (pickled, holders)  # as the client holds it: it stays, unless...
            continue
        if take(name, pickled):
            shared |= holders.keys()
    # ...it holds state what comes back holds: then it comes too, in the same pickle, or the
    # client's copies would part (a new ``opt`` made here on the unchanged ``model``)
    for name in transfer.sharing({n: h for n, (_, h) in same.items()}, shared):
        take(name, same[name][0])
    # together, so that what they share stays shared on the client (`transfer.pack_namespace`)
    found.entries, found.frames = transfer.pack_namespace(
        {n: namespace[n] for n in chosen}, chosen, namespace
    )
    return found


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
