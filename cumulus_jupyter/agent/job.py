"""A directory job inside its kernel: unpack the archive, call ``main()``, publish the result.

The gateway's job runner, after the job's requirements are installed, executes
`jobarchive.REGISTER` (`register`: the `JOB_TARGET` comm target), opens a comm to it whose one
buffer is the zip (binary: no base64, and no multi-MiB cell for IPython to tokenize), and then
executes `jobarchive.run_code`, which calls `run` here: the kernel handles the two in the order
sent. The result document is the seed's:
``{"status": "success", "result", "execution_time", "timestamp", "system_info"}`` or
``{"status": "error", "error", "error_type", "traceback", …}``; it is published as one display
of type `RESULT_MIME`, which the runner keeps instead of writing it to the log. A result that
is not JSON-serialisable is ``null`` in the document, which says so (``result_serializable``,
``result_type``, ``result_repr``), and travels pickled beside it (up to `MAX_PICKLE_BYTES`).
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import importlib.util
import inspect
import json
import os
import platform
import sys
import threading
import time
import traceback
from typing import Any

from cumulus_jupyter.protocol import env
from cumulus_jupyter.protocol.jobarchive import (
    JOB_TARGET,
    MAIN,
    MAX_PICKLE_BYTES,
    RESULT_MIME,
    extract,
)

_REPR_CHARS = 1000
#: the zip the comm brought, until `run` takes it
_received: dict[str, bytes] = {}


def register() -> None:
    """Register `JOB_TARGET` in the running IPython kernel (nothing outside one)."""
    from IPython import get_ipython

    shell = get_ipython()
    if shell is not None and hasattr(shell, "kernel"):
        shell.kernel.comm_manager.register_target(JOB_TARGET, _on_open)


def _on_open(comm: Any, open_msg: dict[str, Any]) -> None:
    """`JOB_TARGET`: keep the zip (the open message's one buffer) for `run`."""
    buffers = open_msg.get("buffers") or []
    if buffers:
        _received["archive"] = bytes(buffers[0])
    comm.close()


def _system_info(info: dict[str, Any]) -> dict[str, Any]:
    return {"python_version": platform.python_version(), **info}


def _call(main: Any) -> Any:
    """``main()``; a coroutine it returns is run to its end on a loop of its own (the kernel's
    loop is running)."""
    value = main()
    if not inspect.isawaitable(value):
        return value
    box: dict[str, Any] = {}

    def drive() -> None:
        try:
            box["value"] = asyncio.run(value)  # type: ignore[arg-type]
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=drive, name="cumulus-job-main")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def _load_main(directory: str) -> Any:
    spec = importlib.util.spec_from_file_location("main", os.path.join(directory, MAIN))
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["main"] = module
    spec.loader.exec_module(module)
    main = getattr(module, "main", None)
    if not callable(main):
        raise TypeError(f"main in {MAIN} is not a function ({type(main).__name__})")
    return main


def _serialised(result: Any) -> tuple[Any, dict[str, Any], bytes | None]:
    """The result as the document carries it, the notes about it, its pickle when needed."""
    try:
        text = json.dumps(result, allow_nan=False)
        return json.loads(text), {}, None
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        why = f"{type(exc).__name__}: {exc}"
    kind = type(result)
    notes: dict[str, Any] = {
        "result_serializable": False,
        "result_type": f"{kind.__module__}.{kind.__qualname__}",
        "result_repr": _repr(result),
    }
    try:
        import cloudpickle

        pickled = cloudpickle.dumps(result, protocol=5)
    except Exception as exc:
        notes["note"] = f"not JSON-serialisable ({why}) and not picklable: {exc}"
        return None, notes, None
    if len(pickled) > MAX_PICKLE_BYTES:
        notes["note"] = (f"not JSON-serialisable ({why}); its pickle ({len(pickled)} bytes) is "
                         f"over the {MAX_PICKLE_BYTES} byte cap, so it was not kept")  # fmt: skip
        return None, notes, None
    job_id = os.environ.get(env.JOB_ID, "ID")
    notes["note"] = (f"not JSON-serialisable ({why}); kept pickled: "
                     f"cumulus_jupyter.jobs.result({job_id!r})")  # fmt: skip
    return None, notes, pickled


def _repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception as exc:
        text = f"<repr failed: {exc}>"
    return text if len(text) <= _REPR_CHARS else text[:_REPR_CHARS] + "…"


def run(info: dict[str, Any], archive: bytes | None = None) -> None:
    """Unpack the job (``archive``, or the zip `JOB_TARGET` received), call its ``main()``,
    publish the result document. ``info``: the ``system_info`` the gateway knows (job id,
    partition, device)."""
    directory = str(env.workdir(str(info.get("job_id") or os.getpid())))
    started = time.perf_counter()
    pickled: bytes | None = None
    try:
        data = archive if archive is not None else _received.pop("archive", None)
        if data is None:
            raise RuntimeError("the job's archive did not reach the kernel")
        extract(data, directory)
        os.chdir(directory)
        if directory not in sys.path:
            sys.path.insert(0, directory)
        result, notes, pickled = _serialised(_call(_load_main(directory)))
        document: dict[str, Any] = {"status": "success", "result": result}
    except BaseException as exc:  # the job's own failure, reported in its document
        text = traceback.format_exc()
        sys.stderr.write(text)
        notes = {}
        document = {"status": "error", "error": str(exc), "error_type": type(exc).__name__,
                    "traceback": text}  # fmt: skip
    document |= {
        "execution_time": round(time.perf_counter() - started, 6),
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(),
        "system_info": _system_info(info),
        **notes,
    }
    _publish(document, pickled)


def _publish(document: dict[str, Any], pickled: bytes | None) -> None:
    from IPython.display import publish_display_data

    encoded = base64.b64encode(pickled).decode() if pickled is not None else None
    publish_display_data({RESULT_MIME: {"document": document, "pickle": encoded}})  # type: ignore[no-untyped-call]
