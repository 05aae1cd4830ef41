from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gateway import Gateway


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    gw = Gateway(tmp_path / "state" / "chronos.sqlite3", tmp_path / "gateway.log")
    try:
        yield gw
    finally:
        gw.stop()
