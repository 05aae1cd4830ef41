"""Cumulus Jupyter: run notebook cells and kernels on a fraction of a shared GPU.

``%load_ext cumulus_jupyter`` registers ``%%cumulus`` and ``%cumulus``; the Cumulus GPU kernel is
`cumulus_jupyter.kernel`; `cumulus_jupyter.errors` holds the error tree shared with the gateway.
"""

from typing import Any

from cumulus_jupyter.errors import CumulusError

__all__ = ["CumulusError", "RemoteError", "load_ipython_extension", "remote", "run"]


def __getattr__(name: str) -> Any:
    # the function API pulls in the client stack; the gateway imports only `errors`
    if name in ("run", "remote", "RemoteError"):
        from cumulus_jupyter import api

        return getattr(api, name)
    raise AttributeError(f"module 'cumulus_jupyter' has no attribute {name!r}")


def load_ipython_extension(shell: Any) -> None:
    """``%load_ext cumulus_jupyter``."""
    from cumulus_jupyter.magic import load_ipython_extension as load

    load(shell)
