"""The integration tier's fixtures (the gateway fixture is the root conftest's)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.s3 import moto_s3


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """moto's S3 server on loopback with a bucket ``ckpt``; the fsspec options to reach it."""
    with moto_s3(tmp_path_factory.mktemp("s3")) as options:
        yield options
