"""TLS to the gateway: the one SSL context every client of ours verifies the gateway with.

A gateway given a certificate (jupyter_server's own ``--certfile``/``--keyfile``) serves
``https://`` and ``wss://``. The REST client, the kernel WebSocket (magic, proxy kernel,
``run``, CLI) and the data path all take their context from `client_context`, so they trust
the same certificates:

- ``CUMULUS_CA_BUNDLE`` (or an explicit ``ca_bundle``): a PEM file of the CA certificates to
  trust, *instead of* the system's (a private CA for a cluster's gateway);
- otherwise the system trust store, as Python's ``ssl`` finds it (``SSL_CERT_FILE`` and
  ``SSL_CERT_DIR`` apply).

Certificates are always verified and host names always checked; there is no switch to turn that
off. `refusal` turns a TLS failure, wherever it sits in an exception's chain, into a sentence
that says what to do.
"""

from __future__ import annotations

import functools
import os
import ssl
from pathlib import Path

from cumulus_jupyter.errors import InvalidArgument
from cumulus_jupyter.protocol import env


def bundle_path(ca_bundle: str | None = None) -> str | None:
    """The CA bundle in force: ``ca_bundle``, else ``CUMULUS_CA_BUNDLE``, else None (system)."""
    chosen = ca_bundle or os.environ.get(env.CA_BUNDLE) or None
    return str(Path(chosen).expanduser()) if chosen else None


def client_context(ca_bundle: str | None = None) -> ssl.SSLContext:
    """The verifying client context for ``ca_bundle`` (see `bundle_path`), built once per file.
    Raises `InvalidArgument` when the bundle cannot be read or holds no certificate."""
    return _context(bundle_path(ca_bundle))


@functools.lru_cache(maxsize=8)
def _context(path: str | None) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=path)
    except FileNotFoundError as exc:
        raise InvalidArgument(f"{env.CA_BUNDLE} {path} does not exist") from exc
    except (OSError, ssl.SSLError) as exc:
        raise InvalidArgument(
            f"{env.CA_BUNDLE} {path} is not a readable PEM file of CA certificates: {exc}"
        ) from exc


def pinned_context(certificate: str) -> ssl.SSLContext:
    """A context that trusts exactly one server certificate (PEM) and nothing else: a kernel's
    launcher calling back an https:// gateway, which handed it its own certificate
    (``CUMULUS_CALLBACK_CERT``). The certificate is the only trust anchor (a partial chain),
    so the host name is not checked: the callback reaches the gateway by an address (a node's
    IP) that its certificate need not name, and only the holder of that certificate's key
    can answer."""
    context = ssl.create_default_context(cadata=certificate)
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    context.check_hostname = False
    return context


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def refusal(exc: BaseException, url: str) -> str | None:
    """What went wrong, if ``exc`` (or what caused it) is a TLS failure talking to ``url``."""
    for cause in _chain(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            why = cause.verify_message or cause.reason or "not verified"
            return (
                f"The gateway at {url} presented a certificate this client does not trust "
                f"({why}); set {env.CA_BUNDLE} to the PEM file of the CA that signed it"
            )
        if isinstance(cause, ssl.SSLError):
            return f"TLS with the gateway at {url} failed: {cause.reason or cause}"
    return None
