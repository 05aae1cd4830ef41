"""Variables that ride inside a cell's own execute request and its reply: no round trip of
their own.

- **Push.** An execute request whose metadata (`METADATA_KEY`) carries ``push`` (a
  ``cumulus.vars`` push: entries, the request's buffers the frames) has it applied to the user
  namespace before the cell runs. If it cannot be (a value does not unpickle here), the cell
  does not run: the reply is an error named `PUSH_REFUSED` and the namespace is unchanged.
- **Last output.** With ``mark``, the reply's metadata names (`LAST_OUTPUT`) the last IOPub
  message the cell sent, counted after the kernel's own flush, just before the reply. IOPub is
  ordered, so a client holding the reply and that message has every output (with no output, the
  reply alone): it need not wait for the ``idle`` status, which the kernel sends later, nor for
  a message of its own (a mark would be one more relay on every cell's critical path). Nor
  need the kernel sleep before the reply, as ipykernel does for every execute (0.5 ms) so
  that outputs tend to arrive first: a marked execute runs without it.
- **Pull.** `inline_pull`, read as a user expression after the cell, answers with the values
  asked for (and the watched ones that changed) as base64 pickles under `VARS_MIME`, up to a
  byte budget; what does not fit is named (``deferred``) for a ``cumulus.vars`` pull.

`install` wraps the running kernel's ``execute_request`` handler, ``finish_metadata`` and its
session's ``send`` (idempotent); a kernel without them answers as any ipykernel would, and the
client, finding no last output named and no answer, falls back to waiting for ``idle`` and to
comm pulls.
"""

from __future__ import annotations

import base64
import inspect
from collections.abc import Callable
from typing import Any

from cumulus_jupyter.agent import comms
from cumulus_jupyter.protocol.code import (
    LAST_OUTPUT,
    METADATA_KEY,
    NOT_OUTPUTS,
    PUSH_REFUSED,
    VARS_MIME,
)

_INSTALLED = "_cumulus_inline"


def _options(parent: dict[str, Any]) -> dict[str, Any]:
    metadata = parent.get("metadata") or {}
    options = metadata.get(METADATA_KEY) if isinstance(metadata, dict) else None
    return options if isinstance(options, dict) else {}


def install(kernel: Any) -> None:
    """Wrap ``kernel``'s execute handler (carried pushes), its session's ``send`` (the last
    output of each marked execute) and ``finish_metadata`` (which names it in the reply)."""
    if getattr(kernel, _INSTALLED, False):
        return
    execute = kernel.shell_handlers["execute_request"]
    finish_metadata = kernel.finish_metadata
    last: dict[str, str | None] = {}  # marked executes under way: their last output so far
    execute_sleep = getattr(kernel, "_execute_sleep", 0.0)
    kernel.session.send = _noting_outputs(kernel, kernel.session.send, last)

    async def execute_request(stream: Any, ident: Any, parent: dict[str, Any]) -> None:
        options = _options(parent)
        push = options.get("push")
        if push:
            try:
                comms.push(push, list(parent.get("buffers") or []), comms.user_namespace())
            except Exception as exc:
                _refuse(kernel, stream, ident, parent, exc)
                return
        msg_id = parent.get("header", {}).get("msg_id")
        marked = bool(options.get("mark") and msg_id)
        if marked:
            last[msg_id] = None
        # ipykernel sleeps before every reply (``_execute_sleep``, 0.5 ms) so that a client's
        # outputs tend to come before the reply; one whose reply names its last output waits
        # for that output instead, and other clients' executes keep the sleep
        kernel._execute_sleep = 0.0 if marked else execute_sleep
        try:
            result = execute(stream, ident, parent)
            if inspect.isawaitable(result):
                await result
        finally:
            last.pop(msg_id, None)

    def finish_naming_last(parent: dict[str, Any], metadata: Any, reply: Any) -> Any:
        finished = finish_metadata(parent, metadata, reply)
        msg_id = parent.get("header", {}).get("msg_id")
        if msg_id in last and isinstance(finished, dict):
            finished[METADATA_KEY] = {LAST_OUTPUT: last[msg_id]}
        return finished

    kernel.shell_handlers["execute_request"] = execute_request
    kernel.finish_metadata = finish_naming_last
    setattr(kernel, _INSTALLED, True)


def _noting_outputs(
    kernel: Any, send: Callable[..., Any], last: dict[str, str | None]
) -> Callable[..., Any]:
    """``session.send`` that notes, for each marked execute, the id of its latest IOPub output
    (prints go out from the IOPub thread, displays and comms from the cell's: both pass here)."""

    def noting(stream: Any, msg_or_type: Any, *args: Any, **kwargs: Any) -> Any:
        msg = send(stream, msg_or_type, *args, **kwargs)
        if last and isinstance(msg, dict) and _is_iopub(kernel, stream):
            parent_id = (msg.get("parent_header") or {}).get("msg_id")
            if parent_id in last and msg["header"]["msg_type"] not in NOT_OUTPUTS:
                last[parent_id] = msg["header"]["msg_id"]
        return msg

    return noting


def _is_iopub(kernel: Any, stream: Any) -> bool:
    return stream is not None and (
        stream is getattr(kernel, "iopub_socket", None)
        or stream is getattr(kernel, "iopub_thread", None)
    )


def _refuse(kernel: Any, stream: Any, ident: Any, parent: dict[str, Any], exc: Exception) -> None:
    """The cell does not run: its reply says why the variables it needed were refused."""
    evalue = f"the variables sent with the cell could not be loaded: {type(exc).__name__}: {exc}"
    content = {
        "status": "error",
        "ename": PUSH_REFUSED,
        "evalue": evalue,
        "traceback": [f"{PUSH_REFUSED}: {evalue}"],
        "execution_count": kernel.execution_count,
    }
    kernel.session.send(stream, "execute_reply", content, parent, ident=ident)


class _Answer:
    """What `inline_pull` returns: shown (as a user expression) under `VARS_MIME` only."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return {VARS_MIME: self.data, "text/plain": "<cumulus variables>"}


def inline_pull(
    names: list[str], watched: dict[str, str], max_bytes: int | None, inline_max: int
) -> _Answer:
    """The values of ``names`` and of the ``watched`` ones (name: the fingerprint the client
    holds) whose value changed, as `comms.gather` finds them, pickled inline (base64) up to
    ``inline_max`` bytes; the rest named in ``deferred``."""
    found = comms.gather(names, comms.user_namespace(), max_bytes, watched, inline_max)
    frames = [base64.b64encode(memoryview(f)).decode("ascii") for f in found.frames]
    return _Answer(
        {"entries": found.entries, "frames": frames, "refs": found.refs,
         "deferred": found.deferred, "missing": found.missing}
    )  # fmt: skip
