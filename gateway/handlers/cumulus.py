"""``/api/cumulus/{health,devices,partitions,queue}``: the gateway's own state, read-only; and
``POST /api/cumulus/partitions/{id}/extend``, the one write: more time for a partition.

An extension (``{"duration": "30m"}``, Chronos's duration grammar) is for the partition's owner
or the operator (another user's: 403; unknown: 404; ended: 410 with how it ended). It must keep
the partition's whole life within ``max_duration``, the gateway's and its kernel's kernelspec's
(`gateway.quotas`; the operator's token is exempt), and must not delay any queued request's
reserved start (the broker's check): else 409 saying why. The answer is the partition, as
``GET /api/cumulus/partitions`` lists it; the expiry supervisor warns again before the new end.
"""

from __future__ import annotations

import json
import time
from typing import Any

from tornado import web

from chronos import Partition, format_duration, parse_duration
from cumulus_jupyter.errors import InvalidArgument, PartitionExpired, PermissionDenied, TooLarge
from gateway.errors import chronos_boundary
from gateway.handlers.base import CumulusHandler
from gateway.provisioner import CumulusProvisioner
from gateway.quotas import DurationLimit, check_extension

MAX_BODY_BYTES = 4096


class HealthHandler(CumulusHandler):
    @web.authenticated
    async def get(self) -> None:
        description = self.services.describe()
        kernels = len(self.kernels.list_kernel_ids())
        self.finish(
            {
                "status": "ok",
                "runtime": description["runtime"],
                "kernels": kernels,
                **{k: v for k, v in description.items() if k != "runtime"},
            }
        )


class DevicesHandler(CumulusHandler):
    @web.authenticated
    async def get(self) -> None:
        broker = self.services.broker
        self.finish(
            json.dumps(
                [
                    d.to_json() | {"free": share, "online": broker.is_online(d.index)}
                    for d, share in broker.free()
                ]
            )
        )


class PartitionsHandler(CumulusHandler):
    @web.authenticated
    async def get(self) -> None:
        user = self.scoped_name()
        partitions = [
            p for p in self.services.broker.partitions() if user is None or p.owner == user
        ]
        self.finish(json.dumps([p.to_json() for p in partitions]))


class PartitionExtendHandler(CumulusHandler):
    @web.authenticated
    async def post(self, partition_id: str) -> None:
        if len(self.request.body) > MAX_BODY_BYTES:
            raise TooLarge(f"request body over {MAX_BODY_BYTES} bytes")
        broker, registry = self.services.broker, self.services.registry
        partition = broker.get(partition_id)
        user = self.scoped_name()
        if user is not None and partition.owner != user:  # before the body says anything back
            raise PermissionDenied(f"Partition {partition.id} belongs to another user")
        seconds = extension_seconds(self.json_object())
        if not partition.is_active:
            raise PartitionExpired(ended(partition))
        kernel_id = next((k for k, p in registry.partitions.items() if p.id == partition.id), None)
        if user is not None:  # the operator's token is exempt from quotas
            check_extension(partition, seconds, self.duration_limit(kernel_id))
        extended = broker.extend(partition.id, seconds)
        if kernel_id is not None and kernel_id in registry.partitions:
            registry.partitions[kernel_id] = extended  # its model shows the new expiry at once
        self.log.info(
            "partition %s extended by %s by %s; it now expires in %s",
            extended.id, format_duration(seconds), user or "the operator",
            format_duration(extended.seconds_left()),
            extra={"event": "partition_extended", "partition_id": extended.id,
                   "kernel_id": kernel_id, "seconds": seconds},
        )  # fmt: skip
        self.finish(json.dumps(extended.to_json()))

    def duration_limit(self, kernel_id: str | None) -> DurationLimit | None:
        """The partition's longest life: its kernel's (kernelspec and gateway), else the
        gateway's."""
        kernels = self.kernels
        km = kernels.get_kernel(kernel_id) if kernel_id and kernel_id in kernels else None
        provisioner = km.provisioner if km is not None else None
        if isinstance(provisioner, CumulusProvisioner):
            return provisioner.duration_limit()
        return self.services.settings.quotas.duration_limit()


def extension_seconds(body: dict[str, Any]) -> int:
    """The ``duration`` of an extend request, in seconds (`InvalidArgument` naming the rule)."""
    if "duration" not in body:
        raise InvalidArgument('Say how long to extend by: {"duration": "30m"} (90, "30m", "2h")')
    value = body["duration"]
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise InvalidArgument(
            'duration must be a string like "30m" or a number of seconds like 1800, '
            f"not {json.dumps(value)[:40]}"
        )
    with chronos_boundary():
        return parse_duration(value)


def ended(partition: Partition) -> str:
    """Why an ended partition cannot be extended, and what to do instead."""
    when = time.strftime("%H:%M:%S", time.localtime(partition.ended_at or partition.expires_at))
    how = "expired" if partition.state.value == "expired" else "was released"
    why = f" ({partition.end_reason})" if partition.end_reason not in (None, "", "expired") else ""
    return (
        f"Partition {partition.id} {how} at {when}{why}; an ended partition cannot be "
        "extended. Start a new kernel (or partition) to go on"
    )


class QueueHandler(CumulusHandler):
    @web.authenticated
    async def get(self) -> None:
        self.finish(json.dumps(self.services.broker.queue()))


default_handlers = [  # loaded by jupyter_server as an extra service
    (r"/api/cumulus/health", HealthHandler),
    (r"/api/cumulus/devices", DevicesHandler),
    (r"/api/cumulus/partitions", PartitionsHandler),
    (r"/api/cumulus/partitions/(?P<partition_id>[^/]+)/extend", PartitionExtendHandler),
    (r"/api/cumulus/queue", QueueHandler),
]
