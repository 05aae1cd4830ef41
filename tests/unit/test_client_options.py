"""`CumulusClient`'s options are checked before anything starts: each wrong one is one
`InvalidArgument` that says what is wrong. The client here points at a port nobody listens on,
so a request that was made would fail with `Unavailable` instead."""

from __future__ import annotations

from typing import Any

import pytest

from cumulus_jupyter import CumulusClient, remote, run
from cumulus_jupyter.client import (
    RETRY_MAX_S,
    CallOptions,
    backoff,
    check_call,
    fits,
)
from cumulus_jupyter.errors import InvalidArgument, Unavailable
from tests.support.gateway import free_port

pytestmark = pytest.mark.unit

NOWHERE = f"http://127.0.0.1:{free_port()}"


@pytest.fixture
def client() -> CumulusClient:
    return CumulusClient(NOWHERE, "t", on_progress=lambda line: None)


def train(data: Any, scale: int = 1) -> Any:
    return data * scale


def with_gpu(x: int, gpu: int = 0) -> int:
    return x + gpu


def test_gpu_memory_and_its_other_name_gpu_give_the_amount() -> None:
    assert CallOptions.parse(gpu_memory=0.5).gpu == "0.5"
    assert CallOptions.parse(gpu="0.3").gpu == "0.3"
    assert CallOptions.parse(gpu=2).gpu == "2"
    assert CallOptions.parse().gpu == "0.5"
    assert CallOptions.parse(default_gpu=0.1).gpu == "0.1"


def test_both_names_of_the_amount_at_once_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="gpu_memory= or gpu="):
        CallOptions.parse(gpu_memory=0.5, gpu=0.5)


@pytest.mark.parametrize("bad", [2.3, "2.3", 0, 0.25, 9, "half", True])
def test_an_amount_outside_the_grammar_is_refused_with_the_rule(bad: Any) -> None:
    with pytest.raises(InvalidArgument, match=r"^Invalid GPU amount: .*Must be 0.1-0.9"):
        CallOptions.parse(gpu_memory=bad)


def test_durations_in_seconds_or_with_units() -> None:
    assert CallOptions.parse(duration=3600).duration_s == 3600
    assert CallOptions.parse(duration="1h30m").duration_s == 5400
    for bad in ("2s", 10**6, "soon"):
        with pytest.raises(InvalidArgument, match="Invalid duration"):
            CallOptions.parse(duration=bad)


def test_requirements_as_a_list_or_one_shell_string() -> None:
    assert CallOptions.parse(requirements=["numpy>=2"]).requirements == ("numpy>=2",)
    assert CallOptions.parse(requirements="--no-index 'a b'").requirements == ("--no-index", "a b")
    with pytest.raises(InvalidArgument, match="Invalid requirements"):
        CallOptions.parse(requirements=[1, 2])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("option", "bad"),
    [("timeout", 0), ("timeout", -1), ("timeout", "5"), ("max_retries", -1),
     ("max_retries", True), ("max_retries", 1.5), ("session", "  ")],
)  # fmt: skip
def test_timeouts_retries_and_session_names_are_checked(option: str, bad: Any) -> None:
    with pytest.raises(InvalidArgument, match=f"Invalid {option}"):
        CallOptions.parse(**{option: bad})


def test_an_unknown_option_names_the_closest_one_and_fn_kwargs(client: CumulusClient) -> None:
    with pytest.raises(InvalidArgument) as caught:
        client.run(train, 1, gpu_memroy=0.5)  # type: ignore[arg-type]
    message = str(caught.value)
    assert message.startswith("Unknown option gpu_memroy= for CumulusClient.run")
    assert "did you mean gpu_memory=?" in message and "fn_kwargs={'gpu_memroy': ...}" in message


def test_bad_input_to_run_fails_before_any_request(client: CumulusClient) -> None:
    with pytest.raises(InvalidArgument, match=r"Invalid GPU amount: 2\.3"):
        client.run(train, 1, gpu_memory=2.3)
    with pytest.raises(InvalidArgument, match="cannot take these arguments"):
        client.run(train, 1, 2, 3)
    with pytest.raises(InvalidArgument, match="cannot take these arguments"):
        client.run(train, 1, fn_kwargs={"nope": 1})
    with pytest.raises(InvalidArgument, match="fn_kwargs must be a dict"):
        client.run(train, 1, fn_kwargs=[1])  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="not callable"):
        client.run(42)  # type: ignore[arg-type]
    with pytest.raises(Unavailable):  # good input: the request is made (and fails here)
        client.run(with_gpu, 1, gpu=0.1, fn_kwargs={"gpu": 2})


def test_map_checks_its_items_and_options_first(client: CumulusClient) -> None:
    for items in (5, None, "abc"):
        with pytest.raises(InvalidArgument, match="items must be an iterable"):
            client.map(train, items)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="Invalid max_parallel"):
        client.map(train, [1], max_parallel=0)
    with pytest.raises(InvalidArgument, match=r"Invalid GPU amount: 2\.3"):
        client.map(train, [1], gpu_memory=2.3)
    with pytest.raises(
        InvalidArgument, match=r"Unknown option max_paralel= for CumulusClient\.map"
    ):
        client.map(train, [1], max_paralel=2)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="cannot take these arguments"):
        client.map(with_gpu, [1], fn_kwargs={"gpus": 1})
    assert client.map(train, []) == []  # nothing to do: no request


def test_module_run_passes_keywords_the_function_takes_and_refuses_others() -> None:
    with pytest.raises(
        InvalidArgument, match=r"Unknown option gpu_memroy= for cumulus_jupyter\.run"
    ):
        run(train, 1, gpu_memroy=0.5, server_url=NOWHERE)
    with pytest.raises(InvalidArgument, match="scale= is given both"):
        run(train, 1, scale=2, fn_kwargs={"scale": 3}, server_url=NOWHERE)
    with pytest.raises(InvalidArgument, match=r"Invalid GPU amount: 2\.3"):
        run(train, 1, gpu_memory=2.3, server_url=NOWHERE)
    with pytest.raises(Unavailable):  # `scale` is train's: accepted, and the request is made
        run(train, 1, scale=2, server_url=NOWHERE)


def test_remote_checks_its_options_when_it_decorates() -> None:
    with pytest.raises(InvalidArgument, match=r"Invalid GPU amount: 2\.3"):
        remote(gpu_memory=2.3)
    with pytest.raises(InvalidArgument, match="keyword-only"):
        remote(0.5)  # type: ignore[call-overload]
    with pytest.raises(InvalidArgument, match="Unknown option gpus= for remote"):
        remote(gpus=1)  # type: ignore[call-overload]
    bare = remote(train)
    assert bare.__name__ == "train"
    decorated = remote(gpu=0.2, server_url=NOWHERE)(with_gpu)
    with pytest.raises(InvalidArgument, match="cannot take these arguments"):
        decorated(1, 2, 3)  # type: ignore[call-arg]
    with pytest.raises(Unavailable):  # a `gpu` keyword of the call goes to the function
        decorated(1, gpu=3)


def test_check_call_binds_like_python() -> None:
    check_call(train, [1], {"scale": 2})
    check_call(print, [1, 2], {"sep": ","})
    with pytest.raises(InvalidArgument, match=r"^train\(\) cannot take these arguments"):
        check_call(train, [], {})


def test_backoff_doubles_up_to_the_cap_and_never_past_retry_after() -> None:
    waits = [backoff(n, None) for n in range(8)]
    assert 0.9 <= waits[0] <= 1.1 and 1.8 <= waits[1] <= 2.2
    assert max(waits) <= RETRY_MAX_S * 1.1
    assert backoff(5, 3.0) == 3.0  # the gateway knows room is free by then
    assert backoff(0, 3000.0) <= 1.1  # a release may free room sooner


def test_fits_counts_tenths_and_whole_devices() -> None:
    devices = [{"free": 1.0}, {"free": 0.4}, {"free": 0.30000000000000004}]
    assert fits(devices, 0.1) == 17
    assert fits(devices, 0.3) == 3 + 1 + 1
    assert fits(devices, 0.5) == 2
    assert fits(devices, 1) == 1
    assert fits([{"free": 1.0}] * 3, 2) == 1
    assert fits([], 0.1) == 0
