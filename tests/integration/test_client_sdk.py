"""`CumulusClient` against a real gateway on loopback: `run` with the seed SDK's options,
requirements cached in the overlay, timeouts, retries on a full cluster, and `map` over many
partitions; after each, no kernel and no partition is left."""

from __future__ import annotations

import _thread
import base64
import hashlib
import signal
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from cumulus_jupyter import CumulusClient
from cumulus_jupyter.client import CallSession
from cumulus_jupyter.errors import (
    DeadlineExceeded,
    InvalidArgument,
    RemoteError,
    ResourceExhausted,
    Unauthenticated,
)
from tests.support.gateway import Gateway
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration


def amount_and(value: Any, gpu: Any = None) -> tuple[Any, Any, str]:
    import os

    return value, gpu, os.environ["CHRONOS_GPU_AMOUNT"]


def pid_of(x: int) -> tuple[int, int]:
    import os

    return x * x, os.getpid()


def inverse(x: int) -> float:
    return 1 / x


def sleepy(seconds: float) -> None:
    import time

    time.sleep(seconds)


def client_of(gateway: Gateway, lines: list[str] | None = None) -> CumulusClient:
    return CumulusClient(
        gateway.url, gateway.token, on_progress=(lines.append if lines is not None else None)
    )


def nothing_left(gateway: Gateway, partitions: int = 0) -> bool:
    return (
        len(gateway.get("/api/kernels").json()) == partitions
        and len(gateway.get("/api/cumulus/partitions").json()) == partitions
    )


def make_wheel(folder: Path, name: str = "cumulus_sdk_probe", version: str = "1.0") -> None:
    """A minimal pure-Python wheel built here (tests reach no package index)."""
    files = {
        f"{name}/__init__.py": b"VALUE = 'from the overlay'\n",
        f"{name}-{version}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
        ),
        f"{name}-{version}.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }

    def digest(data: bytes) -> str:
        return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

    record = [f"{path},sha256={digest(data)},{len(data)}" for path, data in files.items()]
    record.append(f"{name}-{version}.dist-info/RECORD,,")
    files[f"{name}-{version}.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as wheel:
        for path, data in files.items():
            wheel.writestr(path, data)


# -- run --------------------------------------------------------------------------------------


def test_run_takes_gpu_memory_its_alias_gpu_and_the_functions_own_gpu(gateway: Gateway) -> None:
    client = client_of(gateway, [])
    assert client.run(amount_and, 1, gpu_memory=0.3) == (1, None, "0.3")
    assert client.run(amount_and, 2, gpu=0.2, fn_kwargs={"gpu": "mine"}) == (2, "mine", "0.2")
    assert nothing_left(gateway)


def test_a_kept_session_has_the_duration_asked_and_goes_back_on_close(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    with client_of(gateway, []) as client:
        first = client.run(pid_of, 3, session="warm", duration="2m")
        (partition,) = gateway.get("/api/cumulus/partitions").json()
        assert partition["expires_at"] - partition["created_at"] == pytest.approx(120, abs=1)
        comms: list[object] = []
        real = CallSession._comm

        def counted(self: CallSession, *args: Any, **kwargs: Any) -> Any:
            comms.append(args)
            return real(self, *args, **kwargs)

        monkeypatch.setattr(CallSession, "_comm", counted)
        assert client.run(pid_of, 4, session="warm") == (16, first[1])  # the same kernel
        assert comms == []  # the values and the result rode in the execute request and reply
        assert client.sessions == ["warm"]
    assert nothing_left(gateway)


def test_requirements_install_into_the_overlay_once(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir(mode=0o755)
    make_wheel(wheels)
    for path in (wheels, *wheels.iterdir()):  # sandboxed kernels run as their owner's uid
        path.chmod(0o755 if path.is_dir() else 0o644)
    requirements = ["--no-index", "--find-links", str(wheels), "cumulus_sdk_probe"]
    # the wheel directory is a local index the sandbox shows its kernels, as an operator would
    gateway = Gateway(
        tmp_path / "state" / "chronos.sqlite3", tmp_path / "gateway.log",
        f"--LocalRuntime.read_only_paths={[str(wheels)]}",
    )  # fmt: skip
    try:
        _overlay_installed_once(gateway, requirements)
    finally:
        gateway.stop()


def _overlay_installed_once(gateway: Gateway, requirements: list[str]) -> None:

    def probe() -> str:
        import cumulus_sdk_probe  # type: ignore[import-not-found]

        return str(cumulus_sdk_probe.VALUE)

    lines: list[str] = []
    client = client_of(gateway, lines)
    assert client.run(probe, gpu=0.1, requirements=requirements) == "from the overlay"
    assert client.run(probe, gpu=0.1, requirements=requirements) == "from the overlay"
    said = [line for line in lines if line.startswith("requirements: ")]
    assert said[0].startswith("requirements: installed --no-index"), lines
    assert said[1].startswith("requirements: cached --no-index"), lines  # a new kernel, no pip
    # one overlay in all (a sandboxed kernel's are kept under its owner's uid)
    installed = list((gateway.state.parent / "overlays").rglob("cumulus_sdk_probe"))
    assert len(installed) == 1 and installed[0].is_dir(), installed
    with pytest.raises(ModuleNotFoundError):  # never in this (the gateway's) environment
        __import__("cumulus_sdk_probe")
    assert nothing_left(gateway)


def test_a_call_past_its_timeout_raises_and_gives_the_partition_back(gateway: Gateway) -> None:
    client = client_of(gateway, [])
    with pytest.raises(DeadlineExceeded, match=r"sleepy\(\) did not finish within 3 s"):
        client.run(sleepy, 600, gpu=0.2, timeout=3)
    with pytest.raises(DeadlineExceeded):
        client.run(sleepy, 600, gpu=0.2, timeout=3, session="kept")
    assert client.sessions == []  # a kept session that timed out is not kept
    wait_until(lambda: nothing_left(gateway), 60, "the partitions to be released")


def test_a_timeout_also_bounds_the_wait_in_the_queue(gateway: Gateway) -> None:
    gateway.start_kernel(KERNEL_GPU="1")
    with pytest.raises(DeadlineExceeded):
        client_of(gateway, []).run(amount_and, 1, gpu=0.5, timeout=2)
    wait_until(lambda: gateway.get("/api/cumulus/queue").json() == [], 60, "the queue to empty")
    assert nothing_left(gateway, partitions=1)  # only the one held


def test_bad_input_is_one_clear_error_and_starts_nothing(gateway: Gateway) -> None:
    client = client_of(gateway, [])
    with pytest.raises(InvalidArgument, match="did you mean gpu_memory="):
        client.run(pid_of, 1, gpu_memroy=0.5)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match=r"^Invalid GPU amount: 2\.3\. Must be 0\.1-0\.9"):
        client.run(pid_of, 1, gpu_memory=2.3)
    with pytest.raises(InvalidArgument, match="items must be an iterable"):
        client.map(pid_of, 42)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match=r"^Invalid GPU amount: 2\.3"):
        client.map(pid_of, [1, 2], gpu_memory=2.3)
    assert nothing_left(gateway)
    assert "POST /api/kernels" not in gateway.log()  # not even asked for


# -- retries ----------------------------------------------------------------------------------


def in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def test_on_a_full_cluster_max_retries_backs_off_until_room_frees(gateway: Gateway) -> None:
    held = gateway.start_kernel(KERNEL_GPU="1")
    lines: list[str] = []
    client = client_of(gateway, lines)
    thread, outcome = in_thread(lambda: client.run(amount_and, 7, gpu=0.5, max_retries=20))
    wait_until(lambda: any("cluster full" in line for line in lines), 60, "a first refusal")
    assert gateway.get("/api/cumulus/queue").json() == []  # it asked without waiting
    assert gateway.delete(f"/api/kernels/{held['id']}").status_code == 204
    thread.join(120)
    assert outcome == {"value": (7, None, "0.5")}, outcome
    refusal = next(line for line in lines if "cluster full" in line)
    assert "no device has 0.5 free" in refusal and "retry 1 of 20 in " in refusal
    assert nothing_left(gateway)


def test_no_retries_left_or_other_errors_raise_at_once(gateway: Gateway) -> None:
    gateway.start_kernel(KERNEL_GPU="1")
    lines: list[str] = []
    with pytest.raises(ResourceExhausted, match=r"no device has 0\.5 free") as caught:
        client_of(gateway, lines).run(amount_and, 1, gpu=0.5, max_retries=0)
    assert caught.value.retry_after is not None
    wrong = CumulusClient(gateway.url, "wrong-token", on_progress=lines.append)
    with pytest.raises(Unauthenticated):
        wrong.run(amount_and, 1, gpu=0.5, max_retries=5)
    assert not any("retry" in line for line in lines)
    assert nothing_left(gateway, partitions=1)  # only the one held


def test_by_default_a_call_waits_in_the_gateways_queue(gateway: Gateway) -> None:
    held = gateway.start_kernel(KERNEL_GPU="1")
    client = client_of(gateway, [])
    thread, outcome = in_thread(lambda: client.run(amount_and, 8, gpu=0.5))
    wait_until(lambda: gateway.get("/api/cumulus/queue").json(), 60, "the call to queue")
    assert gateway.delete(f"/api/kernels/{held['id']}").status_code == 204
    thread.join(120)
    assert outcome == {"value": (8, None, "0.5")}, outcome
    assert nothing_left(gateway)


# -- map --------------------------------------------------------------------------------------


def test_map_spreads_over_what_fits_in_input_order(gateway: Gateway) -> None:
    gateway.start_kernel(KERNEL_GPU="0.7")  # room for three 0.1s... and no more
    client = client_of(gateway)
    results = client.map(pid_of, range(12), gpu=0.1)
    assert [square for square, _ in results] == [x * x for x in range(12)]
    assert 1 <= len({pid for _, pid in results}) <= 3
    assert nothing_left(gateway, partitions=1)
    results = client.map(pid_of, range(6), gpu=0.1, max_parallel=2, progress=False)
    assert [square for square, _ in results] == [x * x for x in range(6)]
    assert len({pid for _, pid in results}) <= 2


def test_the_first_failure_is_raised_with_its_items_index(gateway: Gateway) -> None:
    client = client_of(gateway)
    with pytest.raises(RemoteError, match="ZeroDivisionError") as caught:
        client.map(inverse, [1, 2, 0, 4, 5, 6], gpu=0.1, max_parallel=2)
    assert caught.value.index == 2  # type: ignore[attr-defined]
    assert "raised by item 2 of 6 in CumulusClient.map" in caught.value.__notes__
    assert nothing_left(gateway)


def test_return_exceptions_puts_each_failure_in_its_place(gateway: Gateway) -> None:
    results = client_of(gateway).map(
        inverse, [1, 0, 4], gpu=0.1, max_parallel=2, return_exceptions=True
    )
    assert results[0] == 1.0 and results[2] == 0.25
    assert isinstance(results[1], RemoteError) and results[1].index == 1  # type: ignore[attr-defined]
    assert nothing_left(gateway)


def test_ctrl_c_during_a_map_releases_every_partition(gateway: Gateway) -> None:
    client = client_of(gateway)
    # Ctrl-C raises KeyboardInterrupt here whatever the process was started with: a job that
    # a shell without job control starts in the background inherits SIGINT ignored, and CI's
    # pytest, so started, took no Ctrl-C at all (runs 7-9: the map slept on to the timeout)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    seen: list[object] = []

    def kernels() -> int:
        try:
            return len(gateway.get("/api/kernels").json())
        except httpx.HTTPError:  # a slow answer on a loaded machine: ask again
            return 0

    def interrupt_once_started() -> None:
        try:  # whatever happens, Ctrl-C comes: the test fails with why, never hangs
            seen.append(wait_until(lambda: kernels() >= 2, 90, "two sessions"))
        except AssertionError as exc:
            seen.append(exc)
        finally:
            _thread.interrupt_main()

    threading.Thread(target=interrupt_once_started, daemon=True).start()
    try:
        with pytest.raises(KeyboardInterrupt):
            client.map(sleepy, [600] * 4, gpu=0.1, max_parallel=2)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert seen == [True], seen  # Ctrl-C came while both sessions ran
    wait_until(lambda: nothing_left(gateway), 60, "every partition to be released")
