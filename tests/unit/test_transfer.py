"""Values surviving the trip (pickle-5 buffers out of band), fingerprints, module pickling."""

from __future__ import annotations

import sys
import threading
import types
from typing import Any

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


def test_a_notebook_function_travels_rebound_to_the_receiving_namespace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    notebook: dict[str, object] = {"__builtins__": __builtins__, "rate": 2, "log": []}
    exec(
        "def cost(v):\n    return v * rate\n"
        "def note(v):\n    global last\n    log.append(v)\n    last = v\n"
        "def forget():\n    global last\n    del last",
        notebook,
    )
    assert transfer.notebook_globals(notebook["note"], notebook) == (
        {"log"}, {"last"}, set()
    )  # fmt: skip
    assert transfer.notebook_globals([notebook["forget"]], notebook)[2] == {"last"}
    receiving = types.ModuleType("__main__")  # the loading side's namespace (no IPython here)
    remote = vars(receiving)
    remote.update(rate=5, log=[])
    monkeypatch.setitem(sys.modules, "__main__", receiving)
    payload, buffers = transfer.dumps("cost", notebook["cost"], notebook)
    cost = transfer.loads(payload, buffers)
    assert cost(10) == 50  # it reads the remote namespace, not a copy of the notebook's
    payload, buffers = transfer.dumps("note", notebook["note"], notebook)
    note = transfer.loads(payload, buffers)
    note(7)
    assert remote["log"] == [7] and remote["last"] == 7
    assert remote["__builtins__"] is sys.modules["builtins"]  # not cloudpickle's own
    fresh = types.ModuleType("__main__")
    monkeypatch.setitem(sys.modules, "__main__", fresh)
    transfer.loads(*transfer.dumps("cost", notebook["cost"], notebook))
    assert vars(fresh)["rate"] == 2  # a global the receiving side lacks is filled in


def test_without_a_namespace_functions_keep_their_own_globals() -> None:
    notebook: dict[str, object] = {"__builtins__": __builtins__, "rate": 2}
    exec("def cost(v):\n    return v * rate", notebook)
    cost = transfer.loads(*transfer.dumps("cost", notebook["cost"]))
    notebook["rate"] = 3
    assert cost(10) == 20  # cloudpickle's copy (the function API's way)


def test_a_description_carries_the_fingerprint() -> None:
    value = {"a": np.arange(3)}
    assert transfer.describe(value)["fingerprint"] == transfer.fingerprint(
        *transfer.dumps("v", value)
    )


def test_a_scan_under_way_holds_back_every_other_thread_until_it_is_done(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`map` pickles calls in several threads: one that asks while another thread scans must
    not pickle before the new local module is registered by value (it went by reference, and
    the remote kernel could not import it)."""
    (tmp_path / "scanned_helpers.py").write_text("def double(x):\n    return 2 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    __import__("scanned_helpers")
    seen_at_return: list[bool] = []
    real_register = transfer.cloudpickle.register_pickle_by_value
    other: list[threading.Thread] = []

    def register_slowly(module: types.ModuleType) -> None:
        if not other:  # the first registration: another thread asks meanwhile
            other.append(threading.Thread(target=ask))
            other[0].start()
            other[0].join(timeout=0.2)  # an early return would happen now
        real_register(module)

    def ask() -> None:
        transfer.register_local_modules()
        seen_at_return.append("scanned_helpers" in transfer._by_value)

    monkeypatch.setattr(transfer.cloudpickle, "register_pickle_by_value", register_slowly)
    monkeypatch.setitem(transfer._scanned, "modules", 0)
    try:
        transfer.register_local_modules()
        other[0].join()
        assert seen_at_return == [True]
    finally:
        transfer.cloudpickle.unregister_pickle_by_value(sys.modules.pop("scanned_helpers"))
        transfer._by_value.discard("scanned_helpers")


def test_values_that_share_objects_arrive_sharing_them() -> None:
    """``opt = SGD(model.params())``: sent together, the optimizer's list still holds the
    model's own weights on the other side; plain data travels on its own."""
    weights = [0.0, 0.0]
    model = {"w": weights}
    opt = {"params": weights, "lr": 0.1}
    entries, frames = transfer.pack_namespace(
        {"model": model, "opt": opt, "n": 3, "name": "run-1", "blob": b"x" * 10}
    )
    assert [e.get("names") for e in entries if "names" in e] == [["model", "opt"]]
    assert sorted(e["name"] for e in entries if "name" in e) == ["blob", "n", "name"]
    back = transfer.unpack_namespace(entries, frames)
    assert back["opt"]["params"] is back["model"]["w"]
    back["opt"]["params"][0] += 1.0
    assert back["model"]["w"] == [1.0, 0.0]
    assert (back["n"], back["name"], back["blob"]) == (3, "run-1", b"x" * 10)


def test_one_shareable_value_travels_alone() -> None:
    entries, frames = transfer.pack_namespace({"only": [1, 2], "n": 1})
    assert all("name" in e for e in entries)
    assert transfer.unpack_namespace(entries, frames) == {"only": [1, 2], "n": 1}


def test_an_unchanged_value_sharing_state_with_a_changed_one_goes_with_it() -> None:
    """``opt = SGD(model.params(), lr=0.01)`` made anew while ``model`` is as the remote holds
    it: sent alone, the remote's new optimizer would step copies of the weights."""
    import numpy as np

    weights, other = np.zeros(3), np.ones(3)
    values: dict[str, object] = {
        "model": {"w": weights}, "opt": {"params": [weights]}, "data": {"x": other}
    }  # fmt: skip
    ledger = transfer.Ledger()
    ledger.namespace = values
    sent, prints = ledger.changes(values)
    ledger.sent(prints)
    assert sorted(sent) == ["data", "model", "opt"]
    assert ledger.changes(values) == ({}, {})  # nothing changed: nothing goes
    values["opt"] = {"params": [weights], "lr": 0.01}
    again, _ = ledger.changes(values)
    assert sorted(again) == ["model", "opt"]  # not data: it shares nothing with them
    entries, frames = transfer.pack_namespace({n: values[n] for n in again}, again, values)
    back = transfer.unpack_namespace(entries, frames)
    assert back["opt"]["params"][0] is back["model"]["w"]  # type: ignore[index]
