"""The callback a kernel in a job container makes to the gateway: its ports, key and data port.

The launcher (`cumulus_jupyter.agent.launcher`) builds the body with `payload` and POSTs it to
`path` with ``Authorization: token <single-use token>``; the gateway checks it with `checked`
before spending the token.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from cumulus_jupyter.errors import InvalidArgument

CONNECTION_KEYS = ("ip", "key", "shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
_PORTS = CONNECTION_KEYS[2:]


_CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def leaf_certificate(pem: str) -> str:
    """The first certificate of a server's certificate file (its own; the file may also hold
    the chain and the private key, neither of which a kernel gets): what the launcher pins."""
    found = _CERTIFICATE.search(pem)
    if found is None:
        raise InvalidArgument("the gateway's certificate file holds no PEM certificate")
    return found.group(0) + "\n"


def path(kernel_id: str) -> str:
    """The callback endpoint, under the gateway's base URL."""
    return f"/api/cumulus/kernels/{kernel_id}/callback"


def payload(connection_info: Mapping[str, Any], data_port: int | None) -> dict[str, Any]:
    info = {k: v.decode() if isinstance(v, bytes) else v for k, v in connection_info.items()}
    return {"connection_info": info, "data_port": data_port}


def _is_port(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536


def checked(body: object) -> dict[str, Any]:
    """``body`` if it is a well-formed callback; `InvalidArgument` naming what is wrong."""
    if not isinstance(body, dict):
        raise InvalidArgument("the callback body must be a JSON object")
    info = body.get("connection_info")
    if not isinstance(info, dict) or any(k not in info for k in CONNECTION_KEYS):
        raise InvalidArgument(f"connection_info must have {', '.join(CONNECTION_KEYS)}")
    for name in _PORTS:
        if not _is_port(info[name]):
            raise InvalidArgument(f"connection_info.{name} must be a port number")
    port = body.get("data_port")
    if port is not None and not _is_port(port):
        raise InvalidArgument("data_port must be a port number")
    return body
