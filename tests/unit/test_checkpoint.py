"""Checkpoints on their own: L1 versions written whole or not at all, hashes checked on load, L2
on a file:// URL (the S3 path runs against a real S3 server in tests/integration)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cumulus_jupyter import checkpoint
from cumulus_jupyter.checkpoint import CheckpointCorrupted
from cumulus_jupyter.errors import InvalidArgument, NotFound, Unavailable

pytestmark = pytest.mark.unit


@pytest.fixture
def l1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = tmp_path / "l1"
    monkeypatch.setenv("CUMULUS_CHECKPOINT_DIR", str(root))
    monkeypatch.delenv("CUMULUS_CHECKPOINT_URL", raising=False)
    monkeypatch.delenv("CUMULUS_CHECKPOINT_OPTIONS", raising=False)
    yield root
    checkpoint.wait_for_copies()


class Model:
    def __init__(self, weights: np.ndarray) -> None:
        self.weights = weights


def test_objects_round_trip_through_their_savers(l1: Path) -> None:
    weights = np.arange(12.0).reshape(3, 4)
    manifest = checkpoint.save("run", {"w": weights, "model": Model(weights), "step": 7},
                               variables=True)  # fmt: skip
    formats = {k: v["format"] for k, v in manifest["files"].items()}
    assert formats == {"w": "numpy", "model": "cloudpickle", "step": "cloudpickle"}
    restored = checkpoint.load("run")
    np.testing.assert_array_equal(restored["w"], weights)
    np.testing.assert_array_equal(restored["model"].weights, weights)
    assert restored["step"] == 7
    assert checkpoint.load("run") is not None and checkpoint.versions("run") == [1]


def test_each_save_is_a_new_version_and_older_ones_stay_loadable(l1: Path) -> None:
    for step in range(3):
        assert checkpoint.save("loop", {"step": step})["version"] == step + 1
    assert checkpoint.load("loop") == {"step": 2}
    assert checkpoint.load("loop", version=1) == {"step": 0}
    assert checkpoint.versions("loop") == [1, 2, 3]


def test_a_corrupted_version_is_refused_and_the_previous_one_is_still_good(l1: Path) -> None:
    checkpoint.save("c", np.ones(1000))
    checkpoint.save("c", np.zeros(1000))
    payload = next((l1 / "c" / "v2").glob("0.*"))
    data = bytearray(payload.read_bytes())
    data[-1] ^= 0xFF
    payload.write_bytes(bytes(data))
    with pytest.raises(
        CheckpointCorrupted, match=r"Checkpoint c v2 is corrupted: .* earlier versions: 1"
    ):
        checkpoint.load("c")
    np.testing.assert_array_equal(checkpoint.load("c", version=1), np.ones(1000))


def test_a_full_disk_leaves_the_previous_checkpoint_whole(l1: Path) -> None:
    checkpoint.save("big", np.ones(10))
    # a real write failure: the file size limit (EFBIG) stops the second save mid-write
    code = (
        "import resource, signal, numpy as np\n"
        "from cumulus_jupyter import checkpoint\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))\n"
        "try:\n"
        "    checkpoint.save('big', np.zeros(2**20))\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=os.environ.copy(), timeout=60)  # fmt: skip
    assert done.stdout.startswith("Unavailable Cannot write checkpoint big"), done.stderr
    assert "File too large; the previous checkpoint is unchanged" in done.stdout
    np.testing.assert_array_equal(checkpoint.load("big"), np.ones(10))
    assert sorted(p.name for p in (l1 / "big").iterdir()) == ["latest", "v1"]  # no partial


def test_l2_holds_a_copy_that_load_uses_when_l1_is_gone(
    l1: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUMULUS_CHECKPOINT_URL", (tmp_path / "l2").as_uri())
    checkpoint.save("moved", {"a": np.arange(5), "b": "text"}, variables=True, wait_l2=True)
    manifest = json.loads((tmp_path / "l2" / "moved" / "v1" / "manifest.json").read_text())
    assert manifest["version"] == 1
    import shutil

    shutil.rmtree(l1)  # the GPU host's disk is gone: a new host resumes from L2
    restored = checkpoint.load("moved")
    np.testing.assert_array_equal(restored["a"], np.arange(5))
    assert restored["b"] == "text" and (l1 / "moved" / "v1" / "manifest.json").exists()


def test_missing_checkpoints_and_bad_names_say_so(l1: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    with pytest.raises(NotFound, match="No checkpoint nothing on this host, and no"):
        checkpoint.load("nothing")
    monkeypatch.setenv("CUMULUS_CHECKPOINT_URL", (tmp_path / "empty").as_uri())
    with pytest.raises(NotFound, match="No checkpoint nothing on this host or in file://"):
        checkpoint.load("nothing")
    with pytest.raises(InvalidArgument, match=r"Invalid checkpoint name: '\.\./x'"):
        checkpoint.save("../x", 1)


def test_an_unreachable_l2_keeps_the_l1_checkpoint_and_says_so(
    l1: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("s3fs", reason="s3fs is part of the test extra")
    monkeypatch.setenv("CUMULUS_CHECKPOINT_URL", "s3://nowhere/ckpt")
    monkeypatch.setenv("CUMULUS_CHECKPOINT_OPTIONS", json.dumps({
        "endpoint_url": "http://127.0.0.1:9", "key": "k", "secret": "s",
        "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1},
    }))  # fmt: skip
    with pytest.raises(
        Unavailable, match=r"Copying checkpoint local v1 to s3://nowhere/ckpt failed.*on L1 only"
    ):
        checkpoint.save("local", [1, 2, 3], wait_l2=True)
    assert checkpoint.load("local") == [1, 2, 3]
    with pytest.raises(
        Unavailable, match="Cannot read checkpoint elsewhere from s3://nowhere/ckpt"
    ):
        checkpoint.load("elsewhere")


def test_framework_models_are_stored_by_their_own_savers(l1: Path) -> None:
    import lightgbm
    import torch
    import xgboost
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x, y = rng.random((64, 3)), np.arange(64) % 2
    net = torch.nn.Linear(3, 2)
    booster = xgboost.train({"max_depth": 2}, xgboost.DMatrix(x, label=y), num_boost_round=2)
    light = lightgbm.train({"verbose": -1, "num_leaves": 4}, lightgbm.Dataset(x, label=y), 2)
    sk = LogisticRegression().fit(x, y)
    manifest = checkpoint.save(
        "models", {"net": net, "state": net.state_dict(), "xgb": booster, "lgb": light, "sk": sk},
        variables=True,
    )  # fmt: skip
    formats = {k: v["format"] for k, v in manifest["files"].items()}
    assert formats == {"net": "torch", "state": "torch", "xgb": "xgboost", "lgb": "lightgbm",
                       "sk": "cloudpickle"}  # fmt: skip
    back = checkpoint.load("models")
    for key in ("net", "state"):  # a module is stored as its state dict
        assert torch.equal(back[key]["weight"], net.state_dict()["weight"])
    probe = xgboost.DMatrix(x[:4])
    np.testing.assert_allclose(back["xgb"].predict(probe), booster.predict(probe))
    np.testing.assert_allclose(back["lgb"].predict(x[:4]), light.predict(x[:4]))
    np.testing.assert_array_equal(back["sk"].predict(x), sk.predict(x))
