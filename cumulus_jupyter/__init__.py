"""Cumulus Jupyter: run notebook cells and kernels on a fraction of a shared GPU.

The client side (magic, proxy kernel, function API) grows here; today it holds the error tree
shared with the gateway.
"""

from cumulus_jupyter.errors import CumulusError

__all__ = ["CumulusError"]
