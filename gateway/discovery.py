"""`DeviceDiscovery`: the gateway's devices, discovered again while it runs.

The store's devices are discovered once, at the start (`Services.build`). While the gateway
runs, a GPU can fall off the bus, a driver can be reloaded, NVML can start failing, a configured
device list (``CHRONOS_DEVICES``) can become unreadable. So every ``interval_s`` (the expiry
supervisor's tick starts it, in a worker thread: discovery may be slow or hang) discovery runs
again, and its answer is compared with the devices the store partitions:

- it raised, or a device the store has is no longer found: discovery is **failing**. Kernels
  already running are left alone (their partitions and processes are untouched); a new kernel
  is refused (`check`: `Unavailable`, 503, with ``Retry-After``) saying what failed and since
  when, as it would otherwise be placed on a device nobody can vouch for;
- it works and finds every device again: new kernels start again. (A device found that the
  store does not know is not added while the gateway runs; a restart picks it up.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from chronos import Device
from cumulus_jupyter.errors import Unavailable

DEFAULT_INTERVAL_S = 30.0


def _same(a: Device, b: Device) -> bool:
    return (a.name, a.uuid, a.host) == (b.name, b.uuid, b.host)


class DeviceDiscovery:
    """Runs ``discover`` now and then against ``devices`` (the store's). Event loop only."""

    def __init__(
        self,
        discover: Callable[[], Sequence[Device]],
        devices: Sequence[Device],
        log: logging.Logger,
        interval_s: float = DEFAULT_INTERVAL_S,
    ) -> None:
        self._discover = discover
        self.devices = list(devices)
        self.log = log
        self.interval_s = interval_s
        self.failure: str | None = None  # what is wrong, while discovery fails
        self._failing_since = 0.0
        self._next = time.monotonic() + interval_s
        self._running: asyncio.Task[None] | None = None

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
        except Exception as exc:  # whatever NVML, OpenCL or the device list raise
            self._note(f"{type(exc).__name__}: {exc}")
            return
        missing = [d for d in self.devices if not any(_same(d, f) for f in found)]
        if missing:
            names = ", ".join(f"{d.id} ({d.name})" for d in missing)
            self._note(f"{names} no longer found")
        else:
            self._note(None)

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
                "Device discovery works again: every device found; new kernels start again",
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
