"""Kernels in job containers: one Docker container per kernel, from the ``cumulus-job`` image.

Each container gets the partition's environment and nothing of the gateway's; its GPU as a device
request (NVIDIA) or device nodes (AMD, Intel); a cgroup memory and CPU limit; a read-only root
file system with a private writable work directory (tmpfs, gone with the container); a non-root
user, no capabilities and ``no-new-privileges``; and the host's network by default (the kernel's
ports are on loopback, the way back to the gateway), or any network the operator names.

The kernel does not learn its ports from the gateway: the container's launcher
(`cumulus_jupyter.agent.launcher`) chooses them and a key, and reports them to the gateway's
callback endpoint with the single-use token issued here (`gateway.callback`). `launch` returns
once that callback has arrived; a container that exits first, or never calls back within the
launch timeout, fails the start with its last log lines, and is removed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from traitlets import Float, Int, Unicode

from chronos import Device, Vendor
from cumulus_jupyter.errors import (
    CumulusError,
    DeadlineExceeded,
    InvalidArgument,
    KernelDied,
    Unavailable,
)
from cumulus_jupyter.protocol import callback
from cumulus_jupyter.protocol import code as kernel_code
from cumulus_jupyter.protocol import env as names
from gateway.checkpoints import l1_dir
from gateway.runtimes.base import KernelProcess, Launch, Runtime, Started

if TYPE_CHECKING:
    import docker

LABEL = "cumulus.kernel"  # every container and service we start carries its kernel id here
LOG_LINES = 20
_POLL_S = 0.2


def engine(base_url: str) -> docker.DockerClient:
    """A client of the Docker engine at ``base_url`` (empty: ``DOCKER_HOST`` or the local
    socket); `Unavailable` when it does not answer."""
    import docker

    client: docker.DockerClient | None = None
    try:
        client = docker.DockerClient(base_url=base_url) if base_url else docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        if client is not None:
            client.close()
        where = base_url or "DOCKER_HOST or /var/run/docker.sock"
        raise Unavailable(f"Docker engine not reachable ({where}): {_reason(exc)}") from exc
    return client


def engine_away() -> tuple[type[Exception], ...]:
    """What a call to the engine raises when the call fails, the engine being away included:
    docker-py lets requests' ``ConnectionError`` through (a restarting dockerd has no socket
    yet), which is no ``DockerException``."""
    import docker
    import requests

    return (docker.errors.DockerException, requests.exceptions.ConnectionError)


def _epoch(stamp: Any) -> int:
    """Seconds since the epoch of the engine's RFC 3339 time stamp (0 if it has none)."""
    from datetime import datetime

    try:
        return int(datetime.fromisoformat(str(stamp)[:26].rstrip("Z") + "+00:00").timestamp())
    except ValueError:
        return 0


def _is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return text.split(": ", 1)[-1] if len(text) > 200 else text


def exit_code(state: Mapping[str, Any]) -> int:
    """Popen's convention: negative when killed by a signal (the engine reports 128+N)."""
    code = int(state.get("ExitCode", -1))
    return -(code - 128) if 128 < code < 160 else code


class EngineProcess(ABC):
    """What a kernel's container and a kernel's Swarm service share as the provisioner's
    process handle: Popen's ``wait``/``terminate``/``kill`` over ``poll``/``send_signal``, and
    whether someone other than the gateway ended it (``ended_outside``, the reason)."""

    pid = 0

    def __init__(self, client: docker.DockerClient, ident: str) -> None:
        self._api = client.api
        self.id = ident
        self.returncode: int | None = None
        self.stdin = self.stdout = self.stderr = None
        self.stopping = False  # we asked the engine to stop it
        self.ended_outside: str | None = None  # why, when someone else stopped or removed it

    @abstractmethod
    def poll(self) -> int | None:
        """See `KernelProcess`."""

    @abstractmethod
    def send_signal(self, signum: int) -> None:
        """See `KernelProcess`."""

    @abstractmethod
    def info(self) -> dict[str, Any]:
        """See `KernelProcess`."""

    @abstractmethod
    def remove(self) -> None:
        """See `KernelProcess`."""

    @abstractmethod
    def logs(self, lines: int = LOG_LINES) -> str:
        """See `KernelProcess`; ``logs``: the last lines the kernel printed."""

    def wait(self, timeout: float | None = None) -> int | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.id, timeout or 0)
            time.sleep(_POLL_S)
        return code

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ContainerProcess(EngineProcess):
    """A kernel's container, as the provisioner sees a process."""

    def __init__(self, client: docker.DockerClient, container_id: str, pid: int) -> None:
        super().__init__(client, container_id)
        self.pid = pid

    def poll(self) -> int | None:
        import docker

        if self.returncode is not None:
            return self.returncode
        try:
            state = self._api.inspect_container(self.id)["State"]
        except docker.errors.NotFound:
            self.returncode = -signal.SIGKILL
            if not self.stopping:
                self.ended_outside = f"its container {self.id[:12]} was removed"
            return self.returncode
        except engine_away():
            return None  # the engine is away: the container may well run on
        if state.get("Running") or state.get("Restarting"):
            return None
        self.returncode = exit_code(state)
        if not self.stopping and self._killed_by_engine_client(state):
            self.ended_outside = f"its container {self.id[:12]} was stopped outside the gateway"
        elif state.get("OOMKilled"):
            self.ended_outside = None  # a crash: jupyter_client restarts it, as a local kernel
        return self.returncode

    def _killed_by_engine_client(self, state: Mapping[str, Any]) -> bool:
        """Whether someone asked the engine to kill or stop it (``docker kill``/``stop``/
        ``rm -f``): the engine's events say so; a kernel that crashed has none."""

        try:
            events = self._api.events(
                since=_epoch(state.get("StartedAt")), until=int(time.time()) + 1,
                filters={"container": self.id, "event": ["kill", "stop"]}, decode=True,
            )  # fmt: skip
            return any(True for _ in events)
        except engine_away():
            return False

    def send_signal(self, signum: int) -> None:
        import docker

        if signum in (signal.SIGKILL, signal.SIGTERM):
            self.stopping = True
        if self.poll() is None:
            try:
                self._api.kill(self.id, signal=int(signum))
            except docker.errors.APIError as exc:  # it exited meanwhile
                raise ProcessLookupError(f"container {self.id[:12]}: {exc.explanation}") from exc

    def info(self) -> dict[str, Any]:
        return {"runtime": "docker", "container": self.id, "pid": self.pid}

    def remove(self) -> None:
        import docker

        self.stopping = True
        try:
            self._api.remove_container(self.id, force=True, v=True)
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: removal already in progress
                raise

    def logs(self, lines: int = LOG_LINES) -> str:

        try:
            raw = self._api.logs(self.id, stdout=True, stderr=True, tail=lines)
        except engine_away():
            return ""
        return raw.decode(errors="replace").strip()


class DockerRuntime(Runtime):
    """Kernels in containers of the ``cumulus-job`` image on this host's Docker engine."""

    name = "docker"
    on_gateway_host = False

    image = Unicode("cumulus-job:latest", config=True, help="The job image kernels run in.")
    docker_url = Unicode(
        "", config=True, help="Docker engine URL (default: DOCKER_HOST or the local socket)."
    )
    network = Unicode(
        "host",
        config=True,
        help="Network of the kernel containers. 'host': the kernel listens on loopback, the "
        "gateway's way in (the default). Or a network of the operator's, e.g. `docker network "
        "create --internal cumulus-kernels`: kernels then reach nothing but the host's end of it, "
        "where the gateway must listen (--ip); callbacks go there.",
    )
    callback_url = Unicode(
        "",
        config=True,
        help="The gateway's base URL as a container reaches it (default: http://127.0.0.1:PORT "
        "on the host network; https:// when the gateway serves HTTPS).",
    )
    user = Unicode("1000:1000", config=True, help="UID:GID kernels run as (never root).")
    memory = Unicode("4g", config=True, help="Memory limit of a kernel container (cgroup).")
    cpus = Float(2.0, config=True, help="CPU limit of a kernel container, in CPUs (cgroup).")
    pids_limit = Int(512, config=True, help="Most processes and threads in a kernel container.")
    work_size = Unicode("1g", config=True, help="Size of the writable work directory (tmpfs).")
    checkpoint_dir = Unicode(
        "",
        config=True,
        help="Host directory mounted at /checkpoints as the kernels' L1 checkpoint tier (writable "
        "by the kernels' user); empty: L1 is in the container's work directory, gone with it, "
        "and only L2 (CUMULUS_CHECKPOINT_URL) outlives the kernel.",
    )

    @cached_property
    def client(self) -> docker.DockerClient:
        return engine(self.docker_url)

    def check(self) -> None:
        import docker

        try:
            self.client.images.get(self.image)
        except docker.errors.ImageNotFound:
            raise Unavailable(self.missing_image()) from None

    def missing_image(self) -> str:
        return (
            f"Job image {self.image} is not on the Docker engine; build it with "
            "`python -m gateway.container.build` (or `make image`)"
        )

    def base_url(self) -> str:
        """The gateway as a kernel container reaches it: ``callback_url``, else loopback on the
        host network, else the host's end of the kernels' network (its IPAM gateway)."""
        if self.callback_url:
            return self.callback_url.rstrip("/")
        host = "127.0.0.1" if self.network == "host" else self.network_gateway()
        return self.gateway_url(host)

    def gateway_url(self, host: str) -> str:
        """The gateway's base URL at ``host`` (its port and base URL from the settings)."""
        base = (self.settings.base_url or "/").rstrip("/")
        scheme = "https" if self.settings.certfile else "http"
        return f"{scheme}://{host}:{self.settings.port}{base}"

    def network_gateway(self) -> str:
        import docker

        try:
            ipam = self.client.networks.get(self.network).attrs.get("IPAM") or {}
            return str(next(c["Gateway"] for c in ipam.get("Config") or [] if c.get("Gateway")))
        except (docker.errors.NotFound, StopIteration):
            raise Unavailable(
                f"Docker network {self.network} has no gateway address for the kernels to call "
                "back to; set --DockerRuntime.callback_url"
            ) from None

    def environment(self, launch: Launch, token: str) -> dict[str, str]:
        env = {k: v for k, v in launch.env.items() if k not in ("JPY_PARENT_PID", "PATH")}
        env |= {
            names.CALLBACK_URL: self.base_url() + callback.path(launch.kernel_id),
            names.CALLBACK_TOKEN: token,
            names.WORKDIR: "/work",
            "HOME": "/work",
            "JUPYTER_RUNTIME_DIR": "/work/.runtime",
        }
        if self.settings.certfile:  # the launcher pins it: the callback carries the kernel's keys
            env[names.CALLBACK_CERT] = self.own_certificate()
        return env

    def own_certificate(self) -> str:
        try:
            pem = Path(self.settings.certfile).read_text()
        except OSError as exc:
            raise Unavailable(f"Cannot read the gateway's certificate: {exc}") from exc
        return callback.leaf_certificate(pem)

    def container_options(self, launch: Launch, token: str) -> dict[str, Any]:
        """The engine's create options for one kernel (also what the unit tests check)."""
        uid, _, gid = self.user.partition(":")
        if uid in ("0", "root"):
            raise InvalidArgument("DockerRuntime.user must not be root")
        options: dict[str, Any] = {
            "image": self.image,
            "command": ["python", "-m", kernel_code.LAUNCHER, *launch.argv[1:]],
            "name": f"cumulus-kernel-{launch.kernel_id}",
            "labels": {LABEL: launch.kernel_id},
            "environment": self.environment(launch, token),
            "user": self.user,
            "working_dir": "/work",
            "read_only": True,
            "tmpfs": {
                "/work": f"rw,nosuid,nodev,size={self.work_size},uid={uid},gid={gid or uid},"
                "mode=0700",
                "/tmp": f"rw,nosuid,nodev,size={self.work_size},mode=1777",
            },
            "network_mode": self.network,
            "mem_limit": self.memory,
            "memswap_limit": self.memory,  # no swap beyond the limit
            "nano_cpus": int(self.cpus * 1e9),
            "pids_limit": self.pids_limit,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "init": True,  # signals reach the kernel; its children are reaped
            "detach": True,
        }
        options |= gpu_options(launch.devices)
        if self.checkpoint_dir:  # the owner's own directory: no other owner's is mounted
            options["volumes"] = {self.owner_checkpoints(launch): {"bind": "/checkpoints",
                                                                   "mode": "rw"}}  # fmt: skip
            options["environment"][names.CHECKPOINT_DIR] = "/checkpoints"
        else:
            options["environment"][names.CHECKPOINT_DIR] = "/work/.checkpoints"
        return options

    async def launch(self, launch: Launch) -> Started:
        """Create the kernel's container (a service, for Swarm) and wait for its callback; on
        any failure nothing of it stays and its token is void."""
        import docker

        callbacks = self.callbacks
        token = callbacks.issue(launch.kernel_id, self.settings.launch_timeout)
        process: EngineProcess | None = None
        try:
            try:
                process = await asyncio.to_thread(self.create, launch, token)
            except docker.errors.ImageNotFound:
                raise Unavailable(self.missing_image()) from None
            except docker.errors.DockerException as exc:
                raise Unavailable(
                    f"{self.name.capitalize()} could not start the kernel: {_reason(exc)}"
                ) from exc
            payload = await until_called_back(process, callbacks.wait(launch.kernel_id))
        except BaseException:
            callbacks.cancel(launch.kernel_id)
            if process is not None:
                await asyncio.to_thread(process.remove)
            raise
        return Started(process, payload["connection_info"], self.data_port(payload))

    def data_port(self, payload: Mapping[str, Any]) -> int | None:
        """The data port a kernel reported, if the gateway is to use it. That hop is signed per
        request but not encrypted: behind an HTTPS gateway, a kernel on another host (not on
        loopback) gets none, and its variables travel in messages over its CurveZMQ link."""
        port = payload.get("data_port")
        ip = str(payload["connection_info"].get("ip", ""))
        if port and self.settings.certfile and not _is_loopback(ip):
            return None
        return cast(int | None, port)

    def owner_checkpoints(self, launch: Launch) -> str:
        """The host directory of the kernel owner's L1 checkpoints under ``checkpoint_dir``."""
        owner = launch.env.get(names.KERNEL_USERNAME) or "anonymous"
        return str(l1_dir(Path(self.checkpoint_dir), owner))

    def _make_owner_checkpoints(self, launch: Launch) -> None:
        """Create the owner's L1 directory, 0700 and owned by the kernels' user (the engine
        would make a missing one root's, which the kernel could not write)."""
        folder = Path(self.owner_checkpoints(launch))
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        uid, _, gid = self.user.partition(":")
        if os.getuid() == 0 and uid.isdigit():
            os.chown(folder, int(uid), int(gid) if gid.isdigit() else int(uid))
        folder.chmod(0o700)

    def create(self, launch: Launch, token: str) -> EngineProcess:
        """Start the kernel's container (blocking: runs in a thread)."""
        if self.checkpoint_dir:
            self._make_owner_checkpoints(launch)
        options = self.container_options(launch, token)
        self.client.images.get(self.image)  # never a pull: there is no registry to ask
        container = self.client.containers.run(**options)
        container.reload()
        return ContainerProcess(self.client, str(container.id), container.attrs["State"]["Pid"])

    def adopt(self, info: Mapping[str, Any]) -> KernelProcess | None:
        import docker

        if info.get("runtime") != self.name or not info.get("container"):
            return None
        try:
            state = self.client.api.inspect_container(info["container"])["State"]
        except (docker.errors.DockerException, CumulusError):
            return None
        if not state.get("Running"):
            return None
        return ContainerProcess(self.client, str(info["container"]), int(state.get("Pid", 0)))


async def until_called_back(process: Any, callback: Any) -> dict[str, Any]:
    """The callback's payload, unless the kernel's container (or task) ends first."""
    waiting = asyncio.ensure_future(callback)
    try:
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=_POLL_S)
            if done:
                try:
                    return cast(dict[str, Any], waiting.result())
                except DeadlineExceeded as exc:
                    raise DeadlineExceeded(f"{exc}{_log_tail(process)}") from None
            code = await asyncio.to_thread(process.poll)
            if code is not None:
                raise KernelDied(
                    f"the kernel's container exited ({code}) before it called back"
                    f"{_log_tail(process)}"
                )
    finally:
        waiting.cancel()


def _log_tail(process: Any) -> str:
    text = process.logs()
    return f"; its last output:\n{text}" if text else ""


def gpu_options(devices: list[Device] | Any) -> dict[str, Any]:
    """The engine options that give a container the partition's devices: an NVIDIA device
    request by UUID (or index), the ROCm/oneAPI device nodes for AMD and Intel GPUs. A CPU
    device (PoCL) needs nothing."""
    import docker

    options: dict[str, Any] = {}
    nvidia = [d for d in devices if d.vendor is Vendor.NVIDIA]
    if nvidia:
        ids = [d.uuid or str(d.index) for d in nvidia]
        options["device_requests"] = [
            docker.types.DeviceRequest(driver="nvidia", device_ids=ids, capabilities=[["gpu"]])
        ]
    nodes: list[str] = []
    if any(d.vendor is Vendor.AMD for d in devices):
        nodes += ["/dev/kfd", "/dev/dri"]
    if any(d.vendor is Vendor.INTEL and d.kind == "gpu" for d in devices):
        nodes += ["/dev/dri"]
    if nodes:
        options["devices"] = [f"{n}:{n}:rwm" for n in dict.fromkeys(nodes)]
    return options
