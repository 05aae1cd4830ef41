"""`Adoptions`: kernels a restarted gateway took back, and what their clients are told.

A gateway killed with SIGKILL (or that crashed) and started again adopts every recorded kernel
whose process still runs (`CumulusKernelManager.adopt_kernels`). The kernel never noticed:

- **kept**: the kernel process, its variables and imports, its partition (same id, same
  expiry), and a cell that was running, which ran on to its end;
- **lost**: what the kernel sent while no gateway listened. IOPub is publish/subscribe, so its
  output then (stream, display data, errors, status) reached no subscriber and is gone; the
  reply of a cell that finished then went to the dead gateway's shell socket and is gone too.
  Output sent after the adoption is relayed as usual, the running cell's included.

So that nobody mistakes the gap for the whole output, the first WebSocket connection of each
client session to an adopted kernel gets, before anything else, a stderr stream message and a
``cumulus`` message (``event: gateway_restarted``) saying so (`notice`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

EVENT = "gateway_restarted"


@dataclass
class Adoptions:
    """By kernel id: when it was adopted, and the client sessions already told. Event loop only."""

    adopted_at: dict[str, float] = field(default_factory=dict)
    told: dict[str, set[str]] = field(default_factory=dict)

    def mark(self, kernel_id: str, at: float | None = None) -> None:
        self.adopted_at[kernel_id] = time.time() if at is None else at
        self.told[kernel_id] = set()

    def forget(self, kernel_id: str) -> None:
        self.adopted_at.pop(kernel_id, None)
        self.told.pop(kernel_id, None)

    def notice(self, kernel_id: str, session: str) -> dict[str, Any] | None:
        """The ``cumulus`` message content for ``session``'s first connection to an adopted
        kernel (its ``message`` is the stderr text); None if not adopted or already told."""
        at = self.adopted_at.get(kernel_id)
        told = self.told.get(kernel_id)
        if at is None or told is None or session in told:
            return None
        told.add(session)
        when = time.strftime("%H:%M:%S UTC", time.gmtime(at))
        message = (
            f"Cumulus: the gateway was restarted and took this kernel back at {when}. The "
            "kernel, its variables and any cell it was running were kept; output it produced "
            "while the gateway was down (and the reply of a cell that finished then) was not "
            "relayed and is lost. Output from now on arrives as usual."
        )
        return {"event": EVENT, "adopted_at": at, "message": message}
