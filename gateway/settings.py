"""`Settings`: the values the gateway's parts are configured with, read once from the traitlets
configuration (``--CumulusKernelManager.launch_timeout``, ``--CumulusGateway.max_transfer_bytes``
...) by the app and handed down inside `gateway.services.Services`."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.quotas import Quotas
from gateway.scheduler import DEFAULT_HALF_LIFE_S, Policy


@dataclass
class Settings:
    launch_timeout: float = 60.0  # seconds a kernel request may wait for a partition
    disconnected_timeout: float = 900.0  # seconds a kernel may have no client; 0: no limit
    job_queue_timeout: float = 86400.0  # seconds a batch job may wait for one
    job_retention: float = 7 * 86400.0  # seconds a finished job is kept
    data_socket_dir: str = ""  # where kernels' Unix data sockets go; empty: TCP only
    max_transfer_bytes: int = 16 * 2**30  # one push or pull on the data path; 0: no limit
    tcp_nodelay: bool = True  # on the kernel WebSocket
    #: where this gateway listens, for kernels that call back (filled in by the app once its
    #: HTTP server has its port: runtimes read it at each launch)
    port: int = 8888
    base_url: str = "/"
    certfile: str = ""  # the gateway's certificate when it serves HTTPS (--certfile)
    quotas: Quotas = field(default_factory=Quotas)  # per-user limits (gateway.quotas)
    queue_policy: Policy = Policy.FAIR  # how the partition queue is served (gateway.scheduler)
    fair_share_half_life: float = DEFAULT_HALF_LIFE_S  # seconds; decays users' GPU-seconds
    fair_share_aging: float = 0.0  # seconds a request waits before it is aged; 0: 2 half-lives
    discovery_interval: float = 30.0  # seconds between device discoveries while running; 0: none
