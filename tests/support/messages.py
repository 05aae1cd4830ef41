"""Waiting for particular messages on a jupyter_client kernel client."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jupyter_client.blocking.client import BlockingKernelClient


def shell_reply(kc: BlockingKernelClient, msg_id: str, timeout: float = 60) -> dict[str, Any]:
    """The shell reply to request ``msg_id`` (replies to other requests are skipped)."""
    return next_message(
        kc.get_shell_msg, lambda m: m["parent_header"].get("msg_id") == msg_id, timeout
    )


def iopub_message(
    kc: BlockingKernelClient, predicate: Callable[[dict[str, Any]], bool], timeout: float = 60
) -> dict[str, Any]:
    """The first iopub message that satisfies ``predicate``."""
    return next_message(kc.get_iopub_msg, predicate, timeout)


def next_message(
    get: Callable[..., dict[str, Any]], predicate: Callable[[dict[str, Any]], bool], timeout: float
) -> dict[str, Any]:
    while not predicate(message := get(timeout=timeout)):
        continue
    return message


def status_text(outputs: list[dict[str, Any]]) -> str:
    """Cumulus's status display of a cell (one display updated in place), as last shown."""
    texts: dict[str, str] = {}
    for m in outputs:
        if m["msg_type"] in ("display_data", "update_display_data"):
            display_id = m["content"].get("transient", {}).get("display_id", "")
            if display_id.startswith("cumulus-"):
                texts[display_id] = m["content"]["data"]["text/plain"]
    return "\n".join(texts.values())
