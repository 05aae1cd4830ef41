"""`LocalFrontend`: the local ipykernel as the front end of a ``%%cumulus`` cell's remote kernel.

What the remote kernel publishes for a cell is published again by the local kernel, with the
local cell as parent, as if it had made it: streams, rich displays with their ``display_id``
(so ``update_display`` works), ``clear_output``, the execute result, and comms with their
buffers. A comm the remote kernel opens (an ipywidget, a ``tqdm.auto`` bar) is mirrored in the
local kernel's comm manager, so what the local front end sends it (a slider moved, even long
after the cell) goes on to the remote kernel while the session lives. The remote kernel's
``input()`` / ``getpass`` are asked of the local front end and the answer sent back.

`Status` is Cumulus's own news for a cell ("waiting for a partition ...", "... ready"): one
display updated in place, never stderr, hidden by ``--quiet``.
"""

from __future__ import annotations

import html
import sys
import uuid
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cumulus_jupyter.session import RemoteSession

Message = dict[str, Any]

#: how many of our requests' local parents are kept (the oldest are forgotten first)
MAX_PARENTS = 1000

COMM_TYPES = frozenset({"comm_open", "comm_msg", "comm_close"})


class _RemoteComm:
    """A comm the remote kernel opened, as the local kernel's comm manager sees it: what the
    local front end sends it is forwarded to the remote kernel."""

    def __init__(
        self, frontend: LocalFrontend, session: RemoteSession, comm_id: str, target_name: str
    ) -> None:
        self.frontend, self.session = frontend, session
        self.comm_id, self.target_name = comm_id, target_name
        self._closed = False

    def handle_msg(self, msg: Message) -> None:
        self.frontend.forward(self.session, "comm_msg", msg)

    def handle_close(self, msg: Message) -> None:
        self._closed = True
        self.frontend.forward(self.session, "comm_close", msg)


class LocalFrontend:
    """Re-publishes a remote kernel's outputs on the local kernel and relays comms and stdin.

    `show` runs in the local kernel's main thread, for the messages of the cell being run;
    `comm` also runs in the session's reader thread, for comm traffic outside any cell.
    """

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        kernel = getattr(shell, "kernel", None)
        usable = kernel is not None and getattr(kernel, "session", None) is not None
        self.kernel = kernel if usable and hasattr(kernel, "iopub_socket") else None
        self.session: RemoteSession | None = None  # the session of the cell being run
        self._parents: OrderedDict[str, Any] = OrderedDict()  # our request id -> local parent
        self._last_parent: Any = {}

    @property
    def allow_stdin(self) -> bool:
        """Whether the local front end answers input requests for the cell being run."""
        return bool(self.kernel is not None and getattr(self.kernel, "_allow_stdin", False))

    def begin(self, session: RemoteSession | None) -> Any:
        """A cell starts (in the kernel's main thread): its session and its local parent."""
        self.session = session
        if session is not None:
            session.allow_stdin = self.allow_stdin
        return self.parent()

    def parent(self) -> Any:
        """The local request being handled now; call in the kernel's main thread."""
        if self.kernel is None:
            return {}
        self._last_parent = self.kernel.get_parent("shell") or {}
        return self._last_parent

    def publish(
        self,
        msg_type: str,
        content: dict[str, Any],
        parent: Any,
        metadata: dict[str, Any] | None = None,
        buffers: list[Any] | None = None,
    ) -> None:
        """Send one message on the local kernel's iopub, as its own (any thread)."""
        if self.kernel is None:
            return
        self.kernel.session.send(
            self.kernel.iopub_socket,
            msg_type,
            content,
            parent=parent or None,
            ident=msg_type.encode(),
            metadata=metadata or {},
            buffers=list(buffers) if buffers else None,
        )

    # -- the cell's messages ---------------------------------------------------------------

    def show(self, message: Message) -> None:
        """One output message of the cell being run (in the kernel's main thread)."""
        kind, content = message["msg_type"], message["content"]
        if kind == "stream":
            stream = sys.stderr if content.get("name") == "stderr" else sys.stdout
            stream.write(content.get("text", ""))
            stream.flush()
        elif kind in ("display_data", "update_display_data"):
            self._display(content, update=kind == "update_display_data")
        elif kind == "execute_result":
            if self.kernel is None:
                self._display(content)
            else:
                self._flush()
                count = getattr(self.shell, "execution_count", None)
                self.publish(
                    "execute_result",
                    {
                        "data": content.get("data", {}),
                        "metadata": content.get("metadata", {}),
                        "execution_count": count,
                    },
                    self.parent(),
                )
        elif kind == "clear_output":
            self._flush()
            if self.kernel is not None:
                self.shell.display_pub.clear_output(bool(content.get("wait")))
            else:
                from IPython.display import clear_output

                clear_output(bool(content.get("wait")))  # type: ignore[no-untyped-call]
        elif kind in COMM_TYPES:
            self._flush()
            self.comm(message, self.session, self.parent())
        elif kind == "input_request":
            self._answer(message)
        # an "error" output is raised as RemoteError from the reply, with its traceback

    def _display(self, content: dict[str, Any], update: bool = False) -> None:
        data, metadata = content.get("data", {}), content.get("metadata", {})
        transient = content.get("transient") or {}
        if self.kernel is not None:
            self.shell.display_pub.publish(data, metadata, transient=transient, update=update)
            return
        from IPython.display import publish_display_data

        publish_display_data(data, metadata, transient=transient, update=update)  # type: ignore[no-untyped-call]

    @staticmethod
    def _flush() -> None:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()

    def _answer(self, message: Message) -> None:
        """The remote kernel asks for input: the local front end answers, the remote hears it."""
        session = self.session
        content = message["content"]
        prompt = str(content.get("prompt", ""))
        if self.kernel is None:
            value = input(prompt)
        elif content.get("password"):
            value = self.kernel.getpass(prompt)
        else:
            value = self.kernel.raw_input(prompt)
        if session is not None:
            session.reply_input(value, message["header"])

    # -- comms -----------------------------------------------------------------------------

    def comm(self, message: Message, session: RemoteSession | None, parent: Any = None) -> None:
        """A comm message of the remote kernel, published as the local kernel's own; a comm it
        opens is mirrored so the local front end's answers reach it (any thread)."""
        kind, content = message["msg_type"], message["content"]
        if parent is None:
            asked = message.get("parent_header", {}).get("msg_id", "")
            parent = self._parents.get(asked, self._last_parent)
        manager = getattr(self.kernel, "comm_manager", None)
        comm_id = str(content.get("comm_id", ""))
        if manager is not None and session is not None:
            if kind == "comm_open":
                target = str(content.get("target_name", ""))
                manager.register_comm(_RemoteComm(self, session, comm_id, target))
            elif kind == "comm_close":
                mirror = manager.comms.pop(comm_id, None)
                if mirror is not None:
                    mirror._closed = True
        self.publish(kind, content, parent, message.get("metadata"), message.get("buffers"))

    def forward(self, session: RemoteSession, kind: str, msg: Message) -> None:
        """What the local front end sent a mirrored comm goes to the remote kernel."""
        if not session.alive:
            return
        content = msg["content"]
        buffers = [bytes(b) for b in msg.get("buffers") or []]
        msg_id = session.send_message(
            "shell", kind, {"comm_id": content["comm_id"], "data": content.get("data", {})}, buffers
        )
        self._parents[msg_id] = msg.get("header", {})
        while len(self._parents) > MAX_PARENTS:
            self._parents.popitem(last=False)

    def forget(self, session: RemoteSession) -> None:
        """The session ended: its comms are closed for the local front end too."""
        manager = getattr(self.kernel, "comm_manager", None)
        if manager is None:
            return
        for comm_id, comm in list(manager.comms.items()):
            if isinstance(comm, _RemoteComm) and comm.session is session:
                manager.comms.pop(comm_id, None)
                self.publish("comm_close", {"comm_id": comm_id, "data": {}}, self._last_parent)


#: Cumulus's lines that say how a wait goes on: each replaces the previous one in place
PASSING = ("waiting for a partition", "starting the remote kernel")


def status_bundle(lines: list[str]) -> dict[str, Any]:
    """A display's data for Cumulus's own lines: plain text, and muted HTML (news, not an
    error) for JupyterLab. The magic's `Status` and the Cumulus GPU kernel both show these."""
    text = "\n".join(f"Cumulus: {line}" for line in lines)
    style = "margin:0;color:var(--jp-ui-font-color2,#666);background:transparent"
    return {"text/plain": text, "text/html": f'<pre style="{style}">{html.escape(text)}</pre>'}


class Status:
    """Cumulus's own lines for one cell, as one display updated in place: lines kept (the
    partition is ready, variables sent again) and the latest passing one (waiting ...)."""

    def __init__(self, frontend: LocalFrontend, quiet: bool = False) -> None:
        self.frontend = frontend
        self.quiet = quiet
        self.parent = frontend.parent()  # the cell's, captured in the kernel's main thread
        self.display_id = f"cumulus-{uuid.uuid4().hex}"
        self.kept: list[str] = []
        self.passing = ""
        self.shown = False

    def line(self, text: str) -> None:
        """A line of news (any thread); a waiting line replaces the previous waiting line."""
        if text.startswith(PASSING):
            self.passing = text
        else:
            self.kept.append(text)
            self.passing = ""
        self._show()

    def _show(self) -> None:
        if self.quiet:
            return
        lines = [line for line in [*self.kept, self.passing] if line]
        if self.frontend.kernel is None:  # a plain IPython shell: lines as they come
            print(f"Cumulus: {lines[-1]}", flush=True)
            return
        content = {
            "data": status_bundle(lines),
            "metadata": {},
            "transient": {"display_id": self.display_id},
        }
        kind = "update_display_data" if self.shown else "display_data"
        self.shown = True
        self.frontend.publish(kind, content, self.parent)
