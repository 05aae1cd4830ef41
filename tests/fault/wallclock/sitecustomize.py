"""A wall clock that a test can step, for the process it is put in (on its ``PYTHONPATH``):
`time.time` and `time.time_ns` read the offset in seconds from the file named by
``CUMULUS_FAULT_CLOCK_OFFSET`` at every call, as libfaketime reads its timestamp file;
`time.monotonic` is left alone, as a real step of the system clock leaves it. The machine's
clock is never touched."""

from __future__ import annotations

import os
import time

_OFFSET_FILE = os.environ.get("CUMULUS_FAULT_CLOCK_OFFSET")
_real_time, _real_time_ns = time.time, time.time_ns


def _offset() -> float:
    try:
        with open(_OFFSET_FILE or "") as f:
            return float(f.read() or 0)
    except (OSError, ValueError):
        return 0.0


def _stepped_time() -> float:
    return _real_time() + _offset()


def _stepped_time_ns() -> int:
    return _real_time_ns() + int(_offset() * 1e9)


if _OFFSET_FILE:
    time.time, time.time_ns = _stepped_time, _stepped_time_ns
