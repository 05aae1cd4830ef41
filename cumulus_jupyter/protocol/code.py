"""The code the client and the gateway send to remote kernels, built in one place.

Each builder returns source that calls one entry point of the agent
(`cumulus_jupyter.agent`) or of the checkpoint API; arguments are embedded with ``repr``, so
the kernel sees exactly the values given. Every line a builder returns prints ``Cumulus: ...``
or nothing, and binds no name in the user's namespace but the module aliases below.
"""

from __future__ import annotations

from collections.abc import Sequence

AGENT = "cumulus_jupyter.agent"
LAUNCHER = "cumulus_jupyter.agent.launcher"  # ``python -m`` in a job container
CHECKPOINT = "cumulus_jupyter.checkpoint"
_AGENT_ALIAS = "_cumulus_agent"
_CHECKPOINT_ALIAS = "_cumulus_ck"

#: comm targets the agent registers
SYNC_TARGET = "cumulus.sync"
VARS_TARGET = "cumulus.vars"

#: silent execute: registers the agent's comm targets and opens the kernel's data port
REGISTER = f"import {AGENT} as {_AGENT_ALIAS}; {_AGENT_ALIAS}.register()"
#: user expressions read after `REGISTER`: the kernel's package versions and its data port
VERSIONS_EXPRESSION = f"{_AGENT_ALIAS}.versions()"
DATA_PORT_EXPRESSION = f"{_AGENT_ALIAS}.data_port()"


def install(requirements: Sequence[str]) -> str:
    """pip-install ``requirements`` into the kernel's overlay and print what happened."""
    return (
        f"import {AGENT} as {_AGENT_ALIAS}\nprint({_AGENT_ALIAS}.install({list(requirements)!r}))"
    )


def _checkpoint(*calls: str) -> str:
    lines = [f"print('Cumulus:', {_CHECKPOINT_ALIAS}.{call})" for call in calls]
    return "\n".join([f"import {CHECKPOINT} as {_CHECKPOINT_ALIAS}", *lines])


def restore(name: str) -> str:
    """Restore checkpoint ``name``'s variables into the kernel's namespace."""
    return _checkpoint(f"restore({name!r}, globals())")


def save_variables(name: str, names: Sequence[str]) -> str:
    """Save the named variables (all user variables when empty) as checkpoint ``name``."""
    return _checkpoint(f"save_variables({name!r}, {list(names)!r}, globals())")


def before_expiry(name: str, names: Sequence[str], expires_at: float) -> str:
    """Arm a save of ``names`` as checkpoint ``name`` one minute before ``expires_at``."""
    return _checkpoint(f"before_expiry({name!r}, {list(names)!r}, globals(), {expires_at!r})")


def prelude(resume: str | None, checkpoint: tuple[str, Sequence[str], float] | None) -> str:
    """What runs before a job's or a cell's own code: restoring a checkpoint, arming one
    before expiry; empty when neither is asked for."""
    calls = []
    if resume:
        calls.append(f"restore({resume!r}, globals())")
    if checkpoint is not None:
        name, names, expires_at = checkpoint
        calls.append(f"before_expiry({name!r}, {list(names)!r}, globals(), {expires_at!r})")
    return _checkpoint(*calls) if calls else ""


# -- what rides inside an execute request and its reply (`cumulus_jupyter.agent.inline`) -------

#: the execute request's metadata key the agent reads: ``push`` (a ``cumulus.vars`` push, its
#: buffers the request's own), ``mark`` (name the cell's last output in the reply) and `PULL`;
#: the reply's metadata under the same key then has `LAST_OUTPUT` (and `PULLED`)
METADATA_KEY = "cumulus"
#: with ``mark``: what to bring back after the cell (``names``, ``watched``: name to the
#: fingerprint the client holds, ``max_bytes``, ``inline_max``), as `PULLED` in the reply
PULL = "pull"
#: the reply's answer to `PULL` (entries, refs, missing, deferred, ``frames``: how many of the
#: reply's buffers are the values' pickles); absent when the cell failed
PULLED = "pulled"
#: the msg_id of the last IOPub message the cell sent (status and execute_input aside), or None
#: when it sent none: a client holding the reply and that message has every output
LAST_OUTPUT = "last_output"
#: IOPub messages of an execute that are not its outputs
NOT_OUTPUTS = frozenset({"status", "execute_input"})
#: the ``ename`` of the execute reply when the carried push was refused (the cell did not run)
PUSH_REFUSED = "CumulusPushRefused"
#: values travel inside the request and the reply up to this many bytes in all
INLINE_MAX_BYTES = 2**20
