"""``/api/cumulus/{health,devices,partitions,queue}``: the gateway's own state, read-only."""

from __future__ import annotations

import json

from tornado import web

from gateway.handlers.base import CumulusHandler


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
        free = self.services.broker.free()
        self.finish(json.dumps([d.to_json() | {"free": share} for d, share in free]))


class PartitionsHandler(CumulusHandler):
    @web.authenticated
    async def get(self) -> None:
        user = self.scoped_name()
        partitions = [
            p for p in self.services.broker.partitions() if user is None or p.owner == user
        ]
        self.finish(json.dumps([p.to_json() for p in partitions]))


class QueueHandler(CumulusHandler):
    @web.authenticated
    async def get(self) -> None:
        self.finish(json.dumps(self.services.broker.queue()))


default_handlers = [  # loaded by jupyter_server as an extra service
    (r"/api/cumulus/health", HealthHandler),
    (r"/api/cumulus/devices", DevicesHandler),
    (r"/api/cumulus/partitions", PartitionsHandler),
    (r"/api/cumulus/queue", QueueHandler),
]
