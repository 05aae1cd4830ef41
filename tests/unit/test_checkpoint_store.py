"""The gateway's side of checkpoints on its own: each owner's prefix and L1 directory, the
kernels' checkpoint tokens, immutable complete versions (L2 on a file:// URL here; S3 in
tests/integration/test_checkpoint_users.py)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from cumulus_jupyter.errors import Conflict, InvalidArgument, NotFound
from gateway.checkpoints import CheckpointStore, l1_dir, owner_dir

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("owner", "component"),
    [("ana", "ana"), ("a.b", "a%2Eb"), ("..", "%2E%2E"), ("../bob", "%2E%2E%2Fbob"),
     ("é", "%C3%A9"), ("", "%00"), ("x%2E", "x%252E")],
)  # fmt: skip
def test_an_owner_is_one_path_component_that_no_other_owner_shares(
    owner: str, component: str
) -> None:
    assert owner_dir(owner) == component
    assert l1_dir(Path("/l1"), owner) == Path("/l1") / component


def test_tokens_name_their_owner_and_cannot_be_forged(tmp_path: Path) -> None:
    store = CheckpointStore.from_environment(tmp_path)
    token = store.token("ana")
    assert store.owner_of(token) == "ana"
    forged = b"bob".hex() + "." + token.split(".")[1]
    assert store.owner_of(forged) is None and store.owner_of("junk") is None
    assert store.owner_of("zz.00") is None
    key = tmp_path / "checkpoint.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    again = CheckpointStore.from_environment(tmp_path)  # a restarted gateway: same key
    assert again.owner_of(token) == "ana"


def test_each_owner_reads_and_writes_only_its_own_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUMULUS_CHECKPOINT_URL", (tmp_path / "l2").as_uri())
    store = CheckpointStore.from_environment(tmp_path)
    store.write("ana", "run", 1, "0.numpy", b"weights")
    assert store.versions("ana", "run") == []  # no manifest yet: not complete
    store.write("ana", "run", 1, "manifest.json", b"{}")
    assert store.versions("ana", "run") == [1]
    assert store.names("ana") == [{"name": "run", "versions": [1]}]
    assert store.names("bob") == [] and store.versions("bob", "run") == []
    with pytest.raises(NotFound):
        store.read("bob", "run", 1, "0.numpy")
    with pytest.raises(Conflict, match="never rewritten"):
        store.write("ana", "run", 1, "0.numpy", b"other")
    assert store.read("ana", "run", 1, "0.numpy") == b"weights"
    assert (tmp_path / "l2" / "ana" / "run" / "v1" / "0.numpy").exists()
    for name, file in (("../ana", "0.numpy"), ("run", "../../x"), ("run", "a/b")):
        with pytest.raises(InvalidArgument):
            store.read("bob", name, 1, file)
    kernel = store.kernel_env("ana", "http://127.0.0.1:1/base/")
    assert kernel["CUMULUS_CHECKPOINT_GATEWAY"] == "http://127.0.0.1:1/base/api/cumulus/checkpoints"
    assert kernel["CUMULUS_CHECKPOINT_URL"].endswith("/l2/ana")
    assert "CUMULUS_CHECKPOINT_OPTIONS" not in kernel


def test_no_l2_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUMULUS_CHECKPOINT_URL", raising=False)
    store = CheckpointStore.from_environment(tmp_path)
    assert store.kernel_env("ana", "http://x") == {}
    with pytest.raises(NotFound, match="no L2"):
        store.versions("ana", "run")
