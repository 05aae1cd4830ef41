"""Checkpoints, as a user calls them in a remote kernel or a job: ``save``, ``load`` and the
rest. They run in the kernel (the agent, `cumulus_jupyter.agent.checkpoint`, has the design:
L1 on the GPU host's disk, L2 at ``CUMULUS_CHECKPOINT_URL``); this is their public name."""

from cumulus_jupyter.agent.checkpoint import (
    CheckpointCorrupted,
    before_expiry,
    l1_root,
    l2_url,
    load,
    restore,
    save,
    save_variables,
    versions,
    wait_for_copies,
)

__all__ = [
    "CheckpointCorrupted",
    "before_expiry",
    "l1_root",
    "l2_url",
    "load",
    "restore",
    "save",
    "save_variables",
    "versions",
    "wait_for_copies",
]
