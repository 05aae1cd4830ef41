"""Where kernels run: one `Runtime` per kind of place: local processes (the embedded default),
Docker job containers on this host, Docker Swarm services across GPU hosts."""

from typing import Any

from cumulus_jupyter.errors import InvalidArgument
from gateway.runtimes.base import KernelProcess, Launch, Runtime, Started
from gateway.runtimes.docker import DockerRuntime
from gateway.runtimes.local import LocalRuntime
from gateway.runtimes.swarm import SwarmRuntime

RUNTIMES: dict[str, type[Runtime]] = {
    "local": LocalRuntime,
    "docker": DockerRuntime,
    "swarm": SwarmRuntime,
}


def runtime_for(name: str, **kwargs: Any) -> Runtime:
    """The runtime called ``name`` (``kwargs``: `Runtime`'s); `InvalidArgument` naming the
    choices otherwise."""
    try:
        cls = RUNTIMES[name]
    except KeyError:
        choices = ", ".join(sorted(RUNTIMES))
        raise InvalidArgument(f"Unknown runtime: {name}. Choose one of: {choices}") from None
    return cls(**kwargs)


__all__ = [
    "RUNTIMES",
    "DockerRuntime",
    "KernelProcess",
    "Launch",
    "LocalRuntime",
    "Runtime",
    "Started",
    "SwarmRuntime",
    "runtime_for",
]
