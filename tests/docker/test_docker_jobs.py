"""Directory jobs (``cumulus submit DIR``) on the docker runtime: the job's kernel is a job
container of the ``cumulus-job`` image, and what `cumulus_jupyter.agent.job` needs there (the
agent, the comm that brings the zip, a writable work directory under a read-only root,
cloudpickle for a result that is not JSON) is in the image. The result document is the seed's,
read back through the CLI's Python API; requirements that cannot be installed in the container
fail the job with a document too."""

from __future__ import annotations

import datetime
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cumulus_jupyter import jobs
from cumulus_jupyter.errors import RemoteError
from tests.docker.conftest import kernel_containers
from tests.support.engine import Engine
from tests.support.gateway import Gateway
from tests.support.wait import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]

MAIN = """\
import json, os, sys
import numpy as np
from helpers import double

def main():
    config = json.load(open("config.json"))
    return {
        "doubled": double(config["x"]),
        "python": sys.executable,
        "uid": os.getuid(),
        "cwd": os.getcwd(),
        "root_writable": os.access("/", os.W_OK),
        "total": float(np.arange(config["x"]).sum()),
    }
"""


def write(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(textwrap.dedent(text))
    return folder


def submitted(gateway: Gateway, folder: Path) -> dict[str, Any]:
    """The directory job run to its end on ``gateway``: the final job record."""
    url, token = gateway.url, gateway.token
    job_id = jobs.submit_directory(folder, gpu=0.2, duration="5m", gateway=url, token=token)
    return jobs.wait(job_id, gateway=url, token=token)


def test_a_directory_job_runs_in_a_job_container_and_keeps_the_seed_document(
    docker_gateway: Gateway, engine: Engine, tmp_path: Path
) -> None:
    folder = write(tmp_path / "train", {
        "main.py": MAIN,
        "helpers/__init__.py": "def double(x):\n    return 2 * x\n",
        "config.json": '{"x": 21}',
    })  # fmt: skip
    ended = submitted(docker_gateway, folder)
    assert ended["state"] == "completed", ended
    document = ended["result"]
    assert document["status"] == "success", document
    result = document["result"]
    assert result["doubled"] == 42 and result["total"] == 210.0
    assert result["python"] == "/opt/cumulus/bin/python"  # the image's interpreter
    assert result["uid"] == 1000 and not result["root_writable"]  # confined as docker kernels
    assert result["cwd"] == f"/work/cumulus-work-{ended['id']}"  # the container's tmpfs
    assert document["system_info"]["job_id"] == ended["id"]
    assert document["system_info"]["gpu_device"] == "gpu0"
    assert datetime.datetime.fromisoformat(document["timestamp"]).tzinfo is not None
    assert jobs.result_document(
        ended["id"], gateway=docker_gateway.url, token=docker_gateway.token
    ) == document  # fmt: skip
    wait_until(lambda: not kernel_containers(engine), 30, "the job's container to go")


def test_a_result_that_is_not_json_comes_back_pickled_and_a_failure_as_its_document(
    docker_gateway: Gateway, tmp_path: Path
) -> None:
    url, token = docker_gateway.url, docker_gateway.token
    arrays = write(tmp_path / "arrays", {"main.py": """\
        import numpy as np

        async def main():
            return np.arange(6).reshape(2, 3) * 1.5
        """})  # fmt: skip
    ended = submitted(docker_gateway, arrays)
    assert ended["state"] == "completed", ended
    assert ended["result"]["result_type"] == "numpy.ndarray"
    value = jobs.result(ended["id"], gateway=url, token=token)
    assert isinstance(value, np.ndarray) and value.tolist() == [[0, 1.5, 3], [4.5, 6, 7.5]]

    broken = write(tmp_path / "broken", {"main.py": """\
        def main():
            raise ValueError("learning rate too high")
        """})  # fmt: skip
    failed = submitted(docker_gateway, broken)
    assert failed["state"] == "failed"
    document = failed["result"]
    assert document["status"] == "error" and document["error_type"] == "ValueError"
    assert document["error"] == "learning rate too high"
    with pytest.raises(RemoteError, match="learning rate too high"):
        jobs.result(failed["id"], gateway=url, token=token)


def test_requirements_that_cannot_be_installed_in_the_container_fail_the_job_with_a_document(
    docker_gateway: Gateway, engine: Engine, tmp_path: Path
) -> None:
    folder = write(tmp_path / "needs", {
        "main.py": "def main():\n    return 1\n",
        "requirements.txt": "--no-index\ncumulus-no-such-package\n",  # no index: fails at once
    })  # fmt: skip
    ended = submitted(docker_gateway, folder)
    assert ended["state"] == "failed", ended
    document = ended["result"]
    assert document["status"] == "error" and document["error_type"] == "RequirementsFailed"
    wait_until(lambda: not kernel_containers(engine), 30, "the job's container to go")
