"""Environment variable names the client, the gateway and the agent pass each other.

Each name is spelled here once; the side that sets a variable and the side that reads it both
import it from here.
"""

from __future__ import annotations

import os
from pathlib import Path

# -- a kernel request (Kernel Gateway convention: the client's KERNEL_* reach the provisioner) --
KERNEL_PREFIX = "KERNEL_"
KERNEL_GPU = "KERNEL_GPU"
KERNEL_DURATION = "KERNEL_DURATION"
KERNEL_USERNAME = "KERNEL_USERNAME"
KERNEL_GPU_DEVICES = "KERNEL_GPU_DEVICES"
KERNEL_LAUNCH_TIMEOUT = "KERNEL_LAUNCH_TIMEOUT"
KERNEL_WAIT = "KERNEL_WAIT"
#: the client's own name for its request (letters, digits, - and _; at most 64): its entry in
#: ``/api/cumulus/queue`` carries it as ``tag``, so a client finds its own place in the queue
KERNEL_REQUEST_TAG = "KERNEL_REQUEST_TAG"

# -- the client's settings ---------------------------------------------------------------------
GATEWAY_URL = "CUMULUS_GATEWAY_URL"
TOKEN = "CUMULUS_TOKEN"
TOKEN_FILE = "CUMULUS_TOKEN_FILE"
#: a PEM file of the CAs that clients trust for an https:// gateway (`cumulus_jupyter.tls`)
CA_BUNDLE = "CUMULUS_CA_BUNDLE"
# the Cumulus GPU kernelspec's options for its proxy kernel
GPU = "CUMULUS_GPU"
DURATION = "CUMULUS_DURATION"
SYNC = "CUMULUS_SYNC"
SYNC_MAX_MB = "CUMULUS_SYNC_MAX_MB"

# -- set by the gateway for a kernel, read by the agent ----------------------------------------
KERNEL_ID = "CUMULUS_KERNEL_ID"
JOB_ID = "CUMULUS_JOB_ID"
DATA_HOST = "CUMULUS_DATA_HOST"
DATA_PORT = "CUMULUS_DATA_PORT"
DATA_SOCKET = "CUMULUS_DATA_SOCKET"
WORKDIR = "CUMULUS_WORKDIR"
OVERLAYS = "CUMULUS_OVERLAYS"
CHECKPOINT_URL = "CUMULUS_CHECKPOINT_URL"
CHECKPOINT_OPTIONS = "CUMULUS_CHECKPOINT_OPTIONS"
CHECKPOINT_DIR = "CUMULUS_CHECKPOINT_DIR"
# L2 through the gateway: its checkpoint endpoint and the kernel's owner's token for it
CHECKPOINT_GATEWAY = "CUMULUS_CHECKPOINT_GATEWAY"
CHECKPOINT_TOKEN = "CUMULUS_CHECKPOINT_TOKEN"
CHECKPOINT_CERT = "CUMULUS_CHECKPOINT_CERT"  # an https:// gateway's own certificate, pinned
# a container's launcher: where and with what to call the gateway back
CALLBACK_URL = "CUMULUS_CALLBACK_URL"
CALLBACK_TOKEN = "CUMULUS_CALLBACK_TOKEN"
KERNEL_IP = "CUMULUS_KERNEL_IP"
#: an https:// gateway's own certificate (PEM), which the launcher pins for its callback
CALLBACK_CERT = "CUMULUS_CALLBACK_CERT"

#: the gateway's own L2 settings: a kernel gets neither (`gateway.checkpoints` says instead)
CHECKPOINT_ENV = (CHECKPOINT_URL, CHECKPOINT_OPTIONS)


def workdir(kernel_id: str) -> Path:
    """Where a remote kernel's synced files go: ``$CUMULUS_WORKDIR/cumulus-work-<kernel id>``
    (default: the system temp dir), never the gateway's own directory. The agent writes there;
    the gateway removes it when the kernel shuts down."""
    base = Path(os.environ.get(WORKDIR) or Path(os.environ.get("TMPDIR", "/tmp")))
    safe = "".join(c for c in kernel_id if c.isalnum() or c in "-_") or "kernel"
    return base / f"cumulus-work-{safe}"
