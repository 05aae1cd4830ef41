"""The runtime seam: how the provisioner starts, watches, signals and re-finds a kernel.

A `KernelProcess` has the subset of ``subprocess.Popen``'s interface that jupyter_client's
`LocalProvisioner` drives (``pid``, ``poll``, ``wait``, ``send_signal``, ``terminate``,
``kill``), so every runtime's handle plugs into the same provisioner.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, Protocol


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


class Runtime(ABC):
    """Starts kernels somewhere. Called by `CumulusProvisioner.launch_kernel`."""

    name: str

    @abstractmethod
    async def launch(
        self, argv: Sequence[str], env: Mapping[str, str], cwd: str | None, kernel_id: str
    ) -> KernelProcess:
        """Start the kernel command; return once the process exists (not when it is ready)."""

    @abstractmethod
    def adopt(self, info: Mapping[str, Any]) -> KernelProcess | None:
        """The kernel described by ``info`` (from `KernelProcess.info`) if it still runs."""
