"""A CA of a test's own (trustme), a certificate it signs for the loopback gateway, and a
`Gateway` that serves HTTPS with it."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trustme

from tests.support.gateway import Gateway


@dataclass(frozen=True)
class Pki:
    """The CA's certificate, and the gateway's certificate and key, in files; the CA itself,
    to issue more."""

    ca: Path
    cert: Path
    key: Path
    authority: trustme.CA

    @property
    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


def make_pki(where: Path, *addresses: str) -> Pki:
    """A CA and a certificate it signed for loopback (and ``addresses``), in ``where``."""
    authority = trustme.CA(organization_name="Cumulus test CA")
    issued = authority.issue_cert("127.0.0.1", "localhost", *addresses)
    pki = Pki(where / "ca.pem", where / "gateway.pem", where / "gateway.key", authority)
    authority.cert_pem.write_to_path(str(pki.ca))
    for blob in issued.cert_chain_pems:
        blob.write_to_path(str(pki.cert), append=True)
    issued.private_key_pem.write_to_path(str(pki.key))
    return pki


class HttpsGateway(Gateway):
    """`Gateway` started with ``--certfile``/``--keyfile``: it answers on https:// only."""

    def __init__(
        self,
        tmp: Path,
        pki: Pki,
        *args: str,
        env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.pki = pki
        super().__init__(
            tmp / "state" / "chronos.sqlite3",
            tmp / "gateway.log",
            f"--certfile={pki.cert}",
            f"--keyfile={pki.key}",
            *args,
            env=env,
            host=host,
        )

    def start(self) -> None:
        self.url = self.url.replace("http://", "https://", 1)
        super().start()

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return super().get(path, verify=self.pki.context, **kwargs)

    def post(self, path: str, json: Any = None, **kwargs: Any) -> httpx.Response:
        return super().post(path, json, verify=self.pki.context, **kwargs)

    def delete(self, path: str) -> httpx.Response:
        return httpx.delete(
            self.url + path, headers=self.headers(), timeout=60, verify=self.pki.context
        )
