"""`DeviceDiscovery`: the gateway's devices, discovered again while it runs.

The store's devices are discovered at the start (`Services.build`) and matched against the
ones its state file has known (a restarted gateway keeps every device's index). While the gateway
runs, hosts join and leave (a Swarm's nodes), a GPU can fall off the bus, a driver can be
reloaded, NVML can start failing, a configured device list (``CHRONOS_DEVICES``) can become
unreadable. So every ``interval_s`` (the expiry supervisor's tick starts it, in a worker thread:
discovery may be slow or hang) discovery runs again, and the store follows its answer
(`chronos.Store.follow`):

- a device found for the first time (a node joined and was labelled, a GPU was added) is
  **added** under the next index: new kernels can be placed on it at once. Known devices are
  never renumbered: partitions and running kernels refer to them by index;
- a known device not found (its node left, is down or drained, its label was removed, the GPU
  fell off the bus) is **offline**: no new partition is cut from it; every other device serves
  on. Partitions already on it are left alone: where its host is gone, the runtime ends their
  kernels (the swarm runtime's node check);
- an offline device found again is **online** again, under its own index;
- discovery raised (NVML, OpenCL or the device list unreadable, the Swarm manager unreachable):
  discovery is **failing**, and nothing can be said about any device. Kernels already running are
  left alone; a new kernel is refused (`check`: `Unavailable`, 503, with ``Retry-After``) saying
  what failed and since when, as it would otherwise be placed on a device nobody can vouch for.
  The next discovery that works ends it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from chronos import Device, Store
from chronos.device import Reconciled
from chronos.errors import ChronosError
from cumulus_jupyter.errors import Unavailable

DEFAULT_INTERVAL_S = 30.0


class DeviceDiscovery:
    """Runs ``discover`` now and then and has ``store`` follow what it finds. Event loop only.

    ``on_states`` gets every device's id and whether it is online, after each discovery that
    worked (for the metrics)."""

    def __init__(
        self,
        discover: Callable[[], Sequence[Device]],
        store: Store,
        log: logging.Logger,
        interval_s: float = DEFAULT_INTERVAL_S,
        on_states: Callable[[list[tuple[str, bool]]], None] = lambda states: None,
    ) -> None:
        self._discover = discover
        self.store = store
        self.log = log
        self.interval_s = interval_s
        self.on_states = on_states
        self.failure: str | None = None  # what is wrong, while discovery fails
        self._failing_since = 0.0
        self._next = time.monotonic() + interval_s
        self._running: asyncio.Task[None] | None = None
        self.on_states(self.states())

    def states(self) -> list[tuple[str, bool]]:
        """Each known device's id and whether it is online."""
        return [(d.id, self.store.is_online(d.index)) for d in self.store.devices]

    def states_online(self) -> list[bool]:
        """Whether each known device is online, by index."""
        return [online for _, online in self.states()]

    def poll(self) -> None:
        """Start a discovery in a worker thread when one is due and none is under way."""
        if self.interval_s <= 0 or time.monotonic() < self._next:
            return
        if self._running is not None and not self._running.done():
            return
        self._next = time.monotonic() + self.interval_s
        self._running = asyncio.ensure_future(self.run())

    async def run(self) -> None:
        """Discover once and note the outcome."""
        try:
            found = await asyncio.to_thread(self._discover)
        except Exception as exc:  # whatever NVML, OpenCL, Docker or the device list raise
            self._note(f"{type(exc).__name__}: {exc}")
            return
        self._note(None)
        before = self.store.offline
        try:  # in a thread too: a new device is written to the state file, which may be busy
            changed = await asyncio.to_thread(self.store.follow, found)
        except ChronosError as exc:
            self.log.warning(
                "Devices found could not be recorded (%s); tried again at the next discovery",
                exc, extra={"event": "discovery_unrecorded"},
            )  # fmt: skip
            return
        self._log_changes(changed, before)
        self.on_states(self.states())

    def _log_changes(self, changed: Reconciled, before: frozenset[int]) -> None:
        devices = changed.devices
        for i in changed.added:
            self.log.info(
                "Device %s found: %s; new kernels can be placed on it",
                devices[i].id, _describe(devices[i]),
                extra={"event": "device_added", "device": devices[i].id},
            )  # fmt: skip
        for i in sorted(changed.offline - before):
            self.log.warning(
                "Device %s (%s) is no longer found: offline, no new partition is cut from "
                "it; partitions on it are left as they are",
                devices[i].id, _describe(devices[i]),
                extra={"event": "device_offline", "device": devices[i].id},
            )  # fmt: skip
        for i in sorted(before - changed.offline):
            self.log.info(
                "Device %s (%s) is found again: online",
                devices[i].id, _describe(devices[i]),
                extra={"event": "device_online", "device": devices[i].id},
            )  # fmt: skip

    def _note(self, failure: str | None) -> None:
        if failure is not None and self.failure is None:
            self._failing_since = time.time()
            self.log.warning(
                "Device discovery is failing: %s; new kernels are refused until it works "
                "again, running kernels are left alone", failure,
                extra={"event": "discovery_failing", "reason": failure},
            )  # fmt: skip
        elif failure is None and self.failure is not None:
            self.log.info(
                "Device discovery works again; new kernels start again",
                extra={"event": "discovery_recovered"},
            )
        self.failure = failure

    def check(self) -> None:
        """`Unavailable` while discovery is failing: for a new kernel's request."""
        if self.failure is None:
            return
        since = time.strftime("%H:%M:%S UTC", time.gmtime(self._failing_since))
        raise Unavailable(
            f"Device discovery on the gateway is failing (since {since}: {self.failure}): no "
            "new kernel starts until it works again; running kernels are not affected",
            retry_after=self.interval_s,
        )


def _describe(device: Device) -> str:
    return f"{device.name} on {device.host}" if device.host else device.name
