"""The notebooks under nbval (``pytest`` collects them with ``--nbval``): a real gateway on
loopback, started once collection is done and before nbval starts any kernel, which all inherit
``CUMULUS_GATEWAY_URL`` / ``CUMULUS_TOKEN``; and the "Cumulus GPU (0.5 GPU, 1h)" kernelspec that
``02-cumulus-kernel.ipynb`` names, installed into a private ``JUPYTER_PATH`` pointing at it."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

_started: dict[str, Any] = {}


def _notebook_items(items: list[pytest.Item]) -> list[pytest.Item]:
    return [item for item in items if str(item.path).endswith(".ipynb")]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in _notebook_items(items):
        item.add_marker(pytest.mark.notebook)
        item.add_marker(pytest.mark.timeout(300))  # 05 waits out a one-minute partition


def pytest_collection_finish(session: pytest.Session) -> None:
    if not _notebook_items(session.items):
        return
    from cumulus_jupyter.kernelspec import install
    from tests.support.gateway import Gateway

    home = Path(tempfile.mkdtemp(prefix="cumulus-notebooks-"))
    _started["home"] = home
    gateway = Gateway(home / "state" / "chronos.sqlite3", home / "gateway.log")
    _started["gateway"] = gateway
    token_file = home / "token"
    token_file.write_text(gateway.token)
    token_file.chmod(0o600)
    install("0.5", "1h", prefix=str(home), gateway=gateway.url, token_file=str(token_file))
    os.environ["CUMULUS_GATEWAY_URL"] = gateway.url
    os.environ["CUMULUS_TOKEN"] = gateway.token
    os.environ["JUPYTER_PATH"] = os.pathsep.join(
        filter(None, [str(home / "share" / "jupyter"), os.environ.get("JUPYTER_PATH")])
    )


def pytest_sessionfinish(session: pytest.Session) -> None:
    gateway = _started.pop("gateway", None)
    if gateway is not None:
        gateway.stop()
    home = _started.pop("home", None)
    if home is not None:
        shutil.rmtree(home, ignore_errors=True)
