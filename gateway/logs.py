"""Structured logs: one JSON object per line, for log shippers (``--CumulusGateway.json_logs``).

Fields: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``, and whatever the call
passed as ``extra`` (the supervisor adds ``kernel_id``, ``partition_id`` and ``event``).
"""

from __future__ import annotations

import datetime
import json
import logging
from typing import Any

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry |= {k: v for k, v in vars(record).items() if k not in _STANDARD}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def use_json(logger: logging.Logger) -> None:
    """Format every handler of ``logger`` as JSON lines."""
    for handler in logger.handlers:
        handler.setFormatter(JsonFormatter())
