"""The proxy kernel's process: its command line, its connection file, its options.

Installed kernelspecs run ``python -m cumulus_jupyter.kernel -f CONNECTION_FILE`` with the
options in the environment (``CUMULUS_GPU``, ``CUMULUS_DURATION``, ``CUMULUS_SYNC``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from cumulus_jupyter.connection import GatewaySettings
from cumulus_jupyter.errors import CumulusError
from cumulus_jupyter.kernel.link import KernelOptions
from cumulus_jupyter.kernel.proxy import ProxyKernel

#: what a connection file must hold
CONNECTION_KEYS = ("ip", "key", "shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")


def read_connection_file(path: str) -> dict[str, Any]:
    """The connection file's dict; raises OSError, ValueError or KeyError when it is unusable."""
    with open(path) as f:
        connection: dict[str, Any] = json.load(f)
    for key in CONNECTION_KEYS:
        connection[key]
    return connection


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cumulus_jupyter.kernel")
    parser.add_argument("-f", "--connection-file", required=True)
    args, _ = parser.parse_known_args(argv)
    try:
        connection = read_connection_file(args.connection_file)
    except (OSError, ValueError, KeyError) as exc:
        print(
            f"Cumulus kernel: bad connection file {args.connection_file}: {exc!r}", file=sys.stderr
        )
        return 2
    try:
        settings = GatewaySettings.resolve()
    except CumulusError as exc:
        print(f"Cumulus kernel: {exc}", file=sys.stderr)
        return 2
    sidecar = Path(args.connection_file).with_suffix(".cumulus.json")
    asyncio.run(ProxyKernel(connection, settings, KernelOptions.from_env(), sidecar).run())
    return 0
