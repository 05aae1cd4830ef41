"""``%%cumulus`` / ``%cumulus`` options through IPython's `magic_arguments`: every option and
line command in their ``?`` help, the old options and error lines kept, ``--quiet`` added."""

from __future__ import annotations

import pytest

from cumulus_jupyter.errors import InvalidArgument
from cumulus_jupyter.magic import CumulusMagics, _options

OPTIONS = ["--gpu", "--duration", "--session", "--push", "--pull", "--no-push", "--no-pull",
           "--gateway", "--renew", "--requirements", "--resume", "--checkpoint-before-expiry",
           "--quiet"]  # fmt: skip
COMMANDS = ["status", "sessions", "release", "push", "pull", "checkpoint", "sync", "pip install"]


def test_the_cell_magics_help_lists_every_option_with_its_help() -> None:
    doc = CumulusMagics.cumulus.__doc__ or ""
    for option in OPTIONS:
        assert option in doc, option
    assert "Hide Cumulus's own status lines" in doc
    assert "::\n\n  %%cumulus [--gpu GPU]" in doc  # the usage line IPython's ? shows


def test_the_line_magics_help_lists_every_command() -> None:
    doc = CumulusMagics.cumulus_line.__doc__ or ""
    for command in COMMANDS:
        assert f"{command}" in doc, command
    assert "--session" in doc and "--name" in doc
    assert "::\n\n  %cumulus [--session SESSION]" in doc


def test_defaults_and_every_option_as_before() -> None:
    opts = _options("")
    assert (opts["gpu"], opts["duration"], opts["session"]) == ("0.5", "1h", None)
    assert (opts["push"], opts["pull"], opts["checkpoint_before_expiry"]) == ([], [], [])
    assert not (opts["no_push"] or opts["no_pull"] or opts["renew"] or opts["quiet"])
    opts = _options(
        "--gpu 1 --duration 30m --session s --push a,b --pull c --no-push --no-pull "
        "--gateway http://h:1 --renew --requirements 'numpy scipy' --resume run1 "
        "--checkpoint-before-expiry x,y --quiet"
    )
    assert opts == {
        "gpu": "1", "duration": "30m", "session": "s", "push": ["a", "b"], "pull": ["c"],
        "no_push": True, "no_pull": True, "gateway": "http://h:1", "renew": True,
        "requirements": "numpy scipy", "resume": "run1",
        "checkpoint_before_expiry": ["x", "y"], "quiet": True,
    }  # fmt: skip


def test_a_value_that_looks_like_options_stays_a_value() -> None:
    opts = _options("--session deps --requirements '--no-index --find-links /w pkg'")
    assert opts["requirements"] == "--no-index --find-links /w pkg"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("--frobnicate", "Unknown option: --frobnicate. Use --gpu, --duration"),
        ("--gpu", "--gpu needs a value"),
        ("--session s --push", "--push needs a value"),
        ("stray", "Unknown option: stray"),
        ("--session 'unclosed", "Cannot read the options"),
    ],
)
def test_a_bad_option_is_one_invalid_argument(line: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        _options(line)
    assert str(raised.value).startswith(message), str(raised.value)
    assert "\n" not in str(raised.value)
