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
- **Pull.** A marked execute whose metadata carries `PULL` has, once the cell succeeded, the
  values asked for (and the watched ones that changed), as `comms.gather` finds them, pickled
  into the reply: described under `PULLED` in its metadata, the pickles its binary buffers,
  up to a byte budget; what does not fit is named (``deferred``) for a ``cumulus.vars`` pull.
  This is done as the reply's metadata is finished, not as a user expression: IPython formats
  every user expression through each of its display formatters, which cost a pulling cell
  more than half a millisecond.

`install` wraps the running kernel's ``execute_request`` handler, ``finish_metadata`` and its
session's ``send`` (idempotent); a kernel without them answers as any ipykernel would, and the
client, finding no last output named and no answer, falls back to waiting for ``idle`` and to
comm pulls.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from cumulus_jupyter.agent import comms
from cumulus_jupyter.protocol.code import (
    LAST_OUTPUT,
    METADATA_KEY,
    NOT_OUTPUTS,
    PULL,
    PULLED,
    PUSH_REFUSED,
)

_INSTALLED = "_cumulus_inline"


def _options(parent: dict[str, Any]) -> dict[str, Any]:
    metadata = parent.get("metadata") or {}
    options = metadata.get(METADATA_KEY) if isinstance(metadata, dict) else None
    return options if isinstance(options, dict) else {}


class _Marked:
    """A marked execute under way: its last output so far, what to pull after it, and the
    pickles its reply is to carry."""

    def __init__(self, pull: Any) -> None:
        self.last: str | None = None
        self.pull = pull if isinstance(pull, dict) else None
        self.frames: list[Any] | None = None


def install(kernel: Any) -> None:
    """Wrap ``kernel``'s execute handler (carried pushes), its session's ``send`` (the last
    output of each marked execute, the pickles its reply carries) and ``finish_metadata``
    (which names the last output in the reply and pulls)."""
    if getattr(kernel, _INSTALLED, False):
        return
    execute = kernel.shell_handlers["execute_request"]
    finish_metadata = kernel.finish_metadata
    marked: dict[Any, _Marked] = {}  # by the execute's msg_id
    execute_sleep = getattr(kernel, "_execute_sleep", 0.0)
    kernel.session.send = _noting_outputs(kernel, kernel.session.send, marked)

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
        is_marked = bool(options.get("mark") and msg_id)
        if is_marked:
            marked[msg_id] = _Marked(options.get(PULL))
        # ipykernel sleeps before every reply (``_execute_sleep``, 0.5 ms) so that a client's
        # outputs tend to come before the reply; one whose reply names its last output waits
        # for that output instead, and other clients' executes keep the sleep
        kernel._execute_sleep = 0.0 if is_marked else execute_sleep
        try:
            result = execute(stream, ident, parent)
            if inspect.isawaitable(result):
                await result
        finally:
            marked.pop(msg_id, None)

    def finish_naming_last(parent: dict[str, Any], metadata: Any, reply: Any) -> Any:
        finished = finish_metadata(parent, metadata, reply)
        state = marked.get(parent.get("header", {}).get("msg_id"))
        if state is not None and isinstance(finished, dict):
            named: dict[str, Any] = {LAST_OUTPUT: state.last}
            if state.pull is not None and isinstance(reply, dict) and reply.get("status") == "ok":
                answer = _pulled(state.pull)
                if answer is not None:
                    named[PULLED], state.frames = answer
            finished[METADATA_KEY] = named
        return finished

    kernel.shell_handlers["execute_request"] = execute_request
    kernel.finish_metadata = finish_naming_last
    setattr(kernel, _INSTALLED, True)


def _pulled(pull: dict[str, Any]) -> tuple[dict[str, Any], list[Any]] | None:
    """What a marked execute's reply brings back (described, and the frames it carries as its
    buffers); None when the values cannot be gathered: the client then pulls over comms."""
    try:
        found = comms.gather(
            list(pull.get("names") or []), comms.user_namespace(), pull.get("max_bytes"),
            dict(pull.get("watched") or {}), pull.get("inline_max"),
        )  # fmt: skip
    except Exception:  # a value whose pickling raised what `transfer.dumps` does not map
        return None
    answer = {"entries": found.entries, "refs": found.refs, "missing": found.missing,
              "deferred": found.deferred, "frames": len(found.frames)}  # fmt: skip
    return answer, found.frames


def _noting_outputs(
    kernel: Any, send: Callable[..., Any], marked: dict[Any, _Marked]
) -> Callable[..., Any]:
    """``session.send`` that notes, for each marked execute, the id of its latest IOPub output
    (prints go out from the IOPub thread, displays and comms from the cell's: both pass here),
    and gives its reply the pickles `finish_metadata` gathered as buffers."""

    def noting(stream: Any, msg_or_type: Any, *args: Any, **kwargs: Any) -> Any:
        if marked and msg_or_type == "execute_reply":
            parent = kwargs.get("parent", args[1] if len(args) > 1 else None)
            state = marked.get(_msg_id(parent))
            if state is not None and state.frames and not kwargs.get("buffers"):
                kwargs["buffers"], state.frames = state.frames, None
        msg = send(stream, msg_or_type, *args, **kwargs)
        if marked and isinstance(msg, dict) and _is_iopub(kernel, stream):
            state = marked.get((msg.get("parent_header") or {}).get("msg_id"))
            if state is not None and msg["header"]["msg_type"] not in NOT_OUTPUTS:
                state.last = msg["header"]["msg_id"]
        return msg

    return noting


def _msg_id(message: Any) -> Any:
    header = message.get("header") if isinstance(message, dict) else None
    return header.get("msg_id") if isinstance(header, dict) else None


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
