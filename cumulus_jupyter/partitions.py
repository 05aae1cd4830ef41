"""Partitions from the client's side: more time for one (``POST
/api/cumulus/partitions/{id}/extend``), as ``%cumulus extend 30m`` in the magic or in a Cumulus
GPU kernel cell, and ``cumulus extend ID 30m`` on the command line, ask for it."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

from cumulus_jupyter.connection import GatewayClient
from cumulus_jupyter.errors import InvalidArgument
from cumulus_jupyter.protocol.amounts import format_duration, parse_duration

USAGE = "Usage: %cumulus extend DURATION (90, 30m, 2h)"


async def extend(client: GatewayClient, partition_id: str, duration: str) -> dict[str, Any]:
    """Add ``duration`` (90, "30m", "2h") to the partition's expiry; the partition as the
    gateway now has it. `InvalidArgument` for a malformed duration before any request; the
    gateway's refusals (403, 404, 409, 410) as their `CumulusError`."""
    parse_duration(duration)
    path = f"/api/cumulus/partitions/{quote(partition_id, safe='')}/extend"
    partition: dict[str, Any] = await client.request("POST", path, json={"duration": duration})
    return partition


def duration_of(args: list[str]) -> str:
    """The DURATION of ``extend DURATION`` (`InvalidArgument` with the usage otherwise)."""
    if len(args) != 1:
        raise InvalidArgument(USAGE)
    parse_duration(args[0])
    return args[0]


def describe(partition: dict[str, Any], duration: str) -> str:
    """``Extended partition p-... by 30m: it now expires at 11:42:07 (in 1h12m)``."""
    expires = float(partition["expires_at"])
    left = format_duration(float(partition.get("seconds_left", expires - time.time())))
    return (
        f"Extended partition {partition['id']} by {format_duration(parse_duration(duration))}: "
        f"it now expires at {time.strftime('%H:%M:%S', time.localtime(expires))} (in {left})"
    )
