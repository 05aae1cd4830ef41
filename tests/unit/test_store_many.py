"""`Store.get_many`: every kernel's partition in one read, ended ones included."""

from __future__ import annotations

import pytest

from chronos import Store

pytestmark = pytest.mark.unit


def test_get_many_reads_active_and_ended_partitions_and_skips_unknown_ids(store: Store) -> None:
    kept = store.create("0.2", "10m", owner="a")
    ended = store.create("0.3", "10m", owner="b")
    store.release(ended.id, "done")
    found = store.get_many([kept.id, ended.id, "p-000000000000"])
    assert set(found) == {kept.id, ended.id}
    assert found[kept.id].is_active and not found[ended.id].is_active
    assert found[ended.id].owner == "b" and store.get_many([]) == {}
