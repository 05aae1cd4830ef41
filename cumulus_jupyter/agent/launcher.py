"""The first process of a kernel in a job container: it calls the gateway back, then becomes the
kernel.

``python -m cumulus_jupyter.agent.launcher [KERNEL ARGS...]`` (the container's command) does, in
order:

1. find the address the gateway can reach this container at: the local end of a route to the
   callback URL's host (``CUMULUS_KERNEL_IP`` overrides);
2. choose the kernel's ports, a fresh HMAC key and a fresh CurveZMQ key pair there and write
   the connection file into the writable work directory (the keys never appear in the
   container's environment or configuration, which ``docker inspect`` shows to anyone with
   access to the engine). ipykernel binds its five sockets as CurveZMQ servers with that key
   pair and jupyter_client's sockets in the gateway connect with it (both read
   ``curve_publickey``/``curve_secretkey`` from the connection info), so the kernel's messages
   cross the network between hosts encrypted, not only signed;
3. POST the connection info and the data port to ``CUMULUS_CALLBACK_URL`` with the single-use
   per-kernel token from ``CUMULUS_CALLBACK_TOKEN`` (256 bits; the gateway refuses it a second
   time, after its launch timeout, or for another kernel); to an https:// gateway, trusting
   only the certificate it handed over in ``CUMULUS_CALLBACK_CERT`` (`tls.pinned_context`), so
   the keys reach the gateway and nobody else;
4. ``exec`` the kernel command (``KERNEL ARGS`` with ``-f`` pointing at the new connection file;
   ``-m ipykernel_launcher`` when none is given), so signals from the engine reach the kernel.

Any failure ends the container with a one-line reason on stderr (which the gateway shows in the
kernel start's error) and the error class's exit code.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

import zmq
from jupyter_client.connect import write_connection_file

from cumulus_jupyter import tls
from cumulus_jupyter.errors import CumulusError, InvalidArgument, Unavailable, error_for_status
from cumulus_jupyter.protocol import callback, env

CALLBACK_TIMEOUT_S = 30.0


def reachable_ip(url: str) -> str:
    """The local address of a route to ``url``'s host: what that host sees us as."""
    override = os.environ.get(env.KERNEL_IP)
    if override:
        return override
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    try:
        infos = socket.getaddrinfo(host, parts.port or 80, type=socket.SOCK_DGRAM)
        family, _, _, _, address = infos[0]
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(address)  # a UDP connect sends nothing: it only picks the route
            return str(probe.getsockname()[0])
    except OSError as exc:
        raise Unavailable(f"no route to the gateway at {host}: {exc}") from exc


def free_port(ip: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET) as sock:
        sock.bind((ip, 0))
        return int(sock.getsockname()[1])


def kernel_argv(args: Sequence[str], connection_file: str) -> list[str]:
    """The kernel's command with ``-f`` naming our connection file (the gateway formatted it with
    a path on its own host, which means nothing here)."""
    rest = list(args) or ["-m", "ipykernel_launcher", "-f", connection_file]
    for flag in ("-f", "--f", "--KernelApp.connection_file"):
        if flag in rest[:-1]:
            rest[rest.index(flag) + 1] = connection_file
            break
    else:
        rest += ["-f", connection_file]
    return [sys.executable, *rest]


def write_connection(path: str, ip: str) -> dict[str, Any]:
    """Write the kernel's connection file at ``path``: free ports on ``ip``, a fresh HMAC key and
    a fresh CurveZMQ key pair; the connection info (what the callback reports)."""
    curve_public, curve_secret = zmq.curve_keypair()
    _, info = write_connection_file(
        path,
        ip=ip,
        key=secrets.token_hex(32).encode(),
        curve_publickey=curve_public,
        curve_secretkey=curve_secret,
    )
    return dict(info)


def call_back(url: str, token: str, payload: dict[str, Any]) -> None:
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"token {token}"},
    )
    pinned = os.environ.get(env.CALLBACK_CERT)
    context = tls.pinned_context(pinned) if pinned and url.startswith("https://") else None
    try:
        with urllib.request.urlopen(request, timeout=CALLBACK_TIMEOUT_S, context=context) as reply:
            reply.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:300]
        refused = error_for_status(exc.code)
        raise refused(f"the gateway refused the callback: {exc.code} {detail}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise Unavailable(f"cannot reach the gateway at {url}: {exc}") from exc


def prepare(args: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Call the gateway back; the kernel command and environment to exec."""
    url = os.environ.get(env.CALLBACK_URL)
    token = os.environ.get(env.CALLBACK_TOKEN)
    if not url or not token:
        raise InvalidArgument(f"{env.CALLBACK_URL} and {env.CALLBACK_TOKEN} must be set")
    ip = reachable_ip(url)
    workdir = os.environ.get(env.WORKDIR) or tempfile.gettempdir()
    path = os.path.join(workdir, f"kernel-{os.environ.get(env.KERNEL_ID, 'job')}.json")
    info = write_connection(path, ip)
    data_port = free_port(ip)
    call_back(url, token, callback.payload(info, data_port))
    secret = (env.CALLBACK_TOKEN, env.CALLBACK_URL, env.CALLBACK_CERT)
    kernel_env = {k: v for k, v in os.environ.items() if k not in secret}
    kernel_env |= {env.DATA_HOST: ip, env.DATA_PORT: str(data_port)}
    kernel_env.pop(env.DATA_SOCKET, None)  # handed connections need the gateway's host
    return kernel_argv(args, path), kernel_env


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        command, env = prepare(args)
    except CumulusError as exc:
        print(f"cumulus launcher: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(exc.exit_code) from None
    os.execve(command[0], command, env)


if __name__ == "__main__":
    main()
