"""A kernel request's ``env``: only bounded, printable ``KERNEL_*`` variables reach the
provisioner; anything malformed is `InvalidArgument` (400) naming it."""

from __future__ import annotations

import pytest

from cumulus_jupyter.errors import InvalidArgument
from gateway.handlers.kernels import MAX_ENV_VALUE, MAX_ENV_VARS, check_amounts, validated_env

pytestmark = pytest.mark.unit


def test_kernel_variables_pass_and_others_are_dropped() -> None:
    env = {"KERNEL_GPU": "0.5", "KERNEL_USERNAME": "ana", "PATH": "/x", "JUPYTER_TOKEN": "t"}
    assert validated_env(env) == {"KERNEL_GPU": "0.5", "KERNEL_USERNAME": "ana"}
    assert validated_env(None) == {}
    assert validated_env({"KERNEL_X": "tab\tand newline\n"}) == {"KERNEL_X": "tab\tand newline\n"}
    assert validated_env({"KERNEL_X": "a" * MAX_ENV_VALUE}) == {"KERNEL_X": "a" * MAX_ENV_VALUE}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (["KERNEL_GPU"], "env must be a JSON object of string values"),
        ("KERNEL_GPU=0.5", "env must be a JSON object of string values"),
        ({f"KERNEL_{i}": "x" for i in range(MAX_ENV_VARS + 1)}, "at most 128 allowed"),
        ({"KERNEL_X": 5}, "env KERNEL_X: value must be a string"),
        ({"KERNEL_X": None}, "env KERNEL_X: value must be a string"),
        ({"1KERNEL": "x"}, "'1KERNEL': not a valid variable name"),
        ({"KERNEL-X": "x"}, "'KERNEL-X': not a valid variable name"),
        ({"": "x"}, "'': not a valid variable name"),
        ({"K" * 129: "x"}, "not a valid variable name"),
        ({"KERNEL_X": "a" * (MAX_ENV_VALUE + 1)}, "longer than 4096 characters"),
        ({"KERNEL_X": "a\x00b"}, "env KERNEL_X: value contains control characters"),
        ({"KERNEL_X": "\x1b[31m"}, "value contains control characters"),
        ({"KERNEL_X": "del\x7f"}, "value contains control characters"),
        (
            {"OTHER": "a\x00b"},
            "env OTHER: value contains control characters",
        ),  # checked, then dropped
    ],
)
def test_a_malformed_env_is_refused_naming_what_is_wrong(raw: object, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message) as refused:
        validated_env(raw)
    assert refused.value.status == 400 and refused.value.exit_code == 2


def test_bad_amounts_are_refused_with_the_chronos_message_as_invalid_argument() -> None:
    check_amounts({"KERNEL_GPU": "0.5", "KERNEL_DURATION": "30m"})
    with pytest.raises(InvalidArgument, match=r"Invalid GPU amount: 2\.3\. Must be 0\.1-0\.9"):
        check_amounts({"KERNEL_GPU": "2.3"})
    with pytest.raises(InvalidArgument, match="Invalid duration: 5s"):
        check_amounts({"KERNEL_DURATION": "5s"})
