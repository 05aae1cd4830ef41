"""`CumulusKernelManager`: jupyter_server's mapping kernel manager, for kernels in partitions.

Its traitlets are the gateway's kernel settings (``--runtime``, ``--state``,
``--CumulusKernelManager.launch_timeout`` ...), which the app reads into `Settings` to build the
`Services`; it is handed those services (`services`) and gives them to each kernel's own manager
(`gateway.kernel.CumulusServerKernelManager`) it creates, started or adopted after a restart.
On top of jupyter_server's it records kernels durably (`gateway.records`), releases the
partition of a kernel the restarter gave up on, and adds the ``cumulus`` object to kernel models.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

from jupyter_client.provisioning.factory import KernelProvisionerFactory
from jupyter_server._tz import utcnow
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
from traitlets import Enum, Float, Int, Unicode, default

from cumulus_jupyter.errors import Internal, InvalidArgument
from gateway import activity, metrics
from gateway.kernel import CumulusServerKernelManager
from gateway.kernelspecs import BUILTIN_NAME
from gateway.provisioner import CumulusProvisioner, remove_socket_links
from gateway.quotas import Quotas
from gateway.records import KernelRecord
from gateway.registry import cumulus_model
from gateway.scheduler import DEFAULT_HALF_LIFE_S, Policy
from gateway.services import Services
from gateway.settings import Settings


def _assumed_kernel_info() -> concurrent.futures.Future[dict[str, Any]]:
    """What jupyter_server's WebSocket waits for before a client's first connection to an
    adopted kernel. A kernel busy with a cell answers ``kernel_info`` on its shell only once
    the cell ends, so a client would wait out ``kernel_info_timeout`` (60 s; clients give up
    sooner) and then get jupyter_server's assumption: the current protocol. Our kernels speak
    it (an ipykernel of the kernel environment), so that answer is given at once."""
    info: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
    info.set_result({})
    return info


class CumulusKernelManager(AsyncMappingKernelManager):  # type: ignore[misc]
    """Kernels in Chronos partitions, started through `CumulusProvisioner`."""

    runtime_name = Unicode(
        "local",
        config=True,
        help="Where kernels run: local (processes on this host), docker (a job container per "
        "kernel on this host's engine) or swarm (a Docker Swarm service per kernel).",
    )
    state_path = Unicode(
        "", config=True, help="Chronos state file (default: $CHRONOS_STATE or the user data dir)."
    )
    data_socket_dir = Unicode(
        config=True,
        help="Directory for the kernels' Unix data sockets, through which a client's transfer "
        "connection is handed to a kernel on this host; empty: relay transfers over TCP.",
    )
    launch_timeout = Float(
        60.0, config=True, help="Seconds a kernel request may wait in the queue for a partition."
    )
    disconnected_timeout = Float(
        900.0,
        config=True,
        help="Seconds a kernel may have no client connected (no WebSocket on its channels) "
        "before it is stopped and its partition released; 0 turns this off. Batch jobs' "
        "kernels are exempt.",
    )

    job_queue_timeout = Float(
        86400.0, config=True, help="Seconds a batch job may wait in the queue for a partition."
    )
    job_retention = Float(
        7 * 86400.0,
        config=True,
        help="Seconds a finished job's state and log are kept (cumulus get/logs) after it ends.",
    )

    max_gpu_per_user = Float(
        None,
        allow_none=True,
        config=True,
        help="GPU one user may hold at once, summed over their partitions and their requests "
        "waiting in the queue (e.g. 1 or 2.5); unset: no limit. Requests made with the "
        "operator token are exempt from every quota.",
    )
    max_kernels_per_user = Int(
        None,
        allow_none=True,
        config=True,
        help="Kernels (batch jobs' included) one user may hold at once, queued ones counted; "
        "unset: no limit.",
    )
    max_duration = Unicode(
        "",
        config=True,
        help="Longest a partition may last, from its start to its expiry, extensions included "
        '(90, "30m", "8h"); empty: 24 h, Chronos\'s longest. A kernelspec may set a shorter '
        "one (max_duration in its provisioner config).",
    )

    queue_policy = Enum(
        [p.value for p in Policy],
        Policy.FAIR.value,
        config=True,
        help="How the partition queue is served: fifo (arrival order; the head blocks the "
        "rest), backfill (EASY backfilling: a request behind the head starts now if it fits "
        "and the head still starts by its reservation, known from the partitions' expiries) "
        "or fair (backfill, the queue ordered by each user's recent GPU use).",
    )
    fair_share_half_life = Float(
        DEFAULT_HALF_LIFE_S,
        config=True,
        help="Seconds after which a user's past GPU use counts half, for queue_policy=fair.",
    )
    fair_share_aging = Float(
        0.0,
        config=True,
        help="Longest a request waits under queue_policy=fair before it is aged (it is aged "
        "sooner once it has waited four times its duration): aged requests go ahead of all "
        "others, in the order they were aged, which bounds every wait; 0: twice "
        "fair_share_half_life.",
    )

    _services: Services | None = None
    _starting: dict[str, Any]  # kernel id -> its manager, while its start is under way
    _abandoned: set[asyncio.Task[None]]  # clean-ups of starts whose requester left

    @default("data_socket_dir")
    def _default_data_socket_dir(self) -> str:
        return os.path.join(tempfile.gettempdir(), f"cumulus-data-{os.getuid()}")

    @default("kernel_manager_class")
    def _default_kernel_manager_class(self) -> str:
        return f"{CumulusServerKernelManager.__module__}.{CumulusServerKernelManager.__name__}"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.default_kernel_name = BUILTIN_NAME
        self._starting, self._abandoned = {}, set()

    def settings(self, **app: Any) -> Settings:
        """The `Settings` these traitlets (and the app's, ``app``) say; `InvalidArgument`
        for a value that cannot be meant."""
        if self.disconnected_timeout < 0:
            raise InvalidArgument(
                "--CumulusKernelManager.disconnected_timeout must be seconds (0 turns it off), "
                f"not {self.disconnected_timeout:g}"
            )
        if not (math.isfinite(self.fair_share_half_life) and self.fair_share_half_life > 0):
            raise InvalidArgument(
                "--CumulusKernelManager.fair_share_half_life must be a positive number of "
                f"seconds (e.g. 3600), not {self.fair_share_half_life:g}"
            )
        if not (math.isfinite(self.fair_share_aging) and self.fair_share_aging >= 0):
            raise InvalidArgument(
                "--CumulusKernelManager.fair_share_aging must be seconds (e.g. 7200; 0: twice "
                f"the half-life), not {self.fair_share_aging:g}"
            )
        return Settings(
            launch_timeout=self.launch_timeout,
            disconnected_timeout=self.disconnected_timeout,
            job_queue_timeout=self.job_queue_timeout,
            job_retention=self.job_retention,
            data_socket_dir=self.data_socket_dir,
            quotas=Quotas.configured(
                self.max_gpu_per_user, self.max_kernels_per_user, self.max_duration
            ),
            queue_policy=Policy(self.queue_policy),
            fair_share_half_life=self.fair_share_half_life,
            fair_share_aging=self.fair_share_aging,
            **app,
        )

    @property
    def services(self) -> Services:
        if self._services is None:
            raise Internal("the kernel manager was not given the gateway's services")
        return self._services

    @services.setter
    def services(self, services: Services) -> None:
        self._services = services

    def _create_kernel_manager_factory(self) -> Callable[..., Any]:
        """Each kernel's manager gets the services (its provisioner takes them from there)."""
        create = super()._create_kernel_manager_factory()

        def with_services(*args: Any, **kwargs: Any) -> Any:
            return create(*args, services=self.services, **kwargs)

        return with_services

    def start_watching_activity(self, kernel_id: str) -> None:
        """jupyter_server's activity watch, reading only the headers (`gateway.activity`)."""
        activity.watch(self, kernel_id)

    async def start_kernel(  # type: ignore[override]
        self, *, kernel_id: str | None = None, path: Any = None, **kwargs: Any
    ) -> str:
        """Start a kernel; when its launch fails (no partition, bad input) nothing of it stays
        behind, so a later shutdown of all kernels does not wait on it.

        When the caller is cancelled (its HTTP client left, its job was cancelled) no kernel
        and no partition outlive the request: a start still waiting for its partition leaves
        the queue at once; one past it is let finish (a process may be coming up in a thread)
        and is then shut down. The start runs in a task of its own for that."""
        kernel_id = kernel_id or str(uuid.uuid4())
        start = asyncio.ensure_future(self._start_and_save(kernel_id, path, **kwargs))
        try:
            return await asyncio.shield(start)
        except asyncio.CancelledError:
            await self._abandon(kernel_id, start)
            raise

    async def _start_and_save(self, kernel_id: str, path: Any, **kwargs: Any) -> str:
        try:
            started: str = await super().start_kernel(kernel_id=kernel_id, path=path, **kwargs)
            await self._save(started)
        except BaseException as exc:
            metrics.assignment(exc)
            await self._scrap(kernel_id)
            raise
        finally:
            self._starting.pop(kernel_id, None)
        metrics.assignment(None)
        return started

    def pre_start_kernel(self, kernel_name: str | None, kwargs: Any) -> tuple[Any, str, str]:
        """jupyter_client's, remembering the kernel's manager until its start ends."""
        km, name, kernel_id = super().pre_start_kernel(kernel_name, kwargs)
        self._starting[kernel_id] = km
        return km, name, kernel_id

    async def _abandon(self, kernel_id: str, start: asyncio.Future[str]) -> None:
        """The requester of a start left; waits (through any further cancellation) until
        nothing of the kernel is left."""
        km = self._starting.get(kernel_id)
        provisioner = km.provisioner if km is not None else None
        if not isinstance(provisioner, CumulusProvisioner) or provisioner.partition is None:
            start.cancel()  # still queued: the broker drops the wait (and an unclaimed partition)
        cleanup = asyncio.ensure_future(self._end_abandoned(kernel_id, start))
        self._abandoned.add(cleanup)
        cleanup.add_done_callback(self._abandoned.discard)
        await asyncio.shield(cleanup)

    async def _end_abandoned(self, kernel_id: str, start: asyncio.Future[str]) -> None:
        with contextlib.suppress(BaseException):
            await start
        if start.cancelled() or start.exception() is not None:
            self.log.info("Kernel %s: its requester left before it started", kernel_id)
            return
        self.log.info("Kernel %s: its requester left while it started; stopping it", kernel_id)
        try:
            await self.shutdown_kernel(kernel_id, now=True)
        except Exception:
            self.log.exception("Could not stop kernel %s, whose requester left", kernel_id)

    async def _scrap(self, kernel_id: str) -> None:
        """A start that failed or was cancelled: forget the kernel; a process it left is
        killed and its partition released (the provisioner releases on its own failures)."""
        self._pending_kernels.pop(kernel_id, None)
        self._kernel_connections.pop(kernel_id, None)
        km = self._kernels.pop(kernel_id, None) or self._starting.get(kernel_id)
        if km is not None and km.has_kernel:
            try:
                await asyncio.shield(km.shutdown_kernel(now=True))
            except Exception:
                self.log.exception("Could not stop kernel %s after its failed start", kernel_id)
        self.services.records.delete(kernel_id)

    async def restart_kernel(self, kernel_id: str, now: bool = False) -> None:  # type: ignore[override]
        await super().restart_kernel(kernel_id, now=now)
        await self._save(kernel_id)

    async def shutdown_kernel(  # type: ignore[override]
        self, kernel_id: str, now: bool = False, restart: bool = False
    ) -> None:
        """Shut a kernel down; one the restarter is bringing back (its process died) is let
        finish restarting first: jupyter_client reads ``ready.exception()`` and fails with
        ``InvalidStateError`` (a 500, partition kept) on a restart still under way."""
        km = self._kernels.get(kernel_id)
        deadline = time.monotonic() + self.services.settings.launch_timeout
        # a restart is a shutdown then a start, each with its own pending `ready`
        while km is not None and not km.ready.done():
            try:
                await asyncio.wait_for(asyncio.shield(km.ready), deadline - time.monotonic())
            except Exception:  # a failed restart is handled below as usual
                if not km.ready.done():
                    break  # still pending at the launch timeout: jupyter_client decides
        await super().shutdown_kernel(kernel_id, now=now, restart=restart)
        if not restart:
            self.services.records.delete(kernel_id)

    def note_stop_reason(self, kernel_id: str, reason: str) -> None:
        """Why the gateway is stopping ``kernel_id``: its partition is released with it."""
        provisioner = self._provisioner(kernel_id)
        if provisioner is not None:
            provisioner.stop_reason = reason

    def _provisioner(self, kernel_id: str) -> CumulusProvisioner | None:
        km = self._kernels.get(kernel_id)
        provisioner = km.provisioner if km is not None else None
        return provisioner if isinstance(provisioner, CumulusProvisioner) else None

    def _handle_kernel_died(self, kernel_id: str) -> None:
        """The restarter gave up on a kernel: its partition must not outlive it."""
        services = self.services
        partition = services.registry.partitions.pop(kernel_id, None)
        provisioner = self._provisioner(kernel_id)
        outside = provisioner.ended_outside if provisioner is not None else None
        if partition is not None:
            services.broker.release(partition.id, outside or "kernel died")
            what = (
                f"The kernel ended: {outside}"
                if outside
                else ("The kernel died and could not be restarted")
            )
            services.registry.mark_ended(
                kernel_id,
                f"{what}; partition {partition.id} was released. Start a new kernel.",
                partition.owner,
            )
        handle = provisioner.handle if provisioner is not None else None
        if handle is not None:  # its container or service is not left behind
            task = asyncio.ensure_future(asyncio.to_thread(handle.remove))
            task.add_done_callback(
                lambda t: (
                    t.exception()
                    and self.log.warning(
                        "could not remove kernel %s's container: %s", kernel_id, t.exception()
                    )
                )
            )
        services.records.delete(kernel_id)
        super()._handle_kernel_died(kernel_id)

    async def _save(self, kernel_id: str) -> None:
        km = self.get_kernel(kernel_id)
        assert km.provisioner is not None
        info = await km.provisioner.get_provisioner_info()
        self.services.records.save(kernel_id, km.kernel_name, dict(km.get_connection_info()), info)

    async def adopt_kernels(self) -> None:
        """After a restart: take back every recorded kernel whose process still runs; release
        the partitions of those that died meanwhile."""
        for record in self.services.records.all():
            try:
                adopted = await self._adopt(record)
            except Exception:
                self.log.exception("Could not adopt kernel %s", record.kernel_id)
                adopted = False
            if not adopted:
                self._forget(record)

    async def _adopt(self, record: KernelRecord) -> bool:
        km = self.kernel_manager_factory(
            connection_file=os.path.join(self.connection_dir, f"kernel-{record.kernel_id}.json"),
            parent=self,
            log=self.log,
            kernel_name=record.kernel_name,
            kernel_spec_manager=self.kernel_spec_manager,
        )
        km.load_connection_info(record.connection_info)
        km.kernel_id = record.kernel_id
        provisioner = KernelProvisionerFactory.instance(parent=self).create_provisioner_instance(
            record.kernel_id, km.kernel_spec, parent=km
        )
        km.provisioner = provisioner
        await provisioner.load_provisioner_info(record.provisioner_info)
        if not isinstance(provisioner, CumulusProvisioner):
            return False
        partition = provisioner.partition
        if provisioner.process is None or partition is None or not partition.is_active:
            return False
        provisioner.connection_info = km.get_connection_info()
        km.ready.set_result(None)
        km._kernel_info_future = _assumed_kernel_info()
        # as after a start of jupyter_client's: its shutdown then waits on a fresh `ready`
        # (on this done one it fails, and the stopped kernel would stay listed)
        km._attempted_start = True
        km._connect_control_socket()
        km.start_restarter()
        self._kernels[record.kernel_id] = km
        self.services.registry.partitions[record.kernel_id] = partition
        self._kernel_connections[record.kernel_id] = 0
        km.execution_state = "idle"
        km.reason = ""
        km.last_activity = utcnow()
        await self._finish_kernel_start(record.kernel_id)
        self.services.registry.adoptions.mark(record.kernel_id)  # its clients are told
        self.log.info("Adopted kernel %s (partition %s)", record.kernel_id, partition.id)
        return True

    def _forget(self, record: KernelRecord) -> None:
        services = self.services
        partition_id = record.provisioner_info.get("partition_id")
        if partition_id:
            services.broker.release(partition_id, "kernel gone while the gateway was down")
        process = services.runtime.adopt(record.provisioner_info.get("runtime") or {})
        if process is not None:  # its partition ended: the kernel must not run on
            process.kill()
            process.remove()
        else:
            services.runtime.discard(record.provisioner_info.get("runtime") or {})
        remove_socket_links(record.connection_info, record.provisioner_info.get("data_socket"))
        services.records.delete(record.kernel_id)
        self.log.info("Kernel %s did not survive; its partition was released", record.kernel_id)

    def kernel_model(self, kernel_id: str) -> dict[str, Any]:
        model: dict[str, Any] = super().kernel_model(kernel_id)
        partition = self.services.registry.partitions.get(kernel_id)
        model["cumulus"] = cumulus_model(partition) if partition else None
        return model
