"""The gateway's HTTP and WebSocket endpoints, each module a service jupyter_server loads by
name (its ``default_handlers`` list, see `gateway.app`):

- `gateway.handlers.base`: `CumulusHandler`, the one base of them all, whose ``write_error``
  turns any `CumulusError` (and any Chronos error) into the JSON error with its status;
- `gateway.handlers.kernels`: ``/api/kernels`` and its channels WebSocket, in front of
  jupyter_server's own;
- `gateway.handlers.cumulus`: ``/api/cumulus/{health,devices,partitions,queue}``;
- `gateway.handlers.jobs`: ``/api/cumulus/jobs``;
- `gateway.handlers.checkpoints`: ``/api/cumulus/checkpoints``, an owner's checkpoints on L2;
- `gateway.handlers.data`: ``/api/cumulus/kernels/{id}/data/{transfer}``, the data path;
- `gateway.handlers.callback`: ``/api/cumulus/kernels/{id}/callback``, kernels in containers;
- `gateway.handlers.server`: jupyter_server's ``/api``, ``/api/kernelspecs`` and ``/metrics``,
  behind the token and the one ``write_error``.
"""

SERVICES = [
    "gateway.handlers.kernels",
    "gateway.handlers.cumulus",
    "gateway.handlers.data",
    "gateway.handlers.callback",
    "gateway.handlers.jobs",
    "gateway.handlers.checkpoints",
    "gateway.handlers.server",
]
