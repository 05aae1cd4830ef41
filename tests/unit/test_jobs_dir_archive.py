"""A directory job's archive (`cumulus_jupyter.protocol.jobarchive`): packing, every way out of
the job refused, the caps, where main() may be defined, requirements.txt as pip arguments; the
agent's side (`cumulus_jupyter.agent.job`) building the seed's document; the assignment
outcomes the seed's metric counts."""

from __future__ import annotations

import asyncio
import io
import os
import re
import stat
import zipfile
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from cumulus_jupyter.agent import job as agent_job
from cumulus_jupyter.errors import (
    DeadlineExceeded,
    InvalidArgument,
    PartitionExpired,
    ResourceExhausted,
    TooLarge,
)
from cumulus_jupyter.protocol import jobarchive
from gateway import metrics

pytestmark = pytest.mark.unit

MAIN = b"def main():\n    return 42\n"


def zip_of(members: dict[str, bytes], **infos: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = infos.get(name, 0o644 | stat.S_IFREG) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return buffer.getvalue()


def test_a_directory_packs_without_hidden_files_and_unpacks_whole(tmp_path: Path) -> None:
    source = tmp_path / "job"
    (source / "pkg").mkdir(parents=True)
    (source / "main.py").write_bytes(MAIN)
    (source / "pkg" / "util.py").write_text("X = 1\n")
    (source / "requirements.txt").write_text("numpy>=2  # arrays\n# a comment\n\nscipy\n")
    (source / ".env").write_text("SECRET=1")
    (source / "__pycache__").mkdir()
    (source / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"\0")
    data = jobarchive.pack(source)
    summary = jobarchive.inspect(data)
    assert summary.requirements == ["numpy>=2", "scipy"]
    assert summary.files == 3
    target = tmp_path / "out"
    jobarchive.extract(data, target)
    found = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())
    assert found == ["main.py", "pkg/util.py", "requirements.txt"]


@pytest.mark.parametrize(
    ("members", "modes", "message"),
    [
        ({"main.py": MAIN, "../up.py": b""}, {}, "'../up.py' would land outside"),
        ({"main.py": MAIN, "a/../../up.py": b""}, {}, "would land outside"),
        ({"main.py": MAIN, "/abs.py": b""}, {}, "'/abs.py' would land outside"),
        ({"main.py": MAIN, "C:evil.py": b""}, {}, "would land outside"),
        ({"main.py": MAIN, "a\\..\\..\\up.py": b""}, {}, "would land outside"),
        ({"main.py": MAIN, "link": b"/etc"}, {"link": stat.S_IFLNK | 0o777}, "symbolic link"),
        ({"main.py": MAIN, "fifo": b""}, {"fifo": stat.S_IFIFO | 0o644}, "special file"),
        ({"lib.py": MAIN}, {}, "no main.py at its top level"),
        ({"sub/main.py": MAIN}, {}, "no main.py at its top level"),
        ({"main.py": b"def train():\n    pass\n"}, {}, "has no main() function"),
        ({"main.py": b"def main(:\n"}, {}, "main.py does not parse: "),
        ({"main.py": b"\xff\xfe\0"}, {}, "main.py does not parse"),
        ({"main.py": MAIN, "requirements.txt": b"-rother.txt"}, {}, "names another file"),
        ({"main.py": MAIN, "requirements.txt": b"ok\n-e ."}, {}, "line 2: -e names another"),
        ({"main.py": MAIN, "requirements.txt": b"--constraint=c.txt"}, {}, "another file"),
        ({"main.py": MAIN, "requirements.txt": b"\xff"}, {}, "is not UTF-8"),
    ],
)
def test_unsafe_or_incomplete_archives_are_refused(
    members: dict[str, bytes], modes: dict[str, int], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        jobarchive.inspect(zip_of(members, **modes))


def test_a_refused_archive_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="would land outside"):
        jobarchive.extract(zip_of({"main.py": MAIN, "../up.py": b"x"}), tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "up.py").exists()


def test_duplicates_encrypted_members_and_damage_are_refused() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("main.py", MAIN)
        with pytest.warns(UserWarning, match="Duplicate"):
            zf.writestr("main.py", MAIN)
    with pytest.raises(InvalidArgument, match="appears twice"):
        jobarchive.inspect(buffer.getvalue())
    encrypted = bytearray(zip_of({"main.py": MAIN}))
    local, central = encrypted.find(b"PK\x03\x04"), encrypted.find(b"PK\x01\x02")
    encrypted[local + 6] |= 1
    encrypted[central + 8] |= 1  # the general-purpose flag's "encrypted" bit, in both headers
    with pytest.raises(InvalidArgument, match="is encrypted"):
        jobarchive.inspect(bytes(encrypted))
    damaged = bytearray(zip_of({"main.py": MAIN * 50}))
    damaged[40:60] = b"\0" * 20  # inside main.py's deflated data
    with pytest.raises(InvalidArgument, match=re.escape("main.py cannot be read")):
        jobarchive.inspect(bytes(damaged))
    for junk in (b"", b"PK", os.urandom(64)):
        with pytest.raises(InvalidArgument, match="not a zip file"):
            jobarchive.inspect(junk)


def test_the_caps_sent_unpacked_and_main_py(tmp_path: Path) -> None:
    with pytest.raises(TooLarge, match=re.escape("over the 16.0 MiB cap")):
        jobarchive.inspect(b"\0" * (jobarchive.MAX_ARCHIVE_BYTES + 1))
    bomb = zip_of({"main.py": MAIN, "zeros": b"\0" * (jobarchive.MAX_UNPACKED_BYTES + 1)})
    assert len(bomb) < 2**20  # small as sent
    with pytest.raises(TooLarge, match=re.escape("unpacked, over the 128.0 MiB cap")):
        jobarchive.inspect(bomb)
    with pytest.raises(InvalidArgument, match=re.escape("main.py is over 1.0 MiB")):
        jobarchive.inspect(zip_of({"main.py": MAIN + b"#" * jobarchive.MAX_MAIN_BYTES}))
    folder = tmp_path / "big"
    folder.mkdir()
    (folder / "main.py").write_bytes(MAIN)
    (folder / "noise").write_bytes(os.urandom(jobarchive.MAX_ARCHIVE_BYTES + 1024))
    with pytest.raises(TooLarge, match=re.escape("a job's archive is capped at 16.0 MiB")):
        jobarchive.pack(folder)


@pytest.mark.parametrize(
    "source",
    [
        "def main():\n    pass\n",
        "async def main():\n    pass\n",
        "main = lambda: 1\n",
        "main: object = print\n",
        "from json import dumps as main\n",
        "try:\n    from fast import main\nexcept ImportError:\n    def main():\n        pass\n",
        "if True:\n    def main():\n        pass\n",
    ],
)
def test_main_may_be_defined_any_module_level_way(source: str) -> None:
    jobarchive.check_main(source.encode(), "main.py")


@pytest.mark.parametrize(
    "source",
    [
        "def train():\n    pass\n",
        "class Job:\n    def main(self):\n        pass\n",
        "def outer():\n    def main():\n        pass\n",
        "if __name__ == '__main__':\n    print(1)\n",
    ],
)
def test_main_inside_a_class_or_function_is_not_main(source: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape("has no main() function")):
        jobarchive.check_main(source.encode(), "main.py")


def test_a_directory_without_main_or_with_a_link_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="not a directory"):
        jobarchive.pack(tmp_path / "nowhere")
    with pytest.raises(
        InvalidArgument, match=re.escape("has no main.py: a job directory needs main.py")
    ):
        jobarchive.pack(tmp_path)
    (tmp_path / "main.py").write_bytes(MAIN)
    (tmp_path / "data").symlink_to("/etc/passwd")
    with pytest.raises(InvalidArgument, match="is a symbolic link"):
        jobarchive.pack(tmp_path)


# -- the agent's side ---------------------------------------------------------------------------


def run_in_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: bytes
) -> tuple[dict[str, Any], bytes | None]:
    published: list[tuple[dict[str, Any], bytes | None]] = []
    monkeypatch.setenv("CUMULUS_WORKDIR", str(tmp_path))
    monkeypatch.setenv("CUMULUS_JOB_ID", "j-0123456789ab")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(
        agent_job, "_publish", lambda doc, pickled: published.append((doc, pickled))
    )
    monkeypatch.setattr("sys.path", list(__import__("sys").path))
    info = {"job_id": "j-0123456789ab", "chronos_partition": "p-1", "gpu_device": "gpu0"}
    agent_job.run(info, zip_of({"main.py": source}))
    ((document, pickled),) = published
    return document, pickled


def test_the_agent_builds_the_seeds_document(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    document, pickled = run_in_agent(tmp_path, monkeypatch, b"def main():\n    return [1, 'a']\n")
    assert pickled is None
    assert set(document) == {"status", "result", "execution_time", "timestamp", "system_info"}
    assert document["status"] == "success" and document["result"] == [1, "a"]
    assert set(document["system_info"]) == {
        "python_version", "job_id", "chronos_partition", "gpu_device",
    }  # fmt: skip
    assert Path.cwd() == tmp_path / "cumulus-work-j-0123456789ab"


def test_the_agent_pickles_what_json_cannot_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = b"async def main():\n    return {1, 2}, float('nan')\n"
    document, pickled = run_in_agent(tmp_path, monkeypatch, source)
    assert document["status"] == "success" and document["result"] is None
    assert document["result_serializable"] is False and document["result_type"] == "builtins.tuple"
    import cloudpickle

    assert pickled is not None
    value = cloudpickle.loads(pickled)
    assert value[0] == {1, 2} and value[1] != value[1]


def test_the_agent_says_when_no_archive_came(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    published: list[dict[str, Any]] = []
    monkeypatch.setenv("CUMULUS_WORKDIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(agent_job, "_publish", lambda doc, pickled: published.append(doc))
    agent_job.run({"job_id": "j-0123456789ab"})
    ((document,),) = [published]
    assert document["status"] == "error"
    assert document["error"] == "the job's archive did not reach the kernel"


def test_the_agent_reports_main_s_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    document, _ = run_in_agent(tmp_path, monkeypatch, b"def main():\n    raise KeyError('lr')\n")
    assert document["status"] == "error" and document["error_type"] == "KeyError"
    assert document["error"] == "'lr'" and "raise KeyError('lr')" in document["traceback"]
    document, _ = run_in_agent(tmp_path, monkeypatch, b"main = 3\n")
    assert document["error_type"] == "TypeError" and "not a function" in document["error"]


# -- the seed's metric of assignments -------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (None, "assigned"),
        (ResourceExhausted("full"), "refused"),
        (InvalidArgument("bad"), "invalid"),
        (DeadlineExceeded("late"), "timed_out"),
        (asyncio.CancelledError(), "cancelled"),
        (PartitionExpired("gone"), "failed"),
        (RuntimeError("boom"), "failed"),
    ],
)
def test_each_start_outcome_is_counted_under_its_status(
    error: BaseException | None, status: str
) -> None:
    def count() -> float:
        value = REGISTRY.get_sample_value("cumulus_worker_assignments_total", {"status": status})
        return value or 0.0

    before = count()
    metrics.assignment(error)
    assert count() == before + 1
