"""``cumulus-gateway``: a Jupyter Server that only serves kernels, each in a GPU partition.

Configured like any Jupyter server (``--ip``, ``--port``, a ``cumulus_gateway_config.py`` file,
``--help-all``), plus ``--runtime``, ``--state`` and ``--token-file`` (the operator's token, from
a file of mode 0600; see `gateway.auth` for per-user tokens and JupyterHub users).
``jupyter lab --gateway-url=http://HOST:PORT`` talks to it unchanged.

The app builds the gateway's `Services` once (`build_services`, in ``init_configurables``) and
hands them to the kernel manager, the handlers (web app settings), the expiry supervisor and
the metrics.
"""

from __future__ import annotations

from typing import Any, cast

from jupyter_server.serverapp import ServerApp
from jupyter_server.serverapp import aliases as server_aliases
from traitlets import Bool, Dict, Float, Int, TraitError, default

from cumulus_jupyter.errors import CumulusError, InvalidArgument
from gateway import handlers, metrics
from gateway.auth import CumulusIdentityProvider
from gateway.clock import Ticker
from gateway.culling import DisconnectedCuller
from gateway.errors import RefusalsAreAnswers
from gateway.expiry import ExpirySupervisor
from gateway.handlers.base import SERVICES_SETTING
from gateway.kernelspecs import CumulusKernelSpecManager
from gateway.logs import use_json
from gateway.manager import CumulusKernelManager
from gateway.provisioner import CumulusProvisioner
from gateway.runtimes import RUNTIMES
from gateway.services import Services


def build_services(kernels: CumulusKernelManager, parent: Any = None, **settings: Any) -> Services:
    """The gateway's services from the kernel manager's settings (and the app's,
    ``settings``), handed to the kernel manager; ``parent`` configures the runtime
    (default: the kernel manager's config)."""
    services = Services.build(
        kernels.settings(**settings),
        runtime_name=kernels.runtime_name,
        state_path=kernels.state_path or None,
        kernels=kernels,
        parent=parent or kernels,
    )
    kernels.services = services
    return services


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
            "token-file": "CumulusIdentityProvider.token_file",
        }
    )

    services: Services  # built in init_configurables

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

    discovery_interval = Float(
        30.0,
        config=True,
        help="Seconds between device discoveries while the gateway runs: a device found "
        "for the first time is added, one no longer found is offline (no new partition on "
        "it) until found again; while discovery fails new kernels are refused with 503 and "
        "running ones are left alone; 0 turns it off.",
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
        return list(handlers.SERVICES)

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
        """Creates the kernel manager and the services (state file, devices, runtime): a bad
        setting there ends start-up with its one-line message and its class's exit code."""
        try:
            super().init_configurables()  # the identity provider reads its token files here
            self.services = build_services(
                cast(CumulusKernelManager, self.kernel_manager),
                parent=self,
                max_transfer_bytes=self.max_transfer_bytes,
                tcp_nodelay=self.tcp_nodelay,
                discovery_interval=self.discovery_interval,
            )
        except CumulusError as exc:
            self.log.critical("%s", exc)
            self.exit(exc.exit_code)
        except TraitError as exc:  # a setting of the wrong type or not among its choices
            self.log.critical("%s", exc)
            self.exit(InvalidArgument.exit_code)
        self._check_quotas()

    def _check_quotas(self) -> None:
        """Quotas bind per-user tokens and hub users only: without either, say they apply to
        no one."""
        provider = self.identity_provider
        scoped = isinstance(provider, CumulusIdentityProvider) and provider.scopes_users
        if self.services.settings.quotas.any and not scoped:
            self.log.warning(
                "Quotas are set but there are no per-user tokens and no JupyterHub "
                "(--CumulusIdentityProvider.hub_api_url): every request is made with the "
                "operator token, which quotas exempt, so they bind no one"
            )

    def init_logging(self) -> None:
        super().init_logging()
        self.log.addFilter(RefusalsAreAnswers())  # a 429 at a kernel start is no traceback
        if self.json_logs:
            use_json(self.log)

    def init_webapp(self) -> None:
        super().init_webapp()
        self.web_app.settings["websocket_max_message_size"] = self.max_message_bytes
        self.web_app.settings[SERVICES_SETTING] = self.services

    def initialize(
        self,
        argv: list[str] | None = None,
        find_extensions: bool = True,
        new_httpserver: bool = True,
        starter_extension: Any = None,
    ) -> None:
        super().initialize(argv, find_extensions, new_httpserver, starter_extension)
        services, manager = self.services, cast(CumulusKernelManager, self.kernel_manager)
        services.settings.port, services.settings.base_url = self.port, self.base_url
        services.settings.certfile = self.certfile  # HTTPS: kernels call back on https://
        self.io_loop.run_sync(manager.adopt_kernels)
        self.io_loop.run_sync(services.jobs.recover)
        metrics.bind(
            kernels=lambda: len(manager.list_kernel_ids()),
            partitions=lambda: len(services.broker.partitions()),
            queue=lambda: services.broker.queue_length,
            workers=lambda: len(services.registry.partitions),
        )
        self.supervisor = ExpirySupervisor(services, manager)
        self._supervise = Ticker(self.supervisor.tick, self.supervise_interval, self.log)
        self._supervise.start()
        self.culler = DisconnectedCuller(services, manager)  # kernels left with no client
        self._cull = Ticker(self.culler.tick, self.supervise_interval, self.log)
        self._cull.start()


main = launch_new_instance = CumulusGateway.launch_instance
