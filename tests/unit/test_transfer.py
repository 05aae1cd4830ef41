"""Values surviving the trip (pickle-5 buffers out of band), fingerprints, module pickling."""

from __future__ import annotations

import numpy as np
import pytest

from cumulus_jupyter import transfer
from cumulus_jupyter.errors import InvalidArgument

pytestmark = pytest.mark.unit


def round_trip(value: object) -> object:
    entries, frames = transfer.pack_namespace({"v": value})
    return transfer.unpack_namespace(entries, frames)["v"]


def test_numpy_arrays_travel_out_of_band() -> None:
    big = np.arange(2_000_000, dtype=np.float64)
    payload, buffers = transfer.dumps("big", big)
    assert (
        len(payload) < 1_000 and sum(b.raw().nbytes for b in buffers) == big.nbytes
    )  # no copy in the pickle
    for value in (
        big,
        big[::3],
        np.array(2.5, dtype=np.float32),
        np.array([{"a": 1}, None], dtype=object),
    ):
        back = round_trip(value)
        assert (
            isinstance(back, np.ndarray) and back.dtype == value.dtype and back.shape == value.shape
        )
        assert all(
            a == b for a, b in zip(back.ravel().tolist(), value.ravel().tolist(), strict=True)
        )


def test_nested_containers_closures_and_classes() -> None:
    factor = 3

    def scaled(n: int) -> int:
        return n * factor

    class Point:
        def __init__(self, x: int) -> None:
            self.x = x

    back = round_trip(
        {"list": [1, (2, 3)], "fn": scaled, "cls": Point, "obj": Point(4), "lam": lambda q: q + 1}
    )
    assert back["list"] == [1, (2, 3)] and back["fn"](5) == 15 and back["lam"](1) == 2  # type: ignore[index]
    assert back["obj"].x == 4 and back["cls"](9).x == 9  # type: ignore[index]


def test_an_unpicklable_value_names_the_variable() -> None:
    with pytest.raises(InvalidArgument, match=r"Cannot send 'gen' \(generator\)"):
        transfer.dumps("gen", (i for i in range(3)))


def test_fingerprints_change_only_with_the_value() -> None:
    a = np.arange(10)
    first = transfer.fingerprint(*transfer.dumps("a", a))
    assert transfer.fingerprint(*transfer.dumps("a", a)) == first
    a[3] = 99
    assert transfer.fingerprint(*transfer.dumps("a", a)) != first


def test_version_guard() -> None:
    here = {"python": "3.11", "cloudpickle": "3.1.2", "dill": "0.4.1", "numpy": "2.4.6"}
    assert transfer.compare_versions(here, dict(here)) == ([], [])
    errors, warnings = transfer.compare_versions(here, here | {"python": "3.12", "numpy": "1.26.4"})
    assert errors == ["python 3.11 here, 3.12 in the remote kernel"]
    assert warnings == ["numpy 2.4.6 here, 1.26.4 in the remote kernel"]
    errors, _ = transfer.compare_versions(here, here | {"cloudpickle": "2.2.1"})
    assert errors == ["cloudpickle 3.1.2 here, 2.2.1 in the remote kernel"]
    assert transfer.versions()["python"].count(".") == 1


def test_pandas_frames_round_trip() -> None:
    import pandas as pd

    frame = pd.DataFrame({"a": np.arange(1000), "b": np.linspace(0, 1, 1000), "c": ["x"] * 1000})
    frame.index = pd.date_range("2026-01-01", periods=1000, freq="h")
    back = round_trip(frame)
    assert isinstance(back, pd.DataFrame)
    pd.testing.assert_frame_equal(back, frame)
