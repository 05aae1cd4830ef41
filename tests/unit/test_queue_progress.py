"""The waiting lines a notebook, the Cumulus GPU kernel and ``cumulus submit`` show while a
request is queued carry the gateway's estimated start (``eta_s``), and say nothing of one that
is unknown."""

from __future__ import annotations

import re
import time

import pytest

from cumulus_jupyter.jobs import waiting_line
from cumulus_jupyter.remote_kernel import estimated_start

pytestmark = pytest.mark.unit

ENTRY = {"position": 2, "request_id": 7, "owner": "ana", "amount": 0.5, "waited_s": 12.0,
         "waiting_for": "no device has 0.5 free (largest free: 0.3 on gpu0)"}  # fmt: skip


def test_an_estimate_is_shown_as_a_time_and_a_wait() -> None:
    line = estimated_start(ENTRY | {"eta_s": 1500.0})
    assert re.fullmatch(r", estimated start \d\d:\d\d:\d\d \(in 25 min\)", line), line
    assert estimated_start(ENTRY | {"eta_s": 30}).endswith("(in 30 s)")


def test_an_unknown_estimate_is_left_out() -> None:
    assert estimated_start(ENTRY | {"eta_s": None}) == ""
    assert estimated_start(ENTRY) == ""  # an older gateway


def test_a_pending_job_shows_its_estimated_start() -> None:
    job = {"id": "j-1", "created_at": time.time() - 5, "queue": [ENTRY | {"eta_s": 600.0}]}
    line = waiting_line(job)
    assert line.startswith("j-1 pending: queue position 2 (no device has 0.5 free")
    assert "(in 10 min)" in line


def test_a_client_finds_its_own_entry_by_its_tag_wherever_fair_share_put_it() -> None:
    from cumulus_jupyter.remote_kernel import own_entry

    mine = ENTRY | {"position": 1, "tag": "t-mine", "eta_s": 60.0}
    queue = [mine, ENTRY | {"position": 2, "tag": "t-other"}, ENTRY | {"position": 3, "tag": None}]
    assert own_entry(queue, "t-mine") is mine
    assert own_entry(queue, "t-gone") is queue[-1]  # not listed (yet): the last, as before
    job = {
        "id": "j-7",
        "created_at": time.time(),
        "queue": [ENTRY | {"tag": "j-7", "position": 1}, ENTRY | {"position": 2}],
    }
    assert waiting_line(job).startswith("j-7 pending: queue position 1")
