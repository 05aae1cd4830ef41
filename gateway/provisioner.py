"""`CumulusProvisioner`: a jupyter_client kernel provisioner that runs each kernel in a Chronos
partition, on whichever runtime the gateway is configured with.

Called by jupyter_client's `KernelManager`:

- `pre_launch` (from ``KernelManager.pre_start_kernel``) takes the partition: the amount and
  duration come from the request's ``KERNEL_GPU`` / ``KERNEL_DURATION``, else the kernelspec's
  ``gpu`` / ``duration`` config; the user's quotas are checked (`gateway.quotas`: the
  gateway's, and the kernelspec's ``max_duration``; a request made with the operator token is
  exempt, as the handler's ``quota_exempt=True`` keyword says); it may wait in the broker's
  queue. It then builds the kernel's environment: the confinement variables of
  `chronos.enforce` over the request's ``KERNEL_*`` variables. On restart the partition is kept.
- `launch_kernel` asks the runtime to start the process and confines it to the partition.
- `poll` / `wait` / `send_signal` / `kill` / `terminate` act on the runtime's handle (the
  inherited `LocalProvisioner` logic drives any handle with ``Popen``'s interface).
- `cleanup` releases the partition, unless the kernel is restarting.
- `get_provisioner_info` / `load_provisioner_info` let a restarted gateway adopt the kernel.

What it needs of the gateway (broker, runtime, registry, settings) is the `Services` its
kernel's manager (`gateway.kernel.CumulusServerKernelManager`, its ``parent``) carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import shutil
import signal
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from jupyter_client.connect import KernelConnectionInfo, port_names
from jupyter_client.provisioning.local_provisioner import LocalProvisioner
from traitlets import Unicode

from chronos import Partition, confinement_env
from cumulus_jupyter.errors import Internal, InvalidArgument, PartitionExpired, Unavailable
from cumulus_jupyter.protocol import callback as callback_protocol
from cumulus_jupyter.protocol import env as names
from gateway.broker import PartitionRequest
from gateway.kernel import CumulusServerKernelManager
from gateway.quotas import EXEMPT, DurationLimit, Holdings, check_request, parse_limit
from gateway.runtimes import KernelProcess, Launch
from gateway.services import Services

# The gateway's own secrets never reach a kernel.
_SECRET_ENV = re.compile(r"TOKEN|SECRET|PASSWORD|^JPY_|^JUPYTER_|^CHRONOS_STATE$", re.IGNORECASE)
_FALSE = {"0", "false", "no", "off"}


class CumulusProvisioner(LocalProvisioner):
    """Kernels in Chronos partitions, started by the gateway's runtime."""

    gpu = Unicode("0.5", config=True, help="GPU amount when the request names none.")
    duration = Unicode("1h", config=True, help="Partition duration when the request names none.")
    max_duration = Unicode(
        "",
        config=True,
        help="Longest a partition of this kernelspec may last, extensions included (its "
        "provisioner config's max_duration); empty: only --CumulusKernelManager.max_duration.",
    )

    partition: Partition | None = None
    runtime_info: dict[str, Any] | None = None
    data_port: int | None = None  # the kernel's bulk data port (cumulus_jupyter.protocol.dataport)
    data_socket: str | None = None  # its Unix socket, where the client's connection is handed
    handle: KernelProcess | None = None  # the runtime's handle, kept after the process ended
    ended_outside: str | None = None  # why the kernel was ended by someone else, if it was
    stop_reason: str | None = None  # why the gateway stops it, kept by its partition's release

    @property
    def services(self) -> Services:
        """The gateway's services, from the kernel's manager that created this provisioner."""
        if not isinstance(self.parent, CumulusServerKernelManager):
            raise Internal(
                f"{type(self).__name__} runs only under the gateway's kernel managers "
                f"(CumulusServerKernelManager), not {type(self.parent).__name__}"
            )
        return self.parent.require_services()

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        request_env: dict[str, str] = dict(kwargs.pop("env", None) or {})
        exempt = bool(kwargs.pop(EXEMPT, False))
        services = self.services
        if self.partition is None:
            self.partition = await self._acquire(request_env, exempt)
        elif not services.broker.get(self.partition.id).is_active:
            raise PartitionExpired(
                f"Partition {self.partition.id} has ended; start a new kernel for a new one"
            )
        try:
            services.registry.partitions[self.kernel_id] = self.partition
            kwargs["env"] = self._kernel_env(request_env, self.partition)
            self._use_ipc()
            if not services.runtime.on_gateway_host:
                # the last container's address; jupyter_client writes its placeholder
                # connection file only for an address of this host (the kernel reports its own)
                cast(Any, self.parent).ip = "127.0.0.1"
            return await super().pre_launch(**kwargs)  # type: ignore[no-any-return]
        except BaseException:
            await self._release("launch failed")
            raise

    async def _acquire(self, env: dict[str, str], exempt: bool = False) -> Partition:
        services = self.services
        services.discovery.check()  # no new partition while the devices cannot be vouched for
        request = PartitionRequest.parse(
            env.get(names.KERNEL_GPU) or self.gpu,
            env.get(names.KERNEL_DURATION) or self.duration,
            owner=env.get(names.KERNEL_USERNAME) or "anonymous",
            devices=env.get(names.KERNEL_GPU_DEVICES),
        )
        request.tag = request_tag(env.get(names.KERNEL_REQUEST_TAG))
        if not exempt:  # checked, then queued or served, with no await between
            broker = services.broker
            holdings = Holdings.of(
                request.owner, broker.partitions(), services.registry.partitions.values(),
                broker.queue(),
            )  # fmt: skip
            quotas = services.settings.quotas
            check_request(
                quotas, holdings, request.amount, request.duration_s, self.duration_limit()
            )
        timeout = launch_timeout(
            env.get(names.KERNEL_LAUNCH_TIMEOUT), services.settings.launch_timeout
        )
        wait = env.get(names.KERNEL_WAIT, "1").strip().lower() not in _FALSE
        return await services.broker.acquire(request, wait=wait, timeout=timeout)

    def duration_limit(self) -> DurationLimit | None:
        """The longest this kernel's partition may last: the gateway's ``max_duration`` or its
        kernelspec's, the tighter; called at the request and by the extend handler."""
        name = str(getattr(self.parent, "kernel_name", "") or "?")
        try:
            own = parse_limit(self.max_duration, f"kernelspec {name}'s max_duration")
        except InvalidArgument as exc:  # the operator's kernelspec, not the user's request
            raise Internal(f"{exc}: fix the kernelspec's provisioner config") from None
        return self.services.settings.quotas.duration_limit(name, own)

    def _kernel_env(self, request_env: dict[str, str], partition: Partition) -> dict[str, str]:
        services = self.services
        on_host = services.runtime.on_gateway_host
        base = {k: v for k, v in os.environ.items() if on_host and not _SECRET_ENV.search(k)}
        # L2's credentials stay here: a kernel reaches its owner's prefix through the gateway
        for name in names.CHECKPOINT_ENV:
            base.pop(name, None)
        base |= self.kernel_spec.env or {}
        base |= request_env
        base |= confinement_env(partition, services.broker.devices)
        base[names.KERNEL_ID] = self.kernel_id
        host = self._host()
        base |= services.checkpoints.kernel_env(
            partition.owner, self._gateway_url(host), self._own_certificate()
        )
        if self.data_port is None:  # kept across restarts, like the partition
            self.data_port = _free_port(host)
        base[names.DATA_HOST] = host
        base[names.DATA_PORT] = str(self.data_port)
        socket_dir = services.settings.data_socket_dir
        if self.data_socket is None and socket_dir and on_host:
            self.data_socket = _socket_path(socket_dir, self.kernel_id)
        if self.data_socket:
            base[names.DATA_SOCKET] = self.data_socket
        return base

    def _host(self) -> str:
        """The address the kernel's TCP ports (data port, the way to the gateway) are on."""
        km = cast(Any, self.parent)
        if getattr(km, "transport", "tcp") == "ipc":  # its ``ip`` is its sockets' path
            return "127.0.0.1"
        return str(getattr(km, "ip", "") or "127.0.0.1")

    def _use_ipc(self) -> None:
        """A sandboxed kernel's ZMQ sockets become Unix sockets beside its data socket, in the
        directory only it (and the gateway, through links) sees, instead of loopback ports any
        process on the host could subscribe to. Kept over restarts, like its data socket."""
        km = cast(Any, self.parent)
        if not self.services.runtime.ipc or not self.data_socket or km.transport == "ipc":
            return
        prefix = self.data_socket.removesuffix(".sock")
        if len(prefix.encode()) + 7 > _UNIX_PATH_MAX:  # "-" and a port number must fit
            return
        km.transport, km.ip, km.cache_ports = "ipc", prefix, False

    def _gateway_url(self, host: str) -> str:
        """The gateway as this kernel reaches it (a container: as its runtime says)."""
        runtime_url = getattr(self.services.runtime, "base_url", None)  # a container runtime's
        if callable(runtime_url):
            return str(runtime_url())
        settings = self.services.settings
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        scheme = "https" if settings.certfile else "http"
        return f"{scheme}://{host}:{settings.port}{(settings.base_url or '/').rstrip('/')}"

    def _own_certificate(self) -> str:
        """The gateway's own certificate when it serves HTTPS (kernels pin it), else ''."""
        certfile = self.services.settings.certfile
        if not certfile:
            return ""
        try:
            return callback_protocol.leaf_certificate(Path(certfile).read_text())
        except OSError as exc:
            raise Unavailable(f"Cannot read the gateway's certificate: {exc}") from exc

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        assert self.partition is not None
        services = self.services
        runtime = services.runtime
        devices = services.broker.devices
        launch = Launch(
            cmd, kwargs["env"], kwargs.get("cwd"), self.kernel_id,
            [devices[i] for i in self.partition.devices],
        )  # fmt: skip
        try:
            started = await runtime.launch(launch)
            handle = started.process
            self.handle = handle
            self.process = cast(Any, handle)  # Popen's interface, as LocalProvisioner drives it
            self.pid = handle.pid
            # a local kernel leads its own process group; a container is signalled by its engine
            self.pgid = handle.pid if runtime.on_gateway_host else None
            self.runtime_info = handle.info()
            if started.connection_info is not None:
                self._use_reported(started.connection_info, started.data_port)
            if handle.pid > 0:
                services.broker.attach(self.partition.id, handle.pid)
            self.log.info(
                "kernel %s started in partition %s (%s GPU on %s) by the %s runtime, pid %d",
                self.kernel_id, self.partition.id, self.partition.amount,
                ",".join(self.partition.device_ids), runtime.name, handle.pid,
                extra={"event": "kernel_started", "kernel_id": self.kernel_id,
                       "partition_id": self.partition.id, "pid": handle.pid},
            )  # fmt: skip
        except BaseException:
            await self._release("launch failed")
            raise
        return self.connection_info

    def _use_reported(self, info: dict[str, Any], data_port: int | None) -> None:
        """The kernel chose its own ports and key (a container's callback): they replace the
        placeholder connection file jupyter_client wrote before the launch."""
        km = cast(Any, self.parent)
        km.cleanup_connection_file()
        for name in port_names:
            setattr(km, name, 0)  # jupyter_client keeps a port that is not 0
        reported = dict(info)
        reported["key"] = str(info["key"]).encode()
        self.connection_info = cast(KernelConnectionInfo, reported)
        self.data_port = data_port

    async def send_signal(self, signum: int) -> None:
        """An interrupt for a kernel no signal can reach (a Swarm task on another host) goes as
        an ``interrupt_request`` on its control channel, which ipykernel handles the same way."""
        if signum == signal.SIGINT and not self.services.runtime.signals:
            km = cast(Any, self.parent)
            km._connect_control_socket()
            km.session.send(km._control_socket, km.session.msg("interrupt_request", content={}))
            return
        await super().send_signal(signum)

    async def poll(self) -> int | None:
        """The kernel's exit code once it ended. A container stopped or removed from outside the
        gateway (``docker kill``, ``docker rm``) is final: no restart; the kernel is reported
        dead with that reason, and its partition is released."""
        code: int | None = await super().poll()
        why = getattr(self.handle, "ended_outside", None)
        if code is not None and why and self.ended_outside is None:
            self.ended_outside = why
            restarter = getattr(self.parent, "_restarter", None)
            if restarter is not None:
                restarter.restart_limit = 0  # the restarter reports "dead" at once
            self.log.warning("kernel %s ended: %s", self.kernel_id, why)
        return code

    async def cleanup(self, restart: bool = False) -> None:
        await super().cleanup(restart=restart)
        if self.handle is not None:  # a container or service is removed, restart or not
            await asyncio.to_thread(self.handle.remove)
            self.handle = None
        if not restart:
            await self._release(self.stop_reason or "kernel shut down")
            if self.data_socket:  # the kernel exits without closing its data port
                info = cast(Any, self.parent).get_connection_info()
                remove_socket_links(info, self.data_socket)
            # files the Cumulus GPU kernel synced for this kernel: scratch, gone with it
            shutil.rmtree(names.workdir(self.kernel_id), ignore_errors=True)

    async def _release(self, reason: str) -> None:
        if self.partition is not None:
            services = self.services
            services.broker.release(self.partition.id, reason)
            services.registry.partitions.pop(self.kernel_id, None)
            self.partition = None

    async def get_provisioner_info(self) -> dict[str, Any]:
        info: dict[str, Any] = await super().get_provisioner_info()
        info["partition_id"] = self.partition.id if self.partition else None
        info["runtime"] = self.runtime_info
        info["data_port"] = self.data_port
        info["data_socket"] = self.data_socket
        return info

    async def load_provisioner_info(self, provisioner_info: dict[str, Any]) -> None:
        await super().load_provisioner_info(provisioner_info)
        services = self.services
        partition_id = provisioner_info.get("partition_id")
        self.partition = services.broker.get(partition_id) if partition_id else None
        self.runtime_info = provisioner_info.get("runtime")
        self.data_port = provisioner_info.get("data_port")
        self.data_socket = provisioner_info.get("data_socket")
        self.handle = services.runtime.adopt(self.runtime_info or {})
        self.process = cast(Any, self.handle)
        if self.handle is not None and not services.runtime.on_gateway_host:
            self.pgid = None


def launch_timeout(value: str | None, default: float) -> float:
    """A request's ``KERNEL_LAUNCH_TIMEOUT`` in seconds, ``default`` when it names none;
    `InvalidArgument` for anything but a finite number ≥ 0 (``nan`` or ``inf`` would wait
    forever). Called by the kernels handler before a launch, and by `pre_launch`."""
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidArgument(
            f"{names.KERNEL_LAUNCH_TIMEOUT} must be a number of seconds ≥ 0, not {value!r}"
        )
    return seconds


_TAG = re.compile(r"[A-Za-z0-9_-]{1,64}")


def request_tag(value: str | None) -> str | None:
    """A request's ``KERNEL_REQUEST_TAG`` (None when it gives none); `InvalidArgument` for
    anything but 1-64 letters, digits, ``-`` or ``_`` (it is shown in the queue listing)."""
    if not value:
        return None
    if not _TAG.fullmatch(value):
        raise InvalidArgument(
            f"{names.KERNEL_REQUEST_TAG} must be 1-64 letters, digits, - or _, not {value[:80]!r}"
        )
    return value


def _free_port(host: str) -> int:
    """A port free on ``host`` now (jupyter_client picks the kernel's own ports the same way)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def remove_socket_links(connection_info: Mapping[str, Any], data_socket: str | None) -> None:
    """Remove a kernel's data socket and the links to its ZMQ sockets (jupyter_client removes
    only those whose kernel directory is still there)."""
    paths = [data_socket] if data_socket else []
    if connection_info.get("transport") == "ipc":
        ip = connection_info.get("ip", "")
        paths += [f"{ip}-{connection_info[key]}" for key in port_names if key in connection_info]
    for path in paths:
        with contextlib.suppress(OSError):
            os.unlink(path)


_UNIX_PATH_MAX = 107  # a Unix socket's path, in bytes, without its terminating NUL


def _socket_path(directory: str, kernel_id: str) -> str | None:
    """Where the kernel's Unix data socket goes: a private directory; None when the path would
    be too long for a Unix socket (then the data path stays on TCP)."""
    path = os.path.join(directory, f"{kernel_id}.sock")
    if len(path.encode()) > 100:
        return None
    os.makedirs(directory, mode=0o700, exist_ok=True)
    return path
