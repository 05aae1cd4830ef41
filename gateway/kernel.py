"""`CumulusServerKernelManager`: jupyter_server's manager of one kernel, carrying the services.

The mapping kernel manager (`gateway.manager`) creates one per kernel, started or adopted, and
hands it the gateway's `Services`; the kernel's provisioner (`gateway.provisioner`), whose
``parent`` it is, takes them from there.
"""

from __future__ import annotations

from jupyter_server.services.kernels.kernelmanager import ServerKernelManager
from traitlets import Instance

from cumulus_jupyter.errors import Internal
from gateway.services import Services


class CumulusServerKernelManager(ServerKernelManager):
    """One kernel's manager, with the gateway's services."""

    services = Instance(Services, allow_none=True, help="The gateway's services.")

    def require_services(self) -> Services:
        if self.services is None:
            raise Internal(f"kernel manager of {self.kernel_id} was created without services")
        return self.services
