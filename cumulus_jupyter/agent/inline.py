"""Variables that ride inside a cell's own execute request and its reply: no round trip of
their own.

- **Push.** An execute request whose metadata (`METADATA_KEY`) carries ``push`` (a
  ``cumulus.vars`` push: entries, the request's buffers the frames) has it applied to the user
  namespace before the cell runs. If it cannot be (a value does not unpickle here), the cell
  does not run: the reply is an error named `PUSH_REFUSED` and the namespace is unchanged.
- **Mark.** With ``mark``, once the cell's outputs are all sent (after the kernel's own flush,
  just before the reply) one `MARK` message goes out on IOPub, the execute's child. IOPub is
  ordered, so a client that has the reply and the mark has every output: it need not wait for
  the ``idle`` status, which the kernel sends later.
- **Pull.** `inline_pull`, read as a user expression after the cell, answers with the values
  asked for (and the watched ones that changed) as base64 pickles under `VARS_MIME`, up to a
  byte budget; what does not fit is named (``deferred``) for a ``cumulus.vars`` pull.

`install` wraps the running kernel's ``execute_request`` handler and ``finish_metadata``
(idempotent); a kernel without them answers as any ipykernel would, and the client, seeing no
mark and no answer, falls back to waiting for ``idle`` and to comm pulls.
"""

from __future__ import annotations

import base64
import inspect
from typing import Any

from cumulus_jupyter.agent import comms
from cumulus_jupyter.protocol.code import MARK, METADATA_KEY, PUSH_REFUSED, VARS_MIME

_INSTALLED = "_cumulus_inline"


def _options(parent: dict[str, Any]) -> dict[str, Any]:
    metadata = parent.get("metadata") or {}
    options = metadata.get(METADATA_KEY) if isinstance(metadata, dict) else None
    return options if isinstance(options, dict) else {}


def install(kernel: Any) -> None:
    """Wrap ``kernel``'s execute handler (carried pushes) and ``finish_metadata`` (the mark)."""
    if getattr(kernel, _INSTALLED, False):
        return
    execute = kernel.shell_handlers["execute_request"]
    finish_metadata = kernel.finish_metadata

    async def execute_request(stream: Any, ident: Any, parent: dict[str, Any]) -> None:
        push = _options(parent).get("push")
        if push:
            try:
                comms.push(push, list(parent.get("buffers") or []), comms.user_namespace())
            except Exception as exc:
                _refuse(kernel, stream, ident, parent, exc)
                return
        result = execute(stream, ident, parent)
        if inspect.isawaitable(result):
            await result

    def finish_with_mark(parent: dict[str, Any], metadata: Any, reply: Any) -> Any:
        finished = finish_metadata(parent, metadata, reply)
        if _options(parent).get("mark"):
            kernel.session.send(
                kernel.iopub_socket, MARK, {}, parent=parent, ident=kernel._topic(MARK)
            )
        return finished

    kernel.shell_handlers["execute_request"] = execute_request
    kernel.finish_metadata = finish_with_mark
    setattr(kernel, _INSTALLED, True)


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
