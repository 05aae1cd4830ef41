"""`DisconnectedCuller`: stops a kernel no client has been connected to for
``--CumulusKernelManager.disconnected_timeout`` seconds, which releases its partition.

A client is a WebSocket on the kernel's channels, as jupyter_server counts them per kernel (the
mapping kernel manager's ``_kernel_connections``). The ``%%cumulus`` magic, the Cumulus GPU
kernel and ``run()`` hold theirs open for as long as their process lives, however idle, so only
a kernel whose client went away (its notebook's kernel died, the laptop left for good) is
stopped. A kernel's clock starts when it is first seen without a client: at its start, at its
last client's disconnect, or, for a kernel adopted after a gateway restart (which starts with
no connection), at its adoption. Batch jobs' kernels have no client and are exempt. The reason
is kept (`KernelRegistry.mark_ended`): later requests for the kernel get a 410 that says it.
"""

from __future__ import annotations

import asyncio
import time

from chronos import format_duration
from gateway.manager import CumulusKernelManager
from gateway.services import Services


class DisconnectedCuller:
    """Runs `tick` on the gateway's event loop (the app's periodic callback)."""

    def __init__(self, services: Services, kernels: CumulusKernelManager) -> None:
        self.services = services
        self.kernels = kernels
        self.log = kernels.log
        self._alone_since: dict[str, float] = {}  # kernel id -> when it was last seen alone

    async def tick(self, now: float | None = None) -> None:
        """Stop the kernels alone for the timeout by ``now`` (default: `time.monotonic`)."""
        timeout = self.services.settings.disconnected_timeout
        if timeout <= 0:
            return
        now = time.monotonic() if now is None else now
        due = [k for k in self.disconnected(now) if now - self._alone_since[k] >= timeout]
        for kernel_id in due:  # decided and recorded before any await: no client came meanwhile
            self._record_end(kernel_id, timeout)
        await asyncio.gather(*(self._stop(kernel_id) for kernel_id in due))

    def disconnected(self, now: float) -> list[str]:
        """The started kernels (not jobs', not ending) with no client now; the clock of each
        one newly so starts at ``now``, and stops for any that has a client again."""
        kernels = self.kernels
        alone = [
            kernel_id
            for kernel_id in list(kernels._kernels)
            if kernel_id not in kernels._pending_kernels  # starting or shutting down
            and not self.services.jobs.runs(kernel_id)
            and kernels._kernel_connections.get(kernel_id, 0) <= 0
        ]
        self._alone_since = {k: self._alone_since.get(k, now) for k in alone}
        return alone

    def _record_end(self, kernel_id: str, timeout: float) -> None:
        partition = self.services.registry.partitions.get(kernel_id)
        held = (
            f"; partition {partition.id} ({partition.amount} GPU on "
            f"{','.join(partition.device_ids)}) was released"
            if partition is not None
            else ""
        )
        reason = (
            f"Kernel {kernel_id} was stopped: no client was connected for "
            f"{format_duration(timeout)}{held}. Start a new kernel to go on."
        )
        self.services.registry.mark_ended(kernel_id, reason)
        self.kernels.note_stop_reason(
            kernel_id, f"no client was connected for {format_duration(timeout)}"
        )
        self.log.info(
            "kernel %s: %s", kernel_id, reason,
            extra={"event": "disconnected", "kernel_id": kernel_id,
                   "partition_id": partition.id if partition is not None else None},
        )  # fmt: skip

    async def _stop(self, kernel_id: str) -> None:
        self._alone_since.pop(kernel_id, None)
        try:
            await self.kernels.shutdown_kernel(kernel_id, now=True)
        except Exception:  # already gone (another shutdown won), or it would not stop
            if kernel_id in self.kernels:
                self.log.exception("Could not stop kernel %s, which has no client", kernel_id)
