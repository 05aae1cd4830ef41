"""jupyter_kernel_test's conformance suite against the Cumulus GPU kernel (the local proxy in
front of a real gateway and a remote ipykernel in a partition)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import jupyter_kernel_test
import pytest

from cumulus_jupyter import kernelspec
from tests.support.gateway import Gateway

pytestmark = pytest.mark.conformance


class TestCumulusKernel(jupyter_kernel_test.KernelTests):
    kernel_name = "cumulus-gpu-conformance"
    language_name = "python"
    file_extension = ".py"
    code_hello_world = "print('hello, world')"
    code_stderr = "import sys; print('test', file=sys.stderr)"
    completion_samples: ClassVar[list[dict[str, Any]]] = [{"text": "zi", "matches": {"zip"}}]
    complete_code_samples: ClassVar[list[str]] = [
        "1",
        "print('hello, world')",
        "def f(x):\n  return x*2\n\n\n",
    ]
    incomplete_code_samples: ClassVar[list[str]] = ["print('''hello", "def f(x):\n  x*2"]
    invalid_code_samples: ClassVar[list[str]] = ["import = 7q"]
    code_page_something = "zip?"
    code_generate_error = "raise ValueError('boom')"
    code_execute_result: ClassVar[list[dict[str, str]]] = [
        {"code": "1+2+3", "result": "6"},
        {"code": "[n*n for n in range(1, 4)]", "result": "[1, 4, 9]"},
    ]
    code_display_data: ClassVar[list[dict[str, str]]] = [
        {
            "code": "from IPython.display import HTML, display; display(HTML('<b>test</b>'))",
            "mime": "text/html",
        },
        {
            "code": "from IPython.display import Math, display; display(Math('\\\\frac{1}{2}'))",
            "mime": "text/latex",
        },
    ]
    code_history_pattern = "1?2*"
    supported_history_operations = ("tail", "search")
    code_inspect_sample = "zip"
    code_clear_output = "from IPython.display import clear_output; clear_output()"

    saved_env: ClassVar[dict[str, str | None]] = {}
    tmp: ClassVar[tempfile.TemporaryDirectory[str]]
    gateway: ClassVar[Gateway]

    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = tempfile.TemporaryDirectory()
        root = Path(cls.tmp.name)
        cls.gateway = Gateway(root / "state" / "chronos.sqlite3", root / "gateway.log")
        env = {
            "JUPYTER_PATH": str(root / "share" / "jupyter"),
            "CUMULUS_GATEWAY_URL": cls.gateway.url,
            "CUMULUS_TOKEN": cls.gateway.token,
        }
        cls.saved_env = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        kernelspec.install("0.3", "1h", name=cls.kernel_name, prefix=str(root))
        super().setUpClass()

    @classmethod
    def tearDownClass(cls) -> None:
        try:
            super().tearDownClass()
        finally:
            cls.gateway.stop()
            for key, value in cls.saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            cls.tmp.cleanup()
