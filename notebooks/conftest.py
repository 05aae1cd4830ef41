"""The notebooks under nbval (``pytest`` collects them with ``--nbval``): a real gateway on
loopback, started once collection is done and before nbval starts any kernel, which all inherit
``CUMULUS_GATEWAY_URL`` / ``CUMULUS_TOKEN``; and the "Cumulus GPU (0.5 GPU, 1h)" kernelspec that
``02-cumulus-kernel.ipynb`` names, installed into a private ``JUPYTER_PATH`` pointing at it.

nbval (0.11) ignores ``update_display_data``, so it would compare a display's first state (a
``%%cumulus`` cell's status says "starting the remote kernel" before "ready" when the start
takes a while) against the final one a notebook stores; `_displays_update_in_place` gives it
the protocol's meaning, as nbclient and JupyterLab do."""

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


def _displays_update_in_place() -> None:
    """An ``update_display_data`` replaces the data of the display it names, in the output
    nbval already collected for it (nbval keeps ``data`` as given when it is a NotebookNode)."""
    from nbformat import NotebookNode, from_dict
    from nbval.kernel import RunningKernel

    original = RunningKernel.get_message
    shown: dict[str, NotebookNode] = {}

    def get_message(self: RunningKernel, stream: str, timeout: float | None = None) -> Any:
        while True:
            msg = original(self, stream, timeout=timeout)
            kind, content = msg["msg_type"], msg["content"]
            display_id = (content.get("transient") or {}).get("display_id")
            if kind == "display_data" and display_id:
                content["data"] = shown[display_id] = from_dict(content["data"])
            elif kind == "update_display_data" and display_id in shown:
                shown[display_id].clear()
                shown[display_id].update(from_dict(content["data"]))
                continue
            return msg

    RunningKernel.get_message = get_message  # type: ignore[method-assign]


def pytest_collection_finish(session: pytest.Session) -> None:
    if not _notebook_items(session.items):
        return
    _displays_update_in_place()
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
