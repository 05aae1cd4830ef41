"""Directory jobs (the seed's format: ``main.py`` with ``main()``, ``requirements.txt``) through
the ``cumulus`` CLI, `cumulus_jupyter.jobs` and a real gateway: the result document, a result
kept pickled, failures, code as the positional argument, colours on a terminal only, bad input
refused with nothing started, and the seed's metrics read from ``/metrics``."""

from __future__ import annotations

import base64
import datetime
import io
import json
import os
import pty
import re
import stat
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cumulus_jupyter import cli, jobs
from cumulus_jupyter.errors import InvalidArgument, NotFound, RemoteError
from cumulus_jupyter.protocol.jobarchive import MAX_ARCHIVE_BYTES
from tests.integration.test_client_sdk import make_wheel
from tests.integration.test_gateway_operations import check
from tests.integration.test_jobs import active_partitions, cumulus, job
from tests.support.gateway import Gateway
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

ANSI = "\x1b["


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("wheels")
    make_wheel(folder)
    for path in (folder, *folder.iterdir()):  # sandboxed kernels run as their owner's uid
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, wheels: Path) -> Iterator[Gateway]:
    """One gateway for the tests that check their own jobs only (a local wheel index shown to
    its sandboxed kernels, as an operator would)."""
    home = tmp_path_factory.mktemp("gateway")
    gw = Gateway(
        home / "state" / "chronos.sqlite3", home / "gateway.log",
        f"--LocalRuntime.read_only_paths={[str(wheels)]}",
    )  # fmt: skip
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture
def here(
    shared: Gateway, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``cumulus ARGS`` run in this process (the same `cumulus_jupyter.cli.main`, without an
    interpreter's start-up for each call), against the shared gateway."""
    monkeypatch.setenv("CUMULUS_GATEWAY_URL", shared.url)
    monkeypatch.setenv("CUMULUS_TOKEN", shared.token)
    monkeypatch.delenv("NO_COLOR", raising=False)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        code = cli.main(list(args))
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["cumulus", *args], code, out, err)

    return run


def write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(textwrap.dedent(text))
    return folder


def job_id_of(done: subprocess.CompletedProcess[str]) -> str:
    return done.stderr.split()[1]  # "submitted j-… (…)"


def nothing_running(gateway: Gateway) -> bool:
    return active_partitions(gateway) == [] and gateway.get("/api/kernels").json() == []


def as_python(gateway: Gateway) -> dict[str, Any]:
    return {"gateway": gateway.url, "token": gateway.token}


TRAIN = """\
import json
import cumulus_sdk_probe
from helpers.scale import scale

def main():
    config = json.load(open("config.json"))
    print("training with", config["lr"], flush=True)
    return {"loss": scale(config["lr"]), "probe": cumulus_sdk_probe.VALUE}
"""


def test_a_directory_job_runs_main_and_keeps_the_seed_document(
    shared: Gateway, wheels: Path, tmp_path: Path
) -> None:
    folder = write(tmp_path / "train", {
        "main.py": TRAIN,
        "helpers/__init__.py": "",
        "helpers/scale.py": "def scale(x):\n    return x * 10\n",
        "config.json": '{"lr": 0.25}',
        "requirements.txt": f"# a local index\n--no-index --find-links {wheels}\ncumulus_sdk_probe\n",
        ".git/ignored": "hidden files stay home",
    })  # fmt: skip
    done = cumulus(shared, "submit", str(folder), "--gpu", "0.2", "--duration", "10m", "-f")
    assert done.returncode == 0, done.stderr + shared.log()[-3000:]
    installed, trained = done.stdout.splitlines()
    assert installed.startswith("installed --no-index") and installed.count("cumulus_sdk_probe")
    assert trained == "training with 0.25"
    job_id = job_id_of(done)

    printed = cumulus(shared, "result", job_id)
    assert printed.returncode == 0, printed.stderr
    document = json.loads(printed.stdout)
    assert document["status"] == "success"
    assert document["result"] == {"loss": 2.5, "probe": "from the overlay"}
    assert document["execution_time"] >= 0
    assert datetime.datetime.fromisoformat(document["timestamp"]).tzinfo is not None
    record = job(shared, job_id)
    assert document["system_info"] == {
        "python_version": document["system_info"]["python_version"],
        "job_id": job_id,
        "chronos_partition": record["partition_id"],
        "gpu_device": "gpu0",
    }
    assert document["system_info"]["python_version"].count(".") == 2
    assert record["result"] == document and record["state"] == "completed"
    assert record["name"] == "train" and record["archive_bytes"] > 0
    assert record["requirements"] == [
        "--no-index", "--find-links", str(wheels), "cumulus_sdk_probe",
    ]  # fmt: skip
    check(record, "Job")
    check(document, "JobResult")
    assert jobs.result(job_id, **as_python(shared)) == document["result"]
    assert nothing_running(shared)


def test_a_result_that_is_not_json_is_kept_pickled(shared: Gateway, tmp_path: Path) -> None:
    folder = write(tmp_path / "arrays", {"main.py": """\
        import numpy as np

        async def main():
            return np.arange(6).reshape(2, 3) * 1.5
        """})  # fmt: skip
    job_id = jobs.submit_directory(folder, gpu=0.1, duration="5m", **as_python(shared))
    ended = jobs.wait(job_id, **as_python(shared))
    assert ended["state"] == "completed", ended
    document = ended["result"]
    assert document["status"] == "success" and document["result"] is None
    assert document["result_serializable"] is False
    assert document["result_type"] == "numpy.ndarray"
    assert "1.5" in document["result_repr"]
    assert f"cumulus_jupyter.jobs.result('{job_id}')" in document["note"]
    value = jobs.result(job_id, **as_python(shared))
    assert isinstance(value, np.ndarray) and value.tolist() == [[0, 1.5, 3], [4.5, 6, 7.5]]
    pickled = shared.get(f"/api/cumulus/jobs/{job_id}/result/pickle")
    assert pickled.headers["Content-Type"] == "application/octet-stream"


def test_a_failing_main_gives_the_error_document(
    shared: Gateway, here: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    folder = write(tmp_path / "broken", {"main.py": """\
        def main():
            print("starting", flush=True)
            raise ValueError("learning rate too high")
        """})  # fmt: skip
    done = here("submit", str(folder), "--gpu", "0.1", "--follow")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].endswith(": ValueError: learning rate too high")
    assert "starting" in done.stdout and 'raise ValueError("learning' in done.stdout
    job_id = job_id_of(done)
    printed = here("result", job_id, "--json")
    document = json.loads(printed.stdout)
    assert printed.returncode == 1 and document["status"] == "error"
    assert document["error"] == "learning rate too high"
    assert document["error_type"] == "ValueError"
    assert 'raise ValueError("learning rate too high")' in document["traceback"]
    assert document["system_info"]["job_id"] == job_id
    check(document, "JobResult")
    with pytest.raises(RemoteError, match="ValueError: learning rate too high"):
        jobs.result(job_id, **as_python(shared))
    pickled = here("result", "j-000000000000")
    assert pickled.returncode == 3 and "No job j-000000000000" in pickled.stderr


def test_a_job_whose_main_never_reported_gets_the_gateways_error_document(
    shared: Gateway, here: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    missing = write(tmp_path / "missing", {
        "main.py": "def main():\n    return 1\n",
        "requirements.txt": f"--no-index --find-links {tmp_path} no-such-package-here\n",
    })  # fmt: skip
    done = here("submit", str(missing), "--gpu", "0.1", "--follow")
    assert done.returncode == 1 and "installing the requirements failed" in done.stderr
    document = jobs.result_document(job_id_of(done), **as_python(shared))
    assert document["status"] == "error" and document["error_type"] == "RequirementsFailed"
    assert document["system_info"]["job_id"] == job_id_of(done)
    check(document, "JobResult")

    sleeper = write(tmp_path / "sleeper", {"main.py": """\
        import time

        def main():
            print("up", flush=True)
            time.sleep(300)
        """})  # fmt: skip
    job_id = jobs.submit_directory(sleeper, gpu=0.1, **as_python(shared))
    early = here("result", job_id)
    assert early.returncode == 10 and f"Job {job_id} has no result yet" in early.stderr
    wait_until(lambda: "up" in here("logs", job_id).stdout, what="main() to run")
    assert here("cancel", job_id).returncode == 130
    document = jobs.result_document(job_id, **as_python(shared))
    assert (document["status"], document["error_type"]) == ("error", "Cancelled")
    assert nothing_running(shared)


def test_code_as_the_positional_argument_runs_like_dash_c(
    shared: Gateway, here: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    done = here("submit", "import numpy; print(numpy.add(1, 2))", "--follow")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "3\n"
    job_id = job_id_of(done)
    record = json.loads(here("get", job_id, "--json").stdout)
    assert record["name"] == "-c" and record["result"] is None
    script_result = here("result", job_id)
    assert script_result.returncode == 3 and "is a script job" in script_result.stderr
    with pytest.raises(NotFound, match="is a script job"):
        jobs.result(job_id, **as_python(shared))


def on_a_terminal(gateway: Gateway, *args: str, **env: str) -> str:
    """What ``cumulus ARGS`` writes to a terminal (a pseudo-terminal as its stdout)."""
    leader, follower = pty.openpty()
    environment = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    environment |= {"CUMULUS_GATEWAY_URL": gateway.url, "CUMULUS_TOKEN": gateway.token,
                    "TERM": "xterm", **env}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "cumulus_jupyter.cli", *args],
        stdout=follower, stderr=subprocess.PIPE, env=environment,
    )  # fmt: skip
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: the command ended
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=60) == 0
    if proc.stderr:
        proc.stderr.close()
    return b"".join(chunks).decode()


def test_list_and_get_colour_states_on_a_terminal_only(
    shared: Gateway, here: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    job_id = job_id_of(here("submit", "-c", "print('hue')", "--follow"))
    green = "\x1b[32m"
    listed = on_a_terminal(shared, "list")
    row = next(line for line in listed.splitlines() if line.startswith(job_id))
    assert f"{green}completed" in row
    assert f"{green}completed" in on_a_terminal(shared, "get", job_id)
    assert ANSI not in on_a_terminal(shared, "list", NO_COLOR="1")
    piped = cumulus(shared, "list")
    assert ANSI not in piped.stdout and ANSI not in here("get", job_id).stdout
    # columns stay aligned with the colour on: the same table once the codes are taken out
    plain = re.sub(r"\x1b\[[0-9;]*m", "", listed).replace("\r\n", "\n")
    assert plain.strip() == piped.stdout.strip()


# -- bad input: one clear error each, nothing started ------------------------------------------


def zip_of(members: dict[str, bytes], links: tuple[str, ...] = ()) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name in links:  # a symbolic link, as zip -y stores one
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return buffer.getvalue()


MAIN = b"def main():\n    return 1\n"
UNSAFE = {
    "dot-dot": (zip_of({"main.py": MAIN, "../evil.py": b"x"}), "'../evil.py' would land outside"),
    "absolute": (zip_of({"main.py": MAIN, "/etc/evil": b"x"}), "'/etc/evil' would land outside"),
    "symlink": (zip_of({"main.py": MAIN}, links=("data",)), "'data' is a symbolic link"),
    "no main.py": (zip_of({"train.py": MAIN}), "no main.py at its top level"),
    "no main()": (zip_of({"main.py": b"def train():\n    pass\n"}), "has no main() function"),
    "not a zip": (b"PK\x03\x04 but not really", "not a zip file"),
}


def over_the_cap(folder: Path) -> Path:
    folder.mkdir()
    (folder / "main.py").write_bytes(MAIN)
    (folder / "weights.bin").write_bytes(os.urandom(MAX_ARCHIVE_BYTES + 2**20))  # incompressible
    return folder


def test_a_zip_that_is_unsafe_or_not_a_job_is_refused_by_the_gateway(shared: Gateway) -> None:
    before = shared.get("/api/cumulus/jobs").json()
    for label, (data, message) in UNSAFE.items():
        body = {"archive": base64.b64encode(data).decode(), "gpu": "0.1"}
        response = shared.post("/api/cumulus/jobs", body)
        assert response.status_code == 400, label
        assert message in response.json()["message"], (label, response.text)
    unknown = shared.post("/api/cumulus/jobs", {"code": "print(1)", "gpu_memory": "0.5"})
    assert unknown.status_code == 400
    assert unknown.json()["message"].startswith("Unknown field 'gpu_memory' in a job submission")
    both = shared.post("/api/cumulus/jobs", {"code": "1", "archive": ""})
    assert both.status_code == 400 and "not both" in both.json()["message"]
    assert shared.get("/api/cumulus/jobs").json() == before
    assert nothing_running(shared)


@pytest.mark.parametrize("label", list(UNSAFE))
def test_an_unsafe_zip_is_refused_before_it_is_sent(
    here: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path, label: str
) -> None:
    data, message = UNSAFE[label]
    (tmp_path / "job.zip").write_bytes(data)
    done = here("submit", str(tmp_path / "job.zip"))
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"train.py": "def main():\n    return 1\n"}, "has no main.py: a job directory needs"),
        ({"main.py": "def train():\n    return 1\n"}, "main.py has no main() function"),
        ({"main.py": "def main(:\n"}, "main.py does not parse: "),
        (
            {"main.py": "def main():\n    return 1\n", "requirements.txt": "-r more.txt\n"},
            "requirements.txt line 1: -r names another file",
        ),
    ],
    ids=["no main.py", "no main()", "syntax error", "requirements -r"],
)
def test_a_directory_that_is_not_a_job_is_refused_with_one_line(
    shared: Gateway,
    here: Callable[..., subprocess.CompletedProcess[str]],
    tmp_path: Path,
    files: dict[str, str],
    message: str,
) -> None:
    before = shared.get("/api/cumulus/jobs").json()
    done = here("submit", str(write(tmp_path / "job", files)))
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1
    assert shared.get("/api/cumulus/jobs").json() == before


def test_a_directory_over_the_cap_or_with_a_link_is_refused(
    shared: Gateway, here: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    before = shared.get("/api/cumulus/jobs").json()
    big = over_the_cap(tmp_path / "big")
    done = here("submit", str(big))
    assert done.returncode == 2 and "a job's archive is capped at 16.0 MiB" in done.stderr
    with zipfile.ZipFile(tmp_path / "big.zip", "w") as zf:  # packed by hand: the gateway's cap
        for path in big.iterdir():
            zf.write(path, path.name)
    raw = (tmp_path / "big.zip").read_bytes()
    response = shared.post("/api/cumulus/jobs", {"archive": base64.b64encode(raw).decode()})
    assert response.status_code in (400, 413) and "MiB" in response.json()["message"]
    linked = write(tmp_path / "linked", {"main.py": "def main():\n    return 1\n"})
    (linked / "data").symlink_to("/etc/passwd")
    done = here("submit", str(linked))
    assert done.returncode == 2 and "is a symbolic link" in done.stderr
    with pytest.raises(InvalidArgument, match=r"Unknown option gpuu= .* \(did you mean gpu=\?\)"):
        jobs.submit_directory(linked, gpuu=0.5, **as_python(shared))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match=re.escape("Invalid GPU amount: 2.3")):
        jobs.submit_directory(linked, gpu=2.3, **as_python(shared))
    assert shared.get("/api/cumulus/jobs").json() == before
    assert nothing_running(shared)


# -- the seed's metrics ------------------------------------------------------------------------


def samples(gateway: Gateway) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    families = text_string_to_metric_families(gateway.get("/metrics").text)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def test_the_seeds_metrics_count_assignments_workers_and_job_durations(
    shared: Gateway, here: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    def value(name: str, **labels: str) -> float:
        return samples(shared).get((name, tuple(sorted(labels.items()))), 0.0)

    assignments, durations = "cumulus_worker_assignments_total", "cumulus_job_duration_seconds"
    before = {status: value(assignments, status=status) for status in ("assigned", "refused")} | {
        state: value(f"{durations}_count", status=state) for state in ("completed", "failed")
    }
    assert value("cumulus_active_workers") == 0
    held = shared.start_kernel(KERNEL_GPU="0.5")
    assert value(assignments, status="assigned") == before["assigned"] + 1
    assert value("cumulus_active_workers") == 1
    refused = shared.post("/api/kernels", {"name": "cumulus-gpu",
                                          "env": {"KERNEL_GPU": "1", "KERNEL_WAIT": "0"}})  # fmt: skip
    assert refused.status_code == 429
    assert value(assignments, status="refused") == before["refused"] + 1
    assert shared.delete(f"/api/kernels/{held['id']}").status_code == 204
    assert value("cumulus_active_workers") == 0

    assert here("submit", "-c", "print('ok')", "--follow").returncode == 0
    assert here("submit", "-c", "1 / 0", "--follow").returncode == 1
    assert value(f"{durations}_count", status="completed") == before["completed"] + 1
    assert value(f"{durations}_count", status="failed") == before["failed"] + 1
    assert value(f"{durations}_sum", status="completed") > 0
    assert value(assignments, status="assigned") == before["assigned"] + 3  # + each job's
    assert value("cumulus_active_workers") == 0
    assert httpx.get(shared.url + "/metrics", timeout=30).status_code == 401
