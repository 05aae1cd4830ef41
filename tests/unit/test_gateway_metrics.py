"""The scheduling metrics as Prometheus scrapes them: device utilization from the free shares,
GPUs held per user (a user who holds nothing any more is dropped), the queue-wait histogram."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from gateway import metrics

pytestmark = pytest.mark.unit


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_utilization_is_the_share_of_capacity_held() -> None:
    metrics.update_devices([("gpu0", 0.25), ("gpu1", 1.0)])
    assert sample("cumulus_device_utilization") == pytest.approx(0.375)


def test_gpus_held_per_user_follow_the_holdings() -> None:
    metrics.update_holders({"ana": 1.5, "bo": 0.2})
    assert sample("cumulus_gpu_held", user="ana") == 1.5
    metrics.update_holders({"bo": 0.4})
    assert sample("cumulus_gpu_held", user="ana") is None
    assert sample("cumulus_gpu_held", user="bo") == 0.4
    metrics.update_holders({})
    assert sample("cumulus_gpu_held", user="bo") is None


def test_queue_waits_are_observed_into_the_histogram() -> None:
    before = sample("cumulus_queue_wait_seconds_count") or 0.0
    metrics.QUEUE_WAIT.observe(0.0)
    metrics.QUEUE_WAIT.observe(120.0)
    assert sample("cumulus_queue_wait_seconds_count") == before + 2
    assert (sample("cumulus_queue_wait_seconds_bucket", le="300.0") or 0) >= 2
