"""The "Cumulus GPU" kernelspecs: one per amount and duration, installed side by side.

Each runs ``python -m cumulus_jupyter.kernel`` (the local proxy) with ``CUMULUS_GPU`` and
``CUMULUS_DURATION`` in its environment, and ``interrupt_mode: message`` so that interrupts
travel to the remote kernel as messages.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

from cumulus_jupyter import tls
from cumulus_jupyter.errors import InvalidArgument, NotFound
from cumulus_jupyter.protocol import env
from cumulus_jupyter.protocol.amounts import format_duration, parse_amount, parse_duration

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
RESOURCES = Path(__file__).resolve().parent.parent / "kernelspec"


def default_name(gpu: float, duration_s: int) -> str:
    return f"cumulus-gpu-{gpu:g}-{format_duration(duration_s)}".lower()


def spec(
    gpu: float,
    duration_s: int,
    gateway: str | None = None,
    sync: bool = False,
    token_file: str | None = None,
) -> dict[str, Any]:
    variables = {env.GPU: f"{gpu:g}", env.DURATION: str(duration_s)}
    if token_file:  # the path of the token, never the token itself
        variables[env.TOKEN_FILE] = token_file
    if sync:
        variables[env.SYNC] = "1"
    if gateway:
        variables[env.GATEWAY_URL] = gateway
    bundle = tls.bundle_path()
    if bundle:  # the CA that the install trusted, for a front end started without it
        variables[env.CA_BUNDLE] = str(Path(bundle).resolve())
    return {
        "argv": [sys.executable, "-m", "cumulus_jupyter.kernel", "-f", "{connection_file}"],
        "display_name": f"Cumulus GPU ({gpu:g} GPU, {format_duration(duration_s)})",
        "language": "python",
        "interrupt_mode": "message",
        "env": variables,
        "metadata": {"cumulus": {"gpu": gpu, "duration_s": duration_s}, "debugger": False},
    }


def install(
    gpu: str | float = "0.5",
    duration: str | int = "1h",
    *,
    name: str | None = None,
    user: bool = False,
    prefix: str | None = None,
    gateway: str | None = None,
    sync: bool = False,
    token_file: str | None = None,
) -> tuple[str, str]:
    """Install a kernelspec; returns (name, directory). Amount and duration are validated by
    the same rules as everywhere else."""
    amount, seconds = parse_amount(gpu), parse_duration(duration)
    name = name or default_name(amount, seconds)
    if not _NAME.fullmatch(name):
        raise InvalidArgument(
            f"Invalid kernelspec name: {name!r}. Use lower-case letters, digits, '.', '_', '-'"
        )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / name
        folder.mkdir()
        (folder / "kernel.json").write_text(
            json.dumps(spec(amount, seconds, gateway, sync, token_file), indent=2)
        )
        for logo in sorted(RESOURCES.glob("logo-*.png")):
            (folder / logo.name).write_bytes(logo.read_bytes())
        where = KernelSpecManager().install_kernel_spec(
            str(folder), kernel_name=name, user=user, prefix=prefix
        )
    return name, where


def uninstall(name: str) -> str:
    manager = KernelSpecManager()
    try:
        return str(manager.remove_kernel_spec(name))
    except (KeyError, NoSuchKernel) as exc:
        raise NotFound(f"No kernelspec named {name}") from exc


def installed() -> dict[str, dict[str, Any]]:
    """Installed Cumulus kernelspecs, by name."""
    specs = KernelSpecManager().get_all_specs()
    return {
        name: entry for name, entry in specs.items()
        if entry["spec"].get("argv", [])[1:3] == ["-m", "cumulus_jupyter.kernel"]
    }  # fmt: skip
