"""gateway.auth on its own: secret files, who is scoped, what a hub's answer must say, the cache;
and the clients' fallback to a hub server's JUPYTERHUB_API_TOKEN (the real hub: tests/hub)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import httpx
import pytest
from jupyter_server.auth.identity import User

from cumulus_jupyter.connection import GatewaySettings
from cumulus_jupyter.errors import InvalidArgument
from gateway.auth import CumulusIdentityProvider, HubUsers, ScopedUser, read_secret

pytestmark = pytest.mark.unit

LOG = logging.getLogger("test")


def secret(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "secret"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_a_secret_file_is_read_only_when_only_its_owner_can_read_it(tmp_path: Path) -> None:
    assert read_secret(str(secret(tmp_path, "s3cret\n"))) == "s3cret"
    open_file = secret(tmp_path, "s3cret", 0o644)
    with pytest.raises(InvalidArgument, match=r"can be read by others \(mode 0644\); chmod 600"):
        read_secret(str(open_file))
    with pytest.raises(InvalidArgument, match="is empty"):
        read_secret(str(secret(tmp_path, "  \n")))
    with pytest.raises(InvalidArgument, match="Cannot read the secret file"):
        read_secret(str(tmp_path / "absent"))


def test_the_operator_token_and_user_tokens_come_from_files(tmp_path: Path) -> None:
    (tmp_path / "op").write_text("operator-token")
    (tmp_path / "op").chmod(0o600)
    users = secret(tmp_path, json.dumps({"ana-token": "ana"}))
    provider = CumulusIdentityProvider(
        token_file=str(tmp_path / "op"),
        user_tokens={"bo-token": "bo"},
        user_tokens_file=str(users),
        hub_api_url="",
    )
    assert (provider.token, provider.token_generated) == ("operator-token", False)
    assert provider._user_tokens == {"bo-token": "bo", "ana-token": "ana"}
    assert provider.scopes_users and provider.hub is None
    with pytest.raises(InvalidArgument, match="must be"):
        CumulusIdentityProvider(user_tokens_file=str(secret(tmp_path, '["ana"]')))


def test_only_scoped_users_are_scoped() -> None:
    provider = CumulusIdentityProvider(hub_api_url="")
    assert provider.scoped_name(ScopedUser(username="ana", via="hub")) == "ana"
    assert provider.scoped_name(User(username="ana")) is None  # the operator, whatever the name
    assert provider.scoped_name(None) is None


@pytest.mark.parametrize(
    ("model", "name"),
    [
        ({"kind": "user", "name": "ana", "scopes": ["access:services!service=cumulus"]}, "ana"),
        ({"kind": "user", "name": "ana", "scopes": ["access:services"]}, "ana"),
        ({"kind": "user", "name": "ana", "scopes": ["access:services!service=other"]}, None),
        ({"kind": "user", "name": "ana", "scopes": ["read:users:name!user=ana"]}, None),
        ({"kind": "service", "name": "ana", "scopes": ["access:services"]}, None),
        ({"kind": "user", "name": "", "scopes": ["access:services"]}, None),
        ({"kind": "user", "name": "ana"}, "ana"),  # a hub from before scopes
    ],
)
def test_what_the_hubs_answer_must_say(model: dict[str, object], name: str | None) -> None:
    assert HubUsers("http://hub/hub/api", "cumulus", 60, LOG)._name(model) == name


def test_a_hub_users_token_is_asked_once_per_cache_period_and_a_refusal_is_not_kept() -> None:
    asked: list[str] = []

    def hub(request: httpx.Request) -> httpx.Response:
        token = request.headers["Authorization"].removeprefix("token ")
        asked.append(token)
        if token != "ana-hub-token":
            return httpx.Response(403, json={"message": "Forbidden"})
        return httpx.Response(
            200, json={"kind": "user", "name": "ana", "scopes": ["access:services"]}
        )

    async def run() -> list[str | None]:
        users = HubUsers("http://hub/hub/api/", "cumulus", 60, LOG)
        users._http = httpx.AsyncClient(transport=httpx.MockTransport(hub))
        try:
            names = [await users.name_for(t) for t in ("ana-hub-token", "ana-hub-token", "x", "x")]
        finally:
            await users._http.aclose()
        return names

    assert asyncio.run(run()) == ["ana", "ana", None, None]
    assert asked == ["ana-hub-token", "x", "x"]


def test_clients_use_a_hub_servers_token_only_for_a_named_gateway(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("CUMULUS_TOKEN", "CUMULUS_TOKEN_FILE", "CUMULUS_GATEWAY_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "hub-server-token")
    assert GatewaySettings.resolve().token == ""  # never to the default 127.0.0.1:8888
    assert GatewaySettings.resolve("http://gpu:8888").token == "hub-server-token"
    monkeypatch.setenv("CUMULUS_GATEWAY_URL", "http://gpu:8888")
    assert GatewaySettings.resolve().token == "hub-server-token"
    monkeypatch.setenv("CUMULUS_TOKEN", "own")
    assert GatewaySettings.resolve().token == "own"
