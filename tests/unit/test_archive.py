"""Directory archives: round trips, the size cap, and every way out of the target refused."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from cumulus_jupyter import archive
from cumulus_jupyter.errors import InvalidArgument
from cumulus_jupyter.protocol import env

pytestmark = pytest.mark.unit


def make_tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def entry(
    name: str, data: bytes = b"x", kind: bytes = tarfile.REGTYPE, link: str = ""
) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data if kind == tarfile.REGTYPE else None


def test_round_trip_skips_hidden_files_and_symlinks(tmp_path: Path) -> None:
    src = tmp_path / "nb"
    (src / "data" / "deep").mkdir(parents=True)
    (src / "train.py").write_text("print('hi')")
    (src / "data" / "deep" / "x.csv").write_text("1,2\n")
    (src / ".git").mkdir()
    (src / ".git" / "config").write_text("secret")
    (src / ".env").write_text("TOKEN=1")
    (src / "link").symlink_to("/etc/passwd")
    data, summary = archive.pack(src)
    assert (summary.files, summary.bytes) == (2, len("print('hi')") + 4)
    out = archive.unpack(data, tmp_path / "out")
    assert out == summary
    assert sorted(
        p.relative_to(tmp_path / "out").as_posix()
        for p in (tmp_path / "out").rglob("*")
        if p.is_file()
    ) == ["data/deep/x.csv", "train.py"]


def test_pack_refuses_a_directory_over_the_cap(tmp_path: Path) -> None:
    (tmp_path / "big.bin").write_bytes(b"0" * 2048)
    with pytest.raises(InvalidArgument, match=r"holds 0\.0 MiB to sync; the cap is 0 MiB"):
        archive.pack(tmp_path, max_bytes=1024)


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (entry("../escape.txt"), "would land outside the target"),
        (entry("a/../../escape.txt"), "would land outside the target"),
        (entry("/etc/evil"), "would land outside the target"),
        (entry("link", kind=tarfile.SYMTYPE, link="/etc/passwd"), "is a link or special file"),
        (entry("hard", kind=tarfile.LNKTYPE, link="/etc/passwd"), "is a link or special file"),
        (entry("dev", kind=tarfile.CHRTYPE), "is a link or special file"),
        (entry("fifo", kind=tarfile.FIFOTYPE), "is a link or special file"),
    ],
)
def test_unpack_refuses_anything_that_leaves_the_target_and_writes_nothing(
    tmp_path: Path, member: tuple[tarfile.TarInfo, bytes | None], message: str
) -> None:
    data = make_tar(entry("fine.txt"), member)
    target = tmp_path / "target"
    with pytest.raises(InvalidArgument, match=message):
        archive.unpack(data, target)
    assert not target.exists()
    assert not (tmp_path / "escape.txt").exists()


def test_unpack_refuses_a_bomb_before_writing(tmp_path: Path) -> None:
    data = make_tar(entry("a.bin", b"0" * 4096), entry("b.bin", b"0" * 4096))
    with pytest.raises(InvalidArgument, match="over the 0 MiB cap"):
        archive.unpack(data, tmp_path / "t", max_bytes=5000)
    assert not (tmp_path / "t").exists()


def test_unpack_refuses_garbage(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="Refused archive"):
        archive.unpack(b"not a tar at all", tmp_path / "t")


def test_workdir_is_named_after_the_kernel_and_never_escapes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CUMULUS_WORKDIR", str(tmp_path))
    assert env.workdir("abc-123") == tmp_path / "cumulus-work-abc-123"
    assert env.workdir("../../etc") == tmp_path / "cumulus-work-etc"
