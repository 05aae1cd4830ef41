"""The Cumulus gateway: remote kernels in Chronos partitions, Kernel-Gateway compatible.

Built on jupyter_server in its own issue; the package exists now so the distribution's layout
(``cumulus_jupyter``, ``gateway``, ``chronos``) is fixed from the start.
"""
