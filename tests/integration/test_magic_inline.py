"""``%%cumulus`` cells whose variables ride inside the execute request and its reply: no comm
round trip for values under 1 MiB; larger ones, and refusals, as before."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.blocking.client import BlockingKernelClient

from tests.integration.test_magic import gateway_and_notebook, run
from tests.support.gateway import Gateway
from tests.support.messages import status_text

pytestmark = pytest.mark.integration

#: run remotely first: counts the ``cumulus.vars`` comms the agent is opened for
COUNT_COMMS = """%%cumulus --session inline --no-push --no-pull
_cm = get_ipython().kernel.comm_manager
if not hasattr(_cm, "_cumulus_counted"):
    _cm._cumulus_counted = [0]
    _vars = _cm.targets["cumulus.vars"]
    def _counting(comm, msg, _vars=_vars, _n=_cm._cumulus_counted):
        _n[0] += 1
        return _vars(comm, msg)
    _cm.targets["cumulus.vars"] = _counting
_cm._cumulus_counted[0] = 0
"""
READ_COUNT = "%%cumulus --session inline --no-push --no-pull\nprint(_cm._cumulus_counted[0])\n"


@pytest.fixture(scope="module")
def notebook(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BlockingKernelClient]:
    both: tuple[BlockingKernelClient, Gateway]
    with gateway_and_notebook(tmp_path_factory.mktemp("inline")) as both:
        yield both[0]


def ok(kc: BlockingKernelClient, code: str) -> tuple[str, str]:
    reply, out, err, _ = run(kc, code)
    assert reply["status"] == "ok", (reply, err)
    return out, err


def comms_opened(kc: BlockingKernelClient) -> int:
    out, _ = ok(kc, READ_COUNT)
    return int(out.strip().splitlines()[-1])


def local(kc: BlockingKernelClient, expression: str) -> str:
    out, _ = ok(kc, f"print(repr(({expression})))")
    return out.strip()


def test_small_values_go_and_come_back_inside_the_cell_itself(notebook: Any) -> None:
    kc = notebook
    ok(kc, "x = list(range(1000))\ny = 5\ntable = {'a': [1, 2]}")
    ok(kc, COUNT_COMMS)
    ok(kc, "%%cumulus --session inline\nz = y * 2\nx.append(1)\ntable['a'].append(3)")
    assert comms_opened(kc) == 0  # the push, the result and both in-place changes: no comm
    assert local(kc, "z, len(x), x[-1], table") == "(10, 1001, 1, {'a': [1, 2, 3]})"
    # unchanged, nothing new: still nothing over comms, and the values stay equal
    ok(kc, COUNT_COMMS)
    ok(kc, "%%cumulus --session inline\nw = len(x) + y")
    assert comms_opened(kc) == 0
    assert local(kc, "w") == "1006"


def test_values_over_a_mebibyte_take_the_comm_and_come_back_whole(notebook: Any) -> None:
    kc = notebook
    ok(kc, "big = bytes(range(256)) * (5 * 2**12)")  # 5 MiB
    ok(kc, COUNT_COMMS)
    ok(kc, "%%cumulus --session inline\nn = len(big)\nback = big[: 3 * 2**20]\nsmall = n // 2")
    assert comms_opened(kc) >= 2  # the push, and the pull of `back` (deferred)
    assert local(kc, "n, len(back), back == big[: 3 * 2**20], small") == (
        "(5242880, 3145728, True, 2621440)"
    )


def test_a_carried_value_the_remote_cannot_load_stops_the_cell_and_changes_nothing(
    notebook: Any,
) -> None:
    kc = notebook
    ok(
        kc,
        "def _no_loading():\n    raise RuntimeError('this value does not load there')\n"
        "class Fragile:\n    def __reduce__(self):\n        return (_no_loading, ())\n"
        "fragile = Fragile()",
    )
    _, _, err, _ = run(kc, "%%cumulus --session inline\nran_remotely = True\ncopy = fragile")
    assert "refused the variables" in err and "does not load there" in err, err
    assert "Traceback" not in err
    assert local(kc, "'ran_remotely' in globals(), 'copy' in globals()") == "(False, False)"
    out, _ = ok(kc, "%%cumulus --session inline --no-push --no-pull\nprint(sorted(globals()))")
    assert "ran_remotely" not in out and "fragile" not in out


def test_every_output_arrives_before_the_cell_ends(notebook: Any) -> None:
    """The cell ends on the agent's mark, not the kernel's idle: nothing may be left behind."""
    kc = notebook
    for _ in range(5):
        reply, out, _, outputs = run(
            kc,
            "%%cumulus --session inline --no-push --no-pull\n"
            "from IPython.display import display\n"
            "for i in range(300):\n    print(i)\n    if i % 50 == 0:\n        display(i)\n"
            "i",
        )
        assert reply["status"] == "ok"
        assert out.split() == [str(i) for i in range(300)]
        shown = [m["content"]["data"]["text/plain"] for m in outputs
                 if m["msg_type"] in ("display_data", "execute_result")
                 and not m["content"]["data"]["text/plain"].startswith("Cumulus")]  # fmt: skip
        assert shown == [str(i) for i in range(0, 300, 50)] + ["299"]


def test_a_failed_cell_still_brings_back_what_ran_before_the_error(
    notebook: Any, tmp_path: Path
) -> None:
    kc = notebook
    reply, _, _, _ = run(
        kc, "%%cumulus --session inline\nbefore = 41 + 1\nraise ValueError('stop')"
    )
    assert reply["status"] == "error"
    assert local(kc, "before") == "42"


def test_a_value_that_cannot_travel_stays_remote_as_a_handle_later_cells_use(
    notebook: Any,
) -> None:
    kc = notebook
    cell = (
        "%%cumulus --session inline{}\ngen = (i * 10 for i in range(3))\n"
        "count = 3\nimport ipywidgets\nw = ipywidgets.IntSlider(value=3)"
    )
    _, _, err, outputs = run(kc, cell.format(""))
    # news in the cell's status display, not red stderr lines
    status = status_text(outputs)
    assert "Cumulus: gen stays in the remote kernel" in status, outputs
    assert "Cumulus: w stays in the remote kernel" in status and err == ""
    _, _, err, outputs = run(kc, cell.format(" --quiet"))
    assert status_text(outputs) == "" and err == ""  # --quiet hides them
    assert local(kc, "count") == "3"
    assert local(kc, "type(gen).__name__, 'cannot be pickled' in repr(gen)") == (
        "('RemoteRef', True)"
    )
    out, _ = ok(kc, "%%cumulus --session inline\nprint(next(gen), next(gen), w.value)")
    assert out.split() == ["0", "10", "3"]  # the remote's own generator and widget
    reply, _, err, _ = run(kc, "gen.fetch()")
    assert reply["status"] == "error" and "Use it in %%cumulus --session inline" in str(reply)


def test_a_session_outlives_the_gateway_being_unreachable_for_a_while(
    tmp_path: Path,
) -> None:
    """The link drops and the gateway cannot be reached for several tries (restarting, a
    network blip): the session reconnects with backoff and keeps its kernel and variables."""
    from tests.integration.test_magic import notebook_kernel
    from tests.support.gateway import Gateway
    from tests.support.tcp_relay import TcpRelay
    from tests.support.wait import wait_until

    gw = Gateway(tmp_path / "state" / "chronos.sqlite3", tmp_path / "gateway.log")
    relay = TcpRelay(gw.port)
    try:
        with notebook_kernel(gw, f"http://127.0.0.1:{relay.port}") as kc:
            ok(kc, "%%cumulus --session blip\nkept = 41")
            relay.down = True
            relay.cut()
            wait_until(lambda: relay.refused >= 3, timeout=60, what="reconnect tries")
            relay.down = False
            out, err = ok(kc, "%%cumulus --session blip\nprint(kept + 1)")
            assert "lost" not in err, err
            assert out.strip().splitlines()[-1] == "42"
    finally:
        relay.close()
        gw.stop()
