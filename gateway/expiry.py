"""`ExpirySupervisor`: warns a kernel's clients before its partition ends, then stops it.

Every tick (one second by default) it moves the partition queue, starts a device discovery
when one is due (`gateway.discovery`), then for each kernel re-reads
its partition from the store (so expiries and releases made by other processes count):

- at T-5 min and T-1 min (for partitions shorter than 10 min: at 1/2 and 1/10 of the duration)
  it sends the kernel's clients a stderr stream message and a ``cumulus`` message, which say
  how to extend the partition (``%cumulus extend 30m``, ``cumulus extend ID 30m``); each
  warning is given once per expiry: a partition extended (``POST
  /api/cumulus/partitions/{id}/extend``) is warned again before its new end;
- at T, or as soon as the partition is released under it, it tells them the partition expired,
  shuts the kernel down (its provisioner releases the partition) and remembers why, so later
  requests for that kernel get a 410 that says so.

"Now" is the supervisor's `SteadyClock` (the broker's and its store's too, from the
supervisor's start): a step of the system clock (±1 h) neither ends a partition early nor keeps
it past its end; the step is logged once.
"""

from __future__ import annotations

import contextlib
from typing import Any

from jupyter_client.session import Session

from chronos import Partition, format_duration
from gateway import metrics
from gateway.clock import SteadyClock
from gateway.manager import CumulusKernelManager
from gateway.registry import cumulus_model
from gateway.services import Services

WARN_BEFORE_S = (300.0, 60.0)
SHORT_PARTITION_S = 600.0
PRUNE_EVERY_S = 60.0
STEP_WARN_S = 2.0  # a system clock this far from the steady one has stepped


def warning_offsets(partition: Partition) -> tuple[float, ...]:
    """Seconds before expiry at which to warn."""
    duration = partition.expires_at - partition.created_at
    if duration >= SHORT_PARTITION_S:
        return WARN_BEFORE_S
    return (duration / 2, duration / 10)


class ExpirySupervisor:
    """Runs `tick` on the gateway's event loop (the app's periodic callback)."""

    def __init__(
        self, services: Services, kernels: CumulusKernelManager, clock: SteadyClock | None = None
    ) -> None:
        self.services = services
        self.kernels = kernels
        self.log = kernels.log
        self.clock = clock or SteadyClock()
        services.broker.use_clock(self.clock)
        self._step = 0.0  # the system clock's step last logged
        self._warned: dict[tuple[str, float], float] = {}  # (kernel, offset): the expiry then
        self._ending: set[str] = set()
        self._next_prune = 0.0

    async def tick(self) -> None:
        services = self.services
        services.broker.pump()
        services.discovery.poll()  # in a worker thread, when due
        metrics.update_devices((d.id, free) for d, free in services.broker.free())
        now = self.clock()
        self._note_step()
        if now >= self._next_prune:  # finished jobs past their retention
            self._next_prune = now + PRUNE_EVERY_S
            services.jobs.store.prune(services.settings.job_retention)
        for kernel_id, partition in services.refresh().items():
            if kernel_id in self._ending:
                continue
            left = partition.expires_at - now
            if not partition.is_active or left <= 0:
                await self.expire(kernel_id, partition)
                continue
            for offset in warning_offsets(partition):
                given = self._warned.get((kernel_id, offset))
                # a warning comes again only when the expiry moved later (an extension)
                if left <= offset and (given is None or partition.expires_at > given):
                    self._warned[(kernel_id, offset)] = partition.expires_at
                    self.warn(kernel_id, partition, left)
                    break

    def _note_step(self) -> None:
        step = self.clock.step()
        if abs(step - self._step) >= STEP_WARN_S:
            self._step = step
            self.log.warning(
                "The system clock is %+.0f s from the gateway's steady clock (it stepped); "
                "partitions still expire on the steady clock",
                step,
                extra={"event": "clock_step", "seconds": round(step, 1)},
            )

    def warn(self, kernel_id: str, partition: Partition, left: float) -> None:
        text = (
            f"Cumulus: partition {partition.id} ({partition.amount} GPU on "
            f"{','.join(partition.device_ids)}) expires in {format_duration(left)}; "
            "save your work, or extend it: `%cumulus extend 30m` (in the notebook), "
            f"`cumulus extend {partition.id} 30m` (in a shell). The kernel will be stopped "
            "then.\n"
        )
        sent = self.broadcast(kernel_id, text, "expiry_warning", partition, left)
        self.log.info(
            "kernel %s: %s (told %d client(s))", kernel_id, text.strip(), sent,
            extra={"event": "expiry_warning", "kernel_id": kernel_id, "partition_id": partition.id},
        )  # fmt: skip

    async def expire(self, kernel_id: str, partition: Partition) -> None:
        self._ending.add(kernel_id)
        how = "was released" if partition.state.value == "released" else "expired"
        reason = (
            f"Partition {partition.id} ({partition.amount} GPU on "
            f"{','.join(partition.device_ids)}) {how}; the kernel was stopped and the GPU "
            "released. Start a new kernel (or a longer --duration) to go on."
        )
        sent = self.broadcast(kernel_id, reason + "\n", "expired", partition, 0.0)
        self.services.registry.mark_ended(kernel_id, reason)
        self.log.info(
            "kernel %s: %s (told %d client(s))", kernel_id, reason, sent,
            extra={"event": "expired", "kernel_id": kernel_id, "partition_id": partition.id},
        )  # fmt: skip
        try:
            with contextlib.suppress(KeyError):  # already gone
                await self.kernels.shutdown_kernel(kernel_id, now=True)
        finally:
            self._ending.discard(kernel_id)
            self._warned = {w: e for w, e in self._warned.items() if w[0] != kernel_id}

    def broadcast(
        self, kernel_id: str, text: str, event: str, partition: Partition, seconds_left: float
    ) -> int:
        """Send a stderr stream message and a ``cumulus`` message to every client of a kernel,
        through each websocket connection's own serialisation (both protocols)."""
        try:
            session: Session = self.kernels.get_kernel(kernel_id).session
        except KeyError:
            return 0
        content: dict[str, Any] = {
            "event": event,
            "seconds_left": round(seconds_left, 1),
            "partition": cumulus_model(partition),
            "message": text.strip(),
        }
        messages = [
            session.msg("stream", {"name": "stderr", "text": text}),
            session.msg("cumulus", content),
        ]
        clients = self.services.registry.clients(kernel_id)
        for client in clients:
            for msg in messages:
                client.inject_iopub(session.serialize(msg))
        return len(clients)
