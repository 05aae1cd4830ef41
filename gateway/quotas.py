"""Per-user quotas: how much GPU, how many kernels and how long a partition one user may hold.

Configured on the kernel manager (``--CumulusKernelManager.max_gpu_per_user``,
``max_kernels_per_user``, ``max_duration``) and per kernelspec (``max_duration`` in its
provisioner config, `gateway.provisioner.CumulusProvisioner`), read once into `Quotas` at
start-up (a bad value stops it with one line), and checked:

- where a partition is asked for (`CumulusProvisioner._acquire`, for kernels and batch jobs
  alike): over a limit is `ResourceExhausted` (429) naming the limit and what the user holds;
- where one is extended (``POST /api/cumulus/partitions/{id}/extend``): a whole life past
  ``max_duration`` is `Conflict` (409) naming the limit and how much is left.

What a user holds (`Holdings`) counts their active partitions, their kernels and the requests
they have waiting in the queue, so queued requests cannot add up past a limit. Requests made
with the operator token are exempt: the handlers pass ``quota_exempt=True`` (`EXEMPT`) to
``start_kernel``, which hands it to the provisioner's ``pre_launch`` (never from a client's
variables).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from chronos import GpuAmount, Partition, format_duration, parse_duration
from chronos.amount import TENTHS_PER_DEVICE
from cumulus_jupyter.errors import Conflict, InvalidArgument, ResourceExhausted
from gateway.errors import chronos_boundary

#: the ``start_kernel`` keyword saying the request was made with the operator token
EXEMPT = "quota_exempt"
SETTINGS = "--CumulusKernelManager"  # where the global quotas are configured


@dataclass(frozen=True)
class DurationLimit:
    """The longest a partition may last, creation to expiry, and the setting that says so."""

    seconds: int
    name: str  # "max_duration", "kernelspec NAME's max_duration"

    def describe(self) -> str:
        return f"{self.name} is {format_duration(self.seconds)}"


@dataclass(frozen=True)
class Quotas:
    """The gateway-wide limits; None: no limit."""

    max_gpu_per_user: float | None = None
    max_kernels_per_user: int | None = None
    max_duration_s: int | None = None

    @classmethod
    def configured(
        cls, max_gpu_per_user: float | None, max_kernels_per_user: int | None, max_duration: str
    ) -> Quotas:
        """From the kernel manager's settings; `InvalidArgument` naming a bad one."""
        gpu, kernels = max_gpu_per_user, max_kernels_per_user
        smallest = 1 / TENTHS_PER_DEVICE  # the least a request can ask
        if gpu is not None and not (math.isfinite(gpu) and gpu >= smallest - 1e-9):
            raise InvalidArgument(
                f"{SETTINGS}.max_gpu_per_user must be a GPU amount of at least {smallest:g} "
                f"(e.g. 1 or 0.5; {smallest:g} is the smallest a request can ask), not {gpu:g}; "
                "leave it unset for no limit"
            )
        if kernels is not None and kernels <= 0:
            raise InvalidArgument(
                f"{SETTINGS}.max_kernels_per_user must be a positive number of kernels, "
                f"not {kernels}; leave it unset for no limit"
            )
        return cls(gpu, kernels, parse_limit(max_duration, f"{SETTINGS}.max_duration"))

    @property
    def any(self) -> bool:
        """Whether any limit is set."""
        limits = (self.max_gpu_per_user, self.max_kernels_per_user, self.max_duration_s)
        return any(limit is not None for limit in limits)

    def duration_limit(
        self, kernelspec: str | None = None, kernelspec_s: int | None = None
    ) -> DurationLimit | None:
        """The tighter of the global ``max_duration`` and a kernelspec's own; None: neither."""
        limits = []
        if self.max_duration_s is not None:
            limits.append(DurationLimit(self.max_duration_s, "max_duration"))
        if kernelspec_s is not None:
            limits.append(DurationLimit(kernelspec_s, f"kernelspec {kernelspec}'s max_duration"))
        return min(limits, key=lambda limit: limit.seconds, default=None)


def parse_limit(value: str, setting: str) -> int | None:
    """A ``max_duration`` setting in seconds (Chronos's grammar: 90, "30m", "8h"); empty: None."""
    if not value.strip():
        return None
    try:
        with chronos_boundary():
            return parse_duration(value)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{setting}: {exc}; leave it unset for no limit") from None


@dataclass(frozen=True)
class Holdings:
    """What one user holds now: GPU (in tenths) and partitions, kernels, and what waits."""

    user: str
    tenths: int = 0
    partitions: int = 0
    kernels: int = 0
    queued_tenths: int = 0
    queued: int = 0

    @classmethod
    def of(
        cls,
        user: str,
        partitions: Iterable[Partition],
        kernel_partitions: Iterable[Partition],
        queue: Iterable[Mapping[str, Any]],
    ) -> Holdings:
        """From the store's active ``partitions``, the gateway's kernels' partitions and its
        queue entries (``owner``, ``amount``)."""
        mine = [p for p in partitions if p.owner == user and p.is_active]
        held = {p.id for p in mine}
        waiting = [entry for entry in queue if entry.get("owner") == user]
        return cls(
            user,
            tenths=sum(p.amount.tenths for p in mine),
            partitions=len(mine),
            kernels=sum(1 for p in kernel_partitions if p.id in held),
            queued_tenths=sum(round(float(entry["amount"]) * 10) for entry in waiting),
            queued=len(waiting),
        )

    def describe_gpu(self) -> str:
        gpu, count = _gpu(self.tenths / 10), _count(self.partitions, "partition")
        held = f"{self.user} holds {gpu} GPU in {count}"
        if self.queued:
            held += f" and waits for {_gpu(self.queued_tenths / 10)} more in the queue"
        return held

    def describe_kernels(self) -> str:
        held = f"{self.user} holds {_count(self.kernels, 'kernel')}"
        if self.queued:
            held += f" and waits for {self.queued} more in the queue"
        return held


def check_request(
    quotas: Quotas,
    holdings: Holdings,
    amount: GpuAmount,
    duration_s: int,
    limit: DurationLimit | None,
) -> None:
    """A new partition of ``amount`` for ``duration_s`` seconds: `ResourceExhausted` (429) when
    it would take ``holdings``' user past a quota."""
    if limit is not None and duration_s > limit.seconds:
        raise ResourceExhausted(
            f"{limit.describe()}; this request asks {format_duration(duration_s)}. "
            f"Ask for at most {format_duration(limit.seconds)} (extend it later if need be)"
        )
    most = quotas.max_kernels_per_user
    if most is not None and holdings.kernels + holdings.queued + 1 > most:
        raise ResourceExhausted(
            f"max_kernels_per_user is {most}; {holdings.describe_kernels()}. Shut one down "
            "(%cumulus release, or DELETE /api/kernels/ID) before starting another"
        )
    cap = quotas.max_gpu_per_user
    if cap is not None:
        taken = holdings.tenths + holdings.queued_tenths
        if taken + amount.tenths > cap * 10 + 1e-9:
            left = max(0, math.floor(cap * 10 + 1e-9) - taken) / 10
            hint = f"ask for at most {_gpu(left)} GPU or " if left else ""
            raise ResourceExhausted(
                f"max_gpu_per_user is {_gpu(cap)} GPU; {holdings.describe_gpu()}; this request "
                f"asks {_gpu(amount.tenths / 10)}. To go on, {hint}release a partition "
                "(%cumulus release, or shut a kernel down)"
            )


def check_extension(partition: Partition, seconds: float, limit: DurationLimit | None) -> None:
    """Extending ``partition`` by ``seconds``: `Conflict` (409) when its whole life (creation to
    the new expiry) would pass ``limit``."""
    if limit is None:
        return
    lasts = partition.expires_at - partition.created_at
    if lasts + seconds <= limit.seconds + 1e-6:
        return
    left = max(0.0, limit.seconds - lasts)
    what = (
        f"it can be extended by {format_duration(left)} at most"
        if left >= 1
        else "it cannot be extended further: start a new kernel (or partition) to go on"
    )
    raise Conflict(
        f"Cannot extend partition {partition.id} by {format_duration(seconds)}: it would last "
        f"{format_duration(lasts + seconds)} in all and {limit.describe()}; {what}"
    )


def _gpu(value: float) -> str:
    """``1`` -> ``"1.0"``, ``0.25`` -> ``"0.25"``."""
    return f"{value:.1f}" if abs(value * 10 - round(value * 10)) < 1e-9 else f"{value:g}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")
