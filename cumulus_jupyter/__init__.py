"""Cumulus Jupyter: run notebook cells and kernels on a fraction of a shared GPU.

The public surface: ``%load_ext cumulus_jupyter`` (registers ``%%cumulus`` and ``%cumulus``),
`run` and `remote` (the function API), `CumulusClient` (the seed SDK's client, with `map`),
and the error tree (`cumulus_jupyter.errors`).

The package holds three programs and their contract:

- the client: `magic`, `api`, `client`, `session`, `remote_kernel` (the async core),
  `connection` (REST), `datapath` (bulk transfers), `cells`, `transfer`, `archive`,
  `kernelspec`, `cli`, `jobs`, `loop` (the background event loop of the sync APIs);
- `kernel`: the Cumulus GPU kernel, a local proxy that relays a front end to a remote kernel;
- `agent`: what runs inside the remote kernel (comm targets, data port, overlays, the job
  container's launcher, checkpoints; `checkpoint` is its public name for users);
- `protocol` and `errors`: the wire contract and the error tree, the only parts the gateway
  imports.
"""

from typing import TYPE_CHECKING, Any

from cumulus_jupyter.errors import CumulusError, RemoteError

if TYPE_CHECKING:  # type checkers see the lazy names' real types
    from cumulus_jupyter.api import remote, run
    from cumulus_jupyter.client import CumulusClient

__all__ = [
    "CumulusClient",
    "CumulusError",
    "RemoteError",
    "load_ipython_extension",
    "remote",
    "run",
]


def __getattr__(name: str) -> Any:
    # the function API pulls in the client stack; the gateway imports only `errors`
    if name in ("run", "remote"):
        from cumulus_jupyter import api

        return getattr(api, name)
    if name == "CumulusClient":
        from cumulus_jupyter.client import CumulusClient

        return CumulusClient
    raise AttributeError(f"module 'cumulus_jupyter' has no attribute {name!r}")


def load_ipython_extension(shell: Any) -> None:
    """``%load_ext cumulus_jupyter``."""
    from cumulus_jupyter.magic import load_ipython_extension as load

    load(shell)
