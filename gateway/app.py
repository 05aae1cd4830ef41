"""``cumulus-gateway``: a Jupyter Server that only serves kernels, each in a GPU partition.

Configured like any Jupyter server (``--ip``, ``--port``, ``--IdentityProvider.token``, a
``cumulus_gateway_config.py`` file, ``--help-all``), plus ``--runtime`` and ``--state``.
``jupyter lab --gateway-url=http://HOST:PORT`` talks to it unchanged.
"""

from __future__ import annotations

from typing import Any, cast

from jupyter_server.serverapp import ServerApp
from jupyter_server.serverapp import aliases as server_aliases
from tornado.ioloop import PeriodicCallback
from traitlets import Bool, Dict, Float, Int, default

from chronos import ChronosError
from gateway import metrics
from gateway.auth import CumulusIdentityProvider
from gateway.kernelspecs import CumulusKernelSpecManager
from gateway.logs import use_json
from gateway.manager import CumulusKernelManager
from gateway.provisioner import CumulusProvisioner
from gateway.runtimes import RUNTIMES
from gateway.supervisor import ExpirySupervisor


class CumulusGateway(ServerApp):
    """Remote kernels in Chronos GPU partitions, behind the Jupyter Kernel Gateway API."""

    name = "cumulus-gateway"
    description = __doc__
    default_services = ("api", "auth", "kernels", "kernelspecs", "security", "shutdown")  # type: ignore[assignment]

    aliases = Dict(
        {
            **server_aliases,
            "runtime": "CumulusKernelManager.runtime_name",
            "state": "CumulusKernelManager.state_path",
        }
    )

    supervise_interval = Float(
        1.0, config=True, help="Seconds between expiry checks and queue moves."
    )

    classes = [  # noqa: RUF012 - traitlets reads this class attribute
        *ServerApp.classes,
        CumulusIdentityProvider,
        CumulusKernelManager,
        CumulusKernelSpecManager,
        CumulusProvisioner,
        *RUNTIMES.values(),
    ]

    tcp_nodelay = Bool(
        True,
        config=True,
        help="Send kernel WebSocket frames at once (TCP_NODELAY). Off, Nagle's algorithm adds "
        "~40 ms to every round trip; only the benchmark turns it off, to show that.",
    )

    json_logs = Bool(False, config=True, help="Log one JSON object per line.")

    max_message_bytes = Int(
        4 * 2**30,
        config=True,
        help="Largest kernel WebSocket message accepted (variables travel as binary buffers; "
        "tornado's default of 10 MiB would cut off any array above that).",
    )

    max_transfer_bytes = Int(
        16 * 2**30,
        config=True,
        help="Largest variable transfer accepted on the data path (one push or pull), in bytes; "
        "0 for no limit. Clients refuse larger pushes before sending anything.",
    )

    @default("config_file_name")
    def _config_file_name(self) -> str:
        return "cumulus_gateway_config"

    @default("extra_services")
    def _extra_services(self) -> list[str]:
        return ["gateway.handlers", "gateway.data", "gateway.callback", "gateway.jobs"]

    @default("kernel_manager_class")
    def _kernel_manager_class(self) -> type:
        return CumulusKernelManager

    @default("kernel_spec_manager_class")
    def _kernel_spec_manager_class(self) -> type:
        return CumulusKernelSpecManager

    @default("identity_provider_class")
    def _identity_provider_class(self) -> type:
        return CumulusIdentityProvider

    @default("open_browser")
    def _open_browser(self) -> bool:
        return False

    def find_server_extensions(self) -> None:
        """A gateway loads no server extensions (JupyterLab's included), whatever is installed."""

    def init_server_extensions(self) -> None:
        self.jpserver_extensions = {}
        super().init_server_extensions()

    def init_configurables(self) -> None:
        """Creates the kernel manager (state file, devices, runtime): a bad setting there ends
        start-up with its one-line message, not a traceback."""
        try:
            super().init_configurables()
        except (ChronosError, ValueError) as exc:
            self.log.critical("%s", exc)
            self.exit(getattr(exc, "exit_code", 2))

    def init_logging(self) -> None:
        super().init_logging()
        if self.json_logs:
            use_json(self.log)

    def init_webapp(self) -> None:
        super().init_webapp()
        self.web_app.settings["cumulus_tcp_nodelay"] = self.tcp_nodelay
        self.web_app.settings["websocket_max_message_size"] = self.max_message_bytes
        self.web_app.settings["cumulus_max_transfer_bytes"] = self.max_transfer_bytes
        self.web_app.settings["cumulus_callbacks"] = cast(
            CumulusKernelManager, self.kernel_manager
        ).callbacks

    def initialize(
        self,
        argv: list[str] | None = None,
        find_extensions: bool = True,
        new_httpserver: bool = True,
        starter_extension: Any = None,
    ) -> None:
        super().initialize(argv, find_extensions, new_httpserver, starter_extension)
        manager = cast(CumulusKernelManager, self.kernel_manager)
        self.io_loop.run_sync(manager.adopt_kernels)
        self.io_loop.run_sync(manager.jobs.recover)
        metrics.bind(manager)
        self.supervisor = ExpirySupervisor(manager)
        self._supervise = PeriodicCallback(self.supervisor.tick, self.supervise_interval * 1000)
        self._supervise.start()


main = launch_new_instance = CumulusGateway.launch_instance
