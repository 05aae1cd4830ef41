"""``scripts/setup-worker.sh`` as far as a host that is already the Swarm's manager allows: its
input checks and its plan (`--dry-run`). Device detection and the engine configuration run for
real in the docker tier (tests/docker/test_setup_worker.py)."""

from __future__ import annotations

import subprocess

import pytest

pytestmark = pytest.mark.unit
SCRIPT = "scripts/setup-worker.sh"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "--join TOKEN MANAGER_ADDR is required"),
        (("--join", "abc", "10.0.0.1:2377"), "not a Swarm join token"),
        (("--join", "SWMTKN-1-x", "10.0.0.1"), "must be HOST:PORT"),
        (("--join", "SWMTKN-1-x"), "--join needs TOKEN and MANAGER_ADDR"),
        (("--frobnicate",), "unknown option: --frobnicate"),
        (("--join", "SWMTKN-1-x", "10.0.0.1:2377", "--image", "/nonexistent.tar"), "cannot read"),
    ],
)
def test_bad_input_is_refused_with_one_line(args: tuple[str, ...], message: str) -> None:
    result = run(*args)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_the_plan_installs_labels_and_joins() -> None:
    result = run("--join", "SWMTKN-1-abc", "10.0.0.1:2377", "--advertise-addr", "10.0.0.2",
                 "--dry-run")  # fmt: skip
    assert result.returncode == 0, result.stderr
    plan = result.stdout.splitlines()
    assert any("device discovery" in line for line in plan)
    assert any("merge cumulus.devices into /etc/docker/daemon.json" in line for line in plan)
    assert (
        plan[-1]
        == "+ docker swarm join --token SWMTKN-1-abc --advertise-addr 10.0.0.2 10.0.0.1:2377"
    )


def test_help_lists_every_option() -> None:
    text = run("--help").stdout
    for option in ("--join", "--image", "--image-tag", "--advertise-addr", "--detect",
                   "--config-only", "--dry-run"):  # fmt: skip
        assert option in text
