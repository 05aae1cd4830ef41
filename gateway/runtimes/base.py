"""The runtime seam: how the provisioner starts, watches, signals and re-finds a kernel.

A `KernelProcess` has the subset of ``subprocess.Popen``'s interface that jupyter_client's
`LocalProvisioner` drives (``pid``, ``poll``, ``wait``, ``send_signal``, ``terminate``,
``kill``), so every runtime's handle plugs into the same provisioner. A runtime is a traitlets
configurable (``--DockerRuntime.image=...``, read from its ``parent``'s or its own ``config``);
what it needs of the gateway is handed to it: the `Settings` (launch timeout, the gateway's port
and base URL for callbacks) and the `Callbacks` its kernels report through.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from traitlets.config import LoggingConfigurable

from chronos import Device
from gateway.callback import Callbacks
from gateway.settings import Settings


class KernelProcess(Protocol):
    """A running kernel, wherever it runs."""

    pid: int

    def poll(self) -> int | None:
        """None while running, else the exit code (negative: killed by that signal)."""
        ...

    def wait(self, timeout: float | None = None) -> int | None: ...

    def send_signal(self, signum: int) -> None: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...

    def info(self) -> dict[str, Any]:
        """What `Runtime.adopt` needs to find this kernel again after a gateway restart."""
        ...

    def remove(self) -> None:
        """Free what the kernel leaves behind once it has exited (a container, a service)."""
        ...


@dataclass
class Launch:
    """What the provisioner asks a runtime to start."""

    argv: Sequence[str]
    env: Mapping[str, str]
    cwd: str | None
    kernel_id: str
    devices: Sequence[Device] = field(default=())  # the partition's devices


@dataclass
class Started:
    """A started kernel; ``connection_info`` and ``data_port`` when the kernel chose its own
    ports and key (a containerised kernel reports them through the callback)."""

    process: KernelProcess
    connection_info: dict[str, Any] | None = None
    data_port: int | None = None


class Runtime(LoggingConfigurable):
    """Starts kernels somewhere. Called by `CumulusProvisioner.launch_kernel`."""

    name = "runtime"
    #: whether kernels inherit the gateway's environment and see its files (a local process
    #: does; a container gets only the partition's and the request's variables)
    on_gateway_host = True
    #: whether signals reach the kernel (a Swarm task's do not: interrupts go as messages)
    signals = True
    #: whether a kernel's ZMQ sockets are Unix sockets beside its data socket rather than
    #: loopback TCP ports: a sandboxed kernel's are, so another kernel on the host (another
    #: user's) finds no IOPub port to subscribe to, which HMAC signing alone does not prevent
    ipc = False

    def __init__(
        self,
        settings: Settings | None = None,
        callbacks: Callbacks | None = None,
        **kwargs: Any,
    ) -> None:
        """``kwargs``: traitlets' (``parent``, ``config``, trait values)."""
        super().__init__(**kwargs)
        self.settings = settings or Settings()
        self.callbacks = callbacks or Callbacks()

    async def launch(self, launch: Launch) -> Started:
        """Start the kernel command; return once the process exists (not when it is ready)."""
        raise NotImplementedError

    def adopt(self, info: Mapping[str, Any]) -> KernelProcess | None:
        """The kernel described by ``info`` (from `KernelProcess.info`) if it still runs."""
        raise NotImplementedError

    def discard(self, info: Mapping[str, Any]) -> None:
        """Remove what a kernel described by ``info`` left behind once its process is gone
        (it died while no gateway watched); called by `CumulusKernelManager` after a restart
        for each recorded kernel it could not adopt."""

    def devices(self) -> list[Device] | None:
        """The devices partitions are cut from when the runtime knows them (a Swarm's nodes);
        None: this host's devices (discovery, or ``CHRONOS_DEVICES``)."""
        return None

    def check(self) -> None:
        """Raise a `CumulusError` with a one-line reason when the runtime cannot work now
        (called once at start-up, which logs it; each kernel start will then say it again)."""
