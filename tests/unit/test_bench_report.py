"""`benchmarks/report.py`: the relay rows, and issue 14's bounds judged on the rows taken in
turns."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import report


def test_cells_are_judged_on_the_round_trips_taken_in_turns(tmp_path: Path) -> None:
    (tmp_path / "relay.json").write_text(json.dumps({
        "direct jupyter_client": {"median_ms": 5.0},
        "cumulus gateway": {"median_ms": 5.5},
        "%%cumulus cell (warm session)": {"median_ms": 7.0},
    }))  # fmt: skip
    (tmp_path / "relay_in_turns.json").write_text(json.dumps({
        "direct": {"median_ms": 6.0}, "gateway": {"median_ms": 6.3},
        "pass": {"median_ms": 7.2}, "push": {"median_ms": 9.0},
    }))  # fmt: skip
    table = {r.name: r for r in report.rows(tmp_path)}
    sequential = table["round trip: %%cumulus cell (warm session) vs direct"]
    assert (sequential.ratio, sequential.met) == (1.4, None)  # shown, not judged
    cell = table["round trip, in turns: %%cumulus cell running pass vs direct"]
    assert (round(cell.ratio, 2), cell.target, cell.met) == (1.2, 1.25, True)
    push = table["round trip, in turns: %%cumulus cell pushing 100 KiB vs direct"]
    assert (push.ratio, push.target, push.met) == (1.5, 1.4, False)
    assert table["round trip, in turns: gateway WebSocket vs direct"].met is True
