"""The client's amount and duration grammar (`cumulus_jupyter.protocol.amounts`) gives the same
answers and messages as Chronos's, which is the authority (the client cannot import Chronos)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chronos import amount as chronos_amount
from chronos.errors import InvalidArgument as ChronosInvalid
from cumulus_jupyter.errors import InvalidArgument
from cumulus_jupyter.protocol import amounts

pytestmark = pytest.mark.unit

AMOUNT_TEXT = st.one_of(
    st.sampled_from(["0.5", " 0.1 ", "1", "8", "9", "0", "0.25", "1.0", "2.3", "abc", "", "nan",
                     "inf", "-0.5", "0.10", "1e-1", "08", "0x1"]),
    st.from_regex(r"-?\d{1,2}(\.\d{1,3})?", fullmatch=True),
    st.text(max_size=6),
)  # fmt: skip
AMOUNTS = st.one_of(
    AMOUNT_TEXT, st.integers(-3, 12), st.floats(allow_nan=True, allow_infinity=True), st.booleans()
)
DURATIONS = st.one_of(
    st.sampled_from(["90", "30m", "2h", "1h30m", "24h", "25h", "59", "1.5m", "0.5s", "", "1d",
                     " 10m ", "10 m", "m", "1x", "86400", "86401", "1h 30m"]),
    st.from_regex(r"\d{1,3}(\.\d)?[smhd]{1,2}", fullmatch=True),
    st.integers(0, 100_000), st.floats(0, 100_000), st.text(max_size=6), st.none(),
)  # fmt: skip


def outcome(parse: object, value: object) -> tuple[str, object]:
    try:
        return ("ok", parse(value))  # type: ignore[operator]
    except (ChronosInvalid, InvalidArgument) as exc:
        return ("error", str(exc))


@given(AMOUNTS)
def test_amounts_agree_with_chronos(value: object) -> None:
    ours = outcome(amounts.parse_amount, value)
    theirs = outcome(lambda v: chronos_amount.GpuAmount.parse(v).value, value)
    assert ours == theirs


@given(DURATIONS)
def test_durations_agree_with_chronos(value: object) -> None:
    assert outcome(amounts.parse_duration, value) == outcome(chronos_amount.parse_duration, value)


@given(st.integers(-10, 200_000))
def test_formatted_durations_agree_with_chronos(seconds: int) -> None:
    assert amounts.format_duration(seconds) == chronos_amount.format_duration(seconds)


def test_the_issue_example_message() -> None:
    with pytest.raises(InvalidArgument) as raised:
        amounts.parse_amount("2.3")
    assert str(raised.value) == "Invalid GPU amount: 2.3. Must be 0.1-0.9 or whole number 1-8"
