"""Where kernels run: one `Runtime` per kind of place (local processes today; docker and swarm
plug into the same interface)."""

from gateway.runtimes.base import KernelProcess, Runtime
from gateway.runtimes.local import LocalRuntime

RUNTIMES: dict[str, type[Runtime]] = {"local": LocalRuntime}


def runtime_for(name: str) -> Runtime:
    """The runtime called ``name``; `ValueError` naming the choices otherwise."""
    try:
        return RUNTIMES[name]()
    except KeyError:
        choices = ", ".join(sorted(RUNTIMES))
        raise ValueError(f"Unknown runtime: {name}. Choose one of: {choices}") from None


__all__ = ["RUNTIMES", "KernelProcess", "LocalRuntime", "Runtime", "runtime_for"]
