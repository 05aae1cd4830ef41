"""Racing allocators: 100 kernel requests through the gateway while ``chronos create`` runs
from parallel processes on the same state file. Afterwards the store's whole history (every
partition with its start and its end, each stamped inside its write transaction) is replayed
per device: at no moment did the partitions on a device hold more than the whole device."""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from chronos import Partition, Store
from chronos.amount import TENTHS_PER_DEVICE
from chronos.device import load_configured
from tests.conftest import Processes
from tests.fuzz.conftest import assert_clean, call, fuzz_gateway
from tests.support.gateway import Gateway

pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(600)]

REQUESTS = 100
RACERS, CREATES_PER_RACER = 4, 15
AMOUNTS = ["0.1", "0.2", "0.3", "0.5", "0.7", "0.9", "1", "2"]
CHRONOS = str(Path(sys.executable).with_name("chronos"))
# One racer: `chronos create` in a loop (a device, an amount, 90 s), releasing about half of
# what it got, each a process of its own, as a user at a shell would.
RACER = f"""
import json, random, subprocess, sys
rng = random.Random(int(sys.argv[1]))
for _ in range({CREATES_PER_RACER}):
    amount = rng.choice({AMOUNTS!r})
    device = "any" if amount == "2" else rng.choice(["any", "0", "1"])
    done = subprocess.run([{CHRONOS!r}, "create", device, amount, "90",
                           "--owner", "racer", "--json"],
                          capture_output=True, text=True)
    assert done.returncode in (0, 4), done.stderr  # 4: nothing fits now (ResourceExhausted)
    if done.returncode == 0 and rng.random() < 0.5:
        partition = json.loads(done.stdout)["id"]
        subprocess.run([{CHRONOS!r}, "release", partition, "--json"], check=True,
                       capture_output=True)
"""


@pytest.fixture
def devices_file(tmp_path: Path) -> Path:
    spec = [{"name": f"A100 #{i}", "vendor": "nvidia", "memory_bytes": 40 * 2**30,
             "uuid": f"GPU-race-{i}"} for i in range(2)]  # fmt: skip
    path = tmp_path / "devices.json"
    path.write_text(json.dumps(spec))
    return path


@pytest.fixture
def gateway(tmp_path: Path, devices_file: Path) -> Iterator[Gateway]:
    gw = fuzz_gateway(tmp_path, env={"CHRONOS_DEVICES": str(devices_file)})
    try:
        yield gw
    finally:
        gw.stop()


def request_kernel(gw: Gateway, seed: int) -> int:
    """One kernel request that does not wait; a kernel it gets is deleted at once, so what it
    held is raced for again."""
    rng = random.Random(seed)
    env = {"KERNEL_GPU": rng.choice(AMOUNTS), "KERNEL_DURATION": "90", "KERNEL_WAIT": "0"}
    response = call(gw, "POST", "/api/kernels", gw.token, json={"env": env})
    if response.status_code == 201:
        assert gw.delete(f"/api/kernels/{response.json()['id']}").status_code == 204
    return response.status_code


def overcommitted(history: list[Partition], devices: int) -> list[str]:
    """The moments some device held more than one device's worth, replaying every partition
    from its creation to its end (release or reaping; still active: now)."""
    problems = []
    for device in range(devices):
        events = []
        for p in history:
            if device in p.devices:
                end = p.ended_at if p.ended_at is not None else float("inf")
                events += [(p.created_at, 1, p.amount.tenths_per_device, p.id), (end, 0, 0, p.id)]
        held: dict[str, int] = {}
        for _at, starts, tenths, pid in sorted(events):  # at a tie, an end before a start
            if starts:
                held[pid] = tenths
            else:
                held.pop(pid, None)
            if sum(held.values()) > TENTHS_PER_DEVICE:
                problems.append(f"device {device}: {sorted(held.items())}")
    return problems


def test_gateway_and_cli_never_overcommit_a_device(
    gateway: Gateway, devices_file: Path, processes: Processes
) -> None:
    env = gateway.env | {"CHRONOS_DEVICES": str(devices_file)}
    racers = [
        processes.python(RACER.replace("int(sys.argv[1])", str(seed)), env=env)
        for seed in range(RACERS)
    ]
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = Counter(pool.map(lambda seed: request_kernel(gateway, seed), range(REQUESTS)))
    for racer in racers:
        assert racer.wait(timeout=300) == 0
    print(f"\n{REQUESTS} gateway requests: {dict(statuses)}")
    assert set(statuses) <= {201, 429}, statuses  # a kernel, or nothing fits now

    with Store(load_configured(str(devices_file)), gateway.state) as store:
        history = store.partitions(include_ended=True)
        used = store.used()
    by_cli = sum(1 for p in history if p.owner == "racer")
    print(f"{len(history)} partitions in the store ({by_cli} by chronos create)")
    assert sum(statuses.values()) == REQUESTS
    assert overcommitted(history, devices=2) == []
    assert all(tenths <= TENTHS_PER_DEVICE for tenths in used.values()), used
    gateway_partitions = [p for p in history if p.owner == "anonymous"]
    assert len(gateway_partitions) == statuses[201]  # each kernel, and only those, took one
    assert all(not p.is_active for p in gateway_partitions)  # and gave it back
    assert_clean(gateway, partitions=False)  # the racers' last partitions are theirs
