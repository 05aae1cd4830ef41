"""The proxy kernel's process: its public names, its options from the kernelspec's environment,
its connection file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import cumulus_jupyter.kernel
from cumulus_jupyter.kernel import main
from cumulus_jupyter.kernel.launch import read_connection_file
from cumulus_jupyter.kernel.link import KernelOptions
from cumulus_jupyter.protocol import env

pytestmark = pytest.mark.unit
CONNECTION = {"ip": "127.0.0.1", "key": "k", "shell_port": 1, "iopub_port": 2, "stdin_port": 3,
              "control_port": 4, "hb_port": 5}  # fmt: skip


def test_the_package_exports_the_kernel_and_main() -> None:
    assert cumulus_jupyter.kernel.__all__ == ["ProxyKernel", "main"]


def test_options_come_from_the_kernelspecs_environment() -> None:
    environ = {env.GPU: "0.5", env.DURATION: "30m", env.SYNC: "Yes"}
    assert KernelOptions.from_env(environ) == KernelOptions("0.5", "30m", sync=True)
    assert KernelOptions.from_env({}) == KernelOptions("", "", sync=False)
    assert not KernelOptions.from_env({env.SYNC: "0"}).sync


def test_a_connection_file_needs_every_port_and_the_key(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(CONNECTION))
    bad.write_text(json.dumps({k: v for k, v in CONNECTION.items() if k != "hb_port"}))
    assert read_connection_file(str(good)) == CONNECTION
    with pytest.raises(KeyError):
        read_connection_file(str(bad))


def test_main_refuses_a_bad_connection_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    assert main(["-f", str(tmp_path / "bad.json")]) == 2
    assert "bad connection file" in capsys.readouterr().err
