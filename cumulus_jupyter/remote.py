"""What runs inside the remote kernel: comm targets the local side talks to.

``import cumulus_jupyter.remote as r; r.register()`` (sent silently by the Cumulus GPU kernel)
registers ``cumulus.sync``: a comm whose first message carries a directory archive as a binary
buffer; it is unpacked (`cumulus_jupyter.archive.unpack`, traversal-safe and size-capped) into
this kernel's work directory, which becomes the working directory, and the comm answers with
what it wrote or why it refused; and ``cumulus.vars``: ``push`` puts unpickled values into the
user namespace, ``pull`` pickles named ones back. Large buffers do not ride in those messages:
`register` also opens the kernel's data port (`cumulus_jupyter.datachannel.DataServer`), where
the gateway stages them, and the comm names the staged transfer instead.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from cumulus_jupyter import archive
from cumulus_jupyter.datachannel import DataServer
from cumulus_jupyter.errors import CumulusError, InvalidArgument

SYNC_TARGET = "cumulus.sync"
VARS_TARGET = "cumulus.vars"


def _on_vars_open(comm: Any, open_msg: dict[str, Any]) -> None:
    """``push``: unpickle the buffers into the user namespace; ``pull``: pickle the named
    variables back, protocol 5, buffers out of band. One comm per operation."""
    from IPython import get_ipython

    from cumulus_jupyter import transfer

    namespace = get_ipython().user_ns
    data = open_msg.get("content", {}).get("data", {})
    try:
        if data.get("op") == "push":
            staged = data.get("staged")
            buffers = _server().claim(staged) if staged else open_msg.get("buffers") or []
            values = transfer.unpack_namespace(data["entries"], buffers)
            namespace.update(values)
            comm.send({"ok": True, "names": sorted(values)})
        elif data.get("op") == "pull":
            names = [n for n in data.get("names", []) if n in namespace]
            limit = data.get("max_bytes")
            refs = {n: transfer.describe(namespace[n]) for n in names if limit is not None
                    and transfer.size_of(n, namespace[n]) > int(limit)}  # fmt: skip
            entries, frames = transfer.pack_namespace(
                {n: namespace[n] for n in names if n not in refs}
            )
            missing = [n for n in data.get("names", []) if n not in namespace]
            reply: dict[str, Any] = {
                "ok": True, "entries": entries, "missing": missing, "refs": refs
            }  # fmt: skip
            stage_above = data.get("stage_above")
            if _DATA and stage_above is not None and _nbytes(frames) >= int(stage_above):
                transfer_id = uuid.uuid4().hex  # the client fetches it over the data path
                _server().stage(transfer_id, frames)
                reply["staged"], frames = transfer_id, []
            comm.send(reply, buffers=frames)
        else:
            comm.send({"ok": False, "error": f"unknown operation {data.get('op')!r}"})
    except Exception as exc:  # report anything (unpicklable values first of all) to the caller
        comm.send({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
    finally:
        comm.close()


def _on_sync_open(comm: Any, open_msg: dict[str, Any]) -> None:
    data = open_msg.get("content", {}).get("data", {})
    buffers = open_msg.get("buffers") or []
    kernel_id = os.environ.get("CUMULUS_KERNEL_ID", str(os.getpid()))
    try:
        if not buffers:
            raise InvalidArgument("no archive was sent")
        limit = int(data.get("max_bytes", archive.DEFAULT_MAX_BYTES))
        target = archive.workdir(kernel_id)
        summary = archive.unpack(bytes(buffers[0]), target, limit)
        os.chdir(target)
        comm.send({"ok": True, "files": summary.files, "bytes": summary.bytes, "path": str(target)})
    except (CumulusError, OSError, ValueError) as exc:
        comm.send({"ok": False, "error": str(exc)})
    finally:
        comm.close()


_DATA: list[DataServer] = []  # the kernel's data port, once register() opened it


def _server() -> DataServer:
    if not _DATA:
        raise InvalidArgument("this kernel has no data port (CUMULUS_DATA_PORT was not set)")
    return _DATA[0]


def _nbytes(frames: list[Any]) -> int:
    return sum(memoryview(f).nbytes for f in frames)


def data_port() -> int | None:
    """The data port this kernel listens on, or None (then variables travel in messages)."""
    return int(_DATA[0].address[1]) if _DATA else None


def _open_data_port(key: bytes) -> None:
    port = os.environ.get("CUMULUS_DATA_PORT")
    if _DATA or not port:
        return
    try:
        host = os.environ.get("CUMULUS_DATA_HOST", "127.0.0.1")
        unix = os.environ.get("CUMULUS_DATA_SOCKET") or None
        _DATA.append(DataServer(key, host, int(port), unix))
    except (OSError, ValueError, CumulusError) as exc:
        print(f"cumulus: no data port ({exc}); large variables travel in messages",
              file=sys.stderr)  # fmt: skip


def overlay_root() -> Path:
    return Path(
        os.environ.get("CUMULUS_OVERLAYS") or Path.home() / ".cache" / "cumulus" / "overlays"
    )


def install(requirements: list[str]) -> str:
    """Install ``requirements`` (pip arguments) into an overlay directory put first on this
    kernel's path, never into the environment the kernel (or the gateway) runs from. Overlays
    are cached by the hash of the arguments, so a repeat is instant."""
    key = hashlib.sha256("\0".join(requirements).encode()).hexdigest()[:16]
    target = overlay_root() / key
    cached = (target / ".cumulus-complete").exists()
    if not cached:
        building = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=_ensure(overlay_root())))
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "--no-warn-script-location", "--target", str(building), *requirements],
            capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            shutil.rmtree(building, ignore_errors=True)
            raise InvalidArgument(f"pip install failed: {done.stderr.strip()[-2000:]}")
        (building / ".cumulus-complete").touch()
        try:
            building.rename(target)  # atomic: a half-built overlay is never used
        except OSError:
            shutil.rmtree(building, ignore_errors=True)  # another kernel built it meanwhile
    if str(target) not in sys.path:
        sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    return f"{'cached' if cached else 'installed'} {' '.join(requirements)} in {target}"


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def register() -> None:
    """Register the comm targets in the running IPython kernel (idempotent)."""
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None or not hasattr(shell, "kernel"):
        return
    shell.kernel.comm_manager.register_target(SYNC_TARGET, _on_sync_open)
    shell.kernel.comm_manager.register_target(VARS_TARGET, _on_vars_open)
    _open_data_port(shell.kernel.session.key)
