import pytest

from chronos import GpuAmount, InvalidArgument, parse_duration
from chronos.amount import format_duration

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("given", "tenths"),
    [("0.1", 1), (0.5, 5), ("0.9", 9), (1, 10), ("8", 80), ("2.0", 20), (0.1 * 3, 3), (3.0, 30)],
)
def test_valid_amounts(given: object, tenths: int) -> None:
    assert GpuAmount.parse(given).tenths == tenths  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        ("2.3", "2.3"), (2.3, "2.3"), ("0", "0"), (0, "0"), ("0.05", "0.05"), ("9", "9"),
        ("1.5", "1.5"), ("-0.5", "-0.5"), ("abc", "abc"), ("", ""), ("nan", "nan"),
        (float("inf"), "inf"), (True, "True"), ("0.25", "0.25"),
    ],
)  # fmt: skip
def test_invalid_amounts_name_the_value_and_the_rule(given: object, shown: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        GpuAmount.parse(given)  # type: ignore[arg-type]
    assert str(info.value) == f"Invalid GPU amount: {shown}. Must be 0.1-0.9 or whole number 1-8"


def test_the_issue_message_exactly() -> None:
    with pytest.raises(
        InvalidArgument, match=r"^Invalid GPU amount: 2\.3\. Must be 0\.1-0\.9 or whole number 1-8$"
    ):
        GpuAmount.parse("2.3")


def test_amount_shape() -> None:
    half, two = GpuAmount.parse("0.5"), GpuAmount.parse(2)
    assert (half.is_fraction, half.device_count, half.tenths_per_device) == (True, 1, 5)
    assert (two.is_fraction, two.device_count, two.tenths_per_device) == (False, 2, 10)
    assert str(half) == "0.5" and str(two) == "2"


@pytest.mark.parametrize(
    ("given", "seconds"),
    [(None, 3600), (90, 90), ("90", 90), ("90s", 90), ("30m", 1800), ("2h", 7200),
     ("1h30m", 5400), ("24h", 86400), ("1d", 86400), (60, 60), (120.0, 120), (" 5m ", 300)],
)  # fmt: skip
def test_valid_durations(given: object, seconds: int) -> None:
    assert parse_duration(given) == seconds  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "given", [59, "10s", "25h", 86401, "abc", "", "5x", "m", -60, "1.5s", 90.5, "2h junk", True]
)
def test_invalid_durations(given: object) -> None:
    with pytest.raises(InvalidArgument, match=r"^Invalid duration: .*Must be 60 s to 86400 s"):
        parse_duration(given)  # type: ignore[arg-type]


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0, 59, 60, 5400, 86400)] == [
        "0s", "59s", "1m", "1h30m", "24h"
    ]  # fmt: skip
