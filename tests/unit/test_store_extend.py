"""`Store.extend`: an active partition's expiry moves later in one transaction; an ended,
unknown or too-long one is refused with Chronos's own errors, and nothing changes then."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chronos import Device, InvalidArgument, NotFound, PartitionEnded, Store

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clocked(tmp_path: Path, four_devices: list[Device]) -> tuple[Store, Clock]:
    clock = Clock()
    return Store(four_devices, tmp_path / "chronos.sqlite3", clock=clock), clock


def test_extend_moves_the_expiry_and_keeps_the_partition_alive(
    clocked: tuple[Store, Clock],
) -> None:
    store, clock = clocked
    partition = store.create("0.5", "10m", owner="ana")
    extended = store.extend(partition.id, 1800)
    assert extended.expires_at == partition.expires_at + 1800
    assert extended.devices == partition.devices and extended.is_active
    clock.now += 600 + 1  # past the first expiry, before the new one
    store.reap()
    assert store.get(partition.id).is_active
    assert store.used() == {partition.devices[0]: 5}


def test_an_expired_or_released_partition_cannot_be_extended(
    clocked: tuple[Store, Clock],
) -> None:
    store, clock = clocked
    expired = store.create("0.5", "60", owner="ana")
    clock.now += 61
    with pytest.raises(PartitionEnded, match="expired"):
        store.extend(expired.id, 600)
    released = store.release(store.create("0.2", "10m").id)
    with pytest.raises(PartitionEnded, match="released"):
        store.extend(released.id, 600)
    with pytest.raises(NotFound):
        store.extend("p-000000000000", 600)


@pytest.mark.parametrize("seconds", [0, -5, float("nan"), float("inf")])
def test_a_non_positive_extension_is_invalid(clocked: tuple[Store, Clock], seconds: float) -> None:
    store, _ = clocked
    partition = store.create("0.5", "10m")
    with pytest.raises(InvalidArgument, match="positive number of seconds"):
        store.extend(partition.id, seconds)
    assert store.get(partition.id).expires_at == partition.expires_at


def test_a_partition_lasts_at_most_a_day_however_it_is_extended(
    clocked: tuple[Store, Clock],
) -> None:
    store, _ = clocked
    partition = store.create("1", "23h")
    with pytest.raises(InvalidArgument, match=r"extended by 1h at most"):
        store.extend(partition.id, 2 * 3600)
    assert store.extend(partition.id, 3600).expires_at == partition.created_at + 86_400
    assert store.get(partition.id).expires_at == partition.created_at + 86_400


def test_the_cli_extends_and_exits_3_for_an_ended_partition(
    state_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from chronos import cli

    assert cli.main(["create", "any", "0.1", "10m", "--json"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert cli.main(["extend", created["id"], "30m", "--json"]) == 0
    extended = json.loads(capsys.readouterr().out)
    assert extended["expires_at"] == created["expires_at"] + 1800
    assert cli.main(["release", created["id"]]) == 0
    assert cli.main(["extend", created["id"], "30m"]) == 3
    assert "already released" in capsys.readouterr().err
