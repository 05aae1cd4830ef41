"""Kernels across GPU hosts: one Docker Swarm service per kernel, driven from the Swarm manager
the gateway runs on. Swarm does the placing; we do not schedule.

- **Devices**: every node that `scripts/setup-worker.sh` onboarded carries a ``cumulus.devices``
  label (an engine label set on the worker, or a node label set on the manager): the JSON list of
  its devices, in ``CHRONOS_DEVICES``' format. The gateway's one Chronos store cuts partitions
  from all of them, so partitions for every node are allocated centrally. Only nodes that can
  take a task now (``ready`` and ``active``) count: discovery runs again while the gateway runs
  (`gateway.discovery`), so a node that joins is offered for new kernels, and one that leaves,
  goes down or is drained or paused is not (its devices are offline) until it is back.
- **Placement**: the service is constrained to the node that holds the partition's devices
  (``node.id==…``); NVIDIA devices are named to the worker's NVIDIA container runtime by UUID.
- **Relay**: the kernel calls back with its node's address; the gateway alone talks to it (ZMQ,
  data port), and clients only ever talk to the gateway.
- **Lifecycle**: the task's state is the kernel's: a task that fails, a service removed from
  outside, or a node that leaves the Swarm ends the kernel (reported, partition released).
  Interrupts travel as ``interrupt_request`` messages (a signal cannot cross hosts); shutdown
  removes the service.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from chronos import Device, Vendor
from chronos.device import json_objects, load_configured
from cumulus_jupyter.errors import CumulusError, InvalidArgument, Unavailable
from cumulus_jupyter.protocol import code as kernel_code
from gateway.errors import chronos_boundary
from gateway.runtimes.base import KernelProcess, Launch
from gateway.runtimes.docker import (
    LABEL,
    LOG_LINES,
    DockerRuntime,
    EngineProcess,
    exit_code,
)

if TYPE_CHECKING:
    import docker

DEVICES_LABEL = "cumulus.devices"
_RUNNING = {"new", "pending", "assigned", "accepted", "preparing", "ready", "starting", "running"}
_POLL_S = 0.2


class ServiceProcess(EngineProcess):
    """A kernel's Swarm service, as the provisioner sees a process (``pid`` 0: on another host,
    the engine, not a PID, identifies it)."""

    def __init__(self, client: docker.DockerClient, service_id: str) -> None:
        super().__init__(client, service_id)
        self.error = ""

    def _task(self) -> dict[str, Any] | None:
        tasks = self._api.tasks(filters={"service": self.id})
        return max(tasks, key=lambda t: t["Version"]["Index"]) if tasks else None

    def poll(self) -> int | None:
        import docker

        if self.returncode is not None:
            return self.returncode
        try:
            self._api.inspect_service(self.id)
            task = self._task()
        except docker.errors.NotFound:
            return self._ended(-signal.SIGKILL, "its service was removed outside the gateway")
        except docker.errors.DockerException:
            return None  # the manager is away: the task may well run on
        if task is None:
            return None
        status = task.get("Status", {})
        state = status.get("State", "")
        if state in _RUNNING:
            node = task.get("NodeID")
            if node and self._node_down(node):
                return self._ended(-signal.SIGKILL, f"its node {node[:12]} left the Swarm")
            return None
        self.error = str(status.get("Err") or "")
        code = status.get("ContainerStatus", {}).get("ExitCode")
        if state == "complete":
            self.returncode = int(code or 0)
        elif state == "failed" and code:
            self.returncode = exit_code({"ExitCode": code})
        elif state in ("shutdown", "orphaned", "remove"):
            return self._ended(-signal.SIGKILL, f"its task was {state} outside the gateway")
        else:  # rejected, failed to start
            self.returncode = 1
        return self.returncode

    def _node_down(self, node_id: str) -> bool:
        import docker

        try:
            node = self._api.inspect_node(node_id)
        except docker.errors.NotFound:
            return True
        return str(node.get("Status", {}).get("State")) == "down"

    def _ended(self, code: int, why: str) -> int:
        self.returncode = code
        if not self.stopping:
            self.ended_outside = why
        return code

    def send_signal(self, signum: int) -> None:
        """Only ending signals can reach a service: they remove it (the kernel was asked to
        shut down over its control channel first). Interrupts go as messages (provisioner)."""
        if signum in (signal.SIGKILL, signal.SIGTERM):
            self.remove()
            return
        raise ProcessLookupError(f"signal {signum} cannot reach a Swarm task")

    def info(self) -> dict[str, Any]:
        return {"runtime": "swarm", "service": self.id}

    def remove(self) -> None:
        import docker

        self.stopping = True
        try:
            self._api.remove_service(self.id)
        except docker.errors.NotFound:
            return

    def logs(self, lines: int = LOG_LINES) -> str:
        """The service's last output, through the manager (the client never sees a worker)."""
        import docker

        try:
            chunks = self._api.service_logs(
                self.id, stdout=True, stderr=True, tail=str(lines), follow=False
            )
            text = b"".join(chunks).decode(errors="replace").strip()
        except docker.errors.DockerException:
            text = ""
        return "\n".join(part for part in (self.error, text) if part)


class SwarmRuntime(DockerRuntime):
    """Kernels as Swarm services of the ``cumulus-job`` image, placed by their GPU's node."""

    name = "swarm"
    signals = False

    def manager_info(self) -> dict[str, Any]:
        swarm = self.client.info().get("Swarm", {})
        if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
            raise Unavailable(
                "The swarm runtime needs the gateway on a Swarm manager (docker swarm init)"
            )
        return dict(swarm)

    def check(self) -> None:
        self.manager_info()
        super().check()

    def devices(self) -> list[Device] | None:
        """The devices of every labelled node that can take a task now, numbered across the
        Swarm (``gpu0``… in node order; the store keeps the numbers it gave first), each with
        its node's id as ``host``."""
        self.manager_info()
        nodes = sorted(self.client.api.nodes(), key=lambda n: _hostname(n) + n["ID"])
        labelled = [(node, raw) for node in nodes if (raw := _devices_label(node))]
        if not labelled:
            raise Unavailable(
                f"No Swarm node has a {DEVICES_LABEL} label: onboard GPU hosts with "
                "scripts/setup-worker.sh"
            )
        entries: list[dict[str, Any]] = []
        for node, raw in labelled:
            if _takes_tasks(node):
                entries += [dict(entry) | {"node": node["ID"]} for entry in _entries(node, raw)]
        with chronos_boundary():
            return load_configured(json.dumps(entries)) if entries else []

    def base_url(self) -> str:
        if self.callback_url:
            return self.callback_url.rstrip("/")
        return self.gateway_url(self.manager_info().get("NodeAddr") or "127.0.0.1")

    def service_options(self, launch: Launch, token: str) -> dict[str, Any]:
        """The Swarm service for one kernel (also what the unit tests check)."""
        import docker
        from docker.utils import parse_bytes

        nodes = {d.host for d in launch.devices}
        if len(nodes) != 1 or None in nodes:
            raise InvalidArgument(
                "A Swarm kernel's devices must all be on one node; this partition spans "
                f"{', '.join(sorted(str(n) for n in nodes))}"
            )
        (node,) = nodes
        env = self.environment(launch, token)
        nvidia = [d.uuid or str(d.index) for d in launch.devices if d.vendor is Vendor.NVIDIA]
        env["NVIDIA_VISIBLE_DEVICES"] = ",".join(nvidia) or "void"
        return {
            "image": self.image,
            "command": ["python", "-m", kernel_code.LAUNCHER, *launch.argv[1:]],
            "name": f"cumulus-kernel-{launch.kernel_id}",
            "labels": {LABEL: launch.kernel_id},
            "container_labels": {LABEL: launch.kernel_id},
            "env": [f"{k}={v}" for k, v in env.items()],
            "user": self.user,
            "workdir": "/work",
            # Swarm (engine 20.10) ignores a tmpfs mount's mode: a tmpfs /work would be root's
            # 0755, so the work directory is the image's own /work (uid 1000, 0700) and /tmp
            # its own (1777), in the task's writable layer, removed with the task
            "read_only": False,
            "init": True,
            "cap_drop": ["ALL"],
            "networks": [self.network],
            "resources": docker.types.Resources(
                cpu_limit=int(self.cpus * 1e9),
                mem_limit=int(parse_bytes(self.memory)),
            ),
            "restart_policy": docker.types.RestartPolicy(condition="none"),
            "constraints": [f"node.id=={node}"],
            "mode": docker.types.ServiceMode("replicated", replicas=1),
        }

    def create(self, launch: Launch, token: str) -> EngineProcess:
        """Create the kernel's service (blocking: runs in a thread)."""
        options = self.service_options(launch, token)
        self.client.images.get(self.image)  # on the manager; a worker without it rejects the task
        return ServiceProcess(self.client, str(self.client.services.create(**options).id))

    def adopt(self, info: Mapping[str, Any]) -> KernelProcess | None:
        if info.get("runtime") != self.name or not info.get("service"):
            return None
        process = ServiceProcess(self.client, str(info["service"]))
        try:
            alive = process.poll() is None
        except CumulusError:
            return None
        return process if alive else None


def _hostname(node: Mapping[str, Any]) -> str:
    return str(node.get("Description", {}).get("Hostname", ""))


def _devices_label(node: Mapping[str, Any]) -> str:
    """The node's ``cumulus.devices``: its engine's label, or the node label set on the
    manager (which wins)."""
    labels = dict(node.get("Description", {}).get("Engine", {}).get("Labels") or {})
    labels |= node.get("Spec", {}).get("Labels") or {}
    return str(labels.get(DEVICES_LABEL) or "")


def _takes_tasks(node: Mapping[str, Any]) -> bool:
    """Ready (its engine answers the managers) and active (not drained, not paused)."""
    ready = node.get("Status", {}).get("State") == "ready"
    return ready and str(node.get("Spec", {}).get("Availability", "active")) == "active"


def _entries(node: Mapping[str, Any], raw: str) -> list[dict[str, Any]]:
    return json_objects(raw, f"node {node['ID'][:12]}: {DEVICES_LABEL}")
