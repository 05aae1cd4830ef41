"""The agent: everything of Cumulus that runs inside a remote kernel.

The client and the gateway reach it only through the code `cumulus_jupyter.protocol.code`
builds: `register` (sent silently when a session starts) registers the comm targets of
`comms` and opens the kernel's data port (`dataserver`); `versions` and `data_port` are read
back as user expressions; `inline` lets variables ride inside a cell's execute request and
reply; `streams` spares the kernel's flushes their wait on the IOPub thread when there is
nothing to flush; `install` builds a requirements overlay (`overlay`). A job container's first
process is `launcher`; checkpoints are `checkpoint` (public as ``cumulus_jupyter.checkpoint``).
"""

from __future__ import annotations

from cumulus_jupyter.agent import comms, dataserver, inline, streams
from cumulus_jupyter.agent.overlay import install
from cumulus_jupyter.protocol.code import SYNC_TARGET, VARS_TARGET
from cumulus_jupyter.transfer import versions

__all__ = ["data_port", "install", "register", "versions"]


def register() -> None:
    """Register the comm targets in the running IPython kernel, wrap its execute handling
    (`inline`) and its output streams (`streams`), and open its data port (idempotent;
    nothing outside an IPython kernel)."""
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None or not hasattr(shell, "kernel"):
        return
    shell.kernel.comm_manager.register_target(SYNC_TARGET, comms.on_sync_open)
    shell.kernel.comm_manager.register_target(VARS_TARGET, comms.on_vars_open)
    inline.install(shell.kernel)
    streams.install()
    dataserver.open_port(shell.kernel.session.key)


def data_port() -> int | None:
    """The data port this kernel listens on, or None (then variables travel in messages)."""
    return dataserver.port()
