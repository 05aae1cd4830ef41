"""``%%cumulus`` cells behave like local cells: each cell runs once in a plain local ipykernel
(the twin) and once through ``%%cumulus`` in another (the notebook, against a real gateway on
loopback), from the same namespace, and both must end with equal user namespaces (and fail
alike). Cells come from a small grammar (hypothesis) and from a corpus of notebook patterns
(`tests.integration.notebook_corpus`); bad input fails with one error and changes nothing.

One gateway, one remote session and two local kernels serve every example; before each one
the two local namespaces and the remote one are emptied and seeded again, and the session's
ledger forgotten, so examples are independent.
"""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import start_new_kernel

from tests.integration.notebook_corpus import CORPUS, MODULES
from tests.integration.test_magic import notebook_kernel
from tests.support.gateway import Gateway

pytestmark = pytest.mark.integration

SESSION = "diff"
CAP_MIB = 32
EXAMPLES = int(os.environ.get("CUMULUS_DIFFERENTIAL_EXAMPLES", "500"))
NS = "__import__('tests.support.namespaces').support.namespaces"
MAGICS = "get_ipython().magics_manager.registry['CumulusMagics']"
REMOTE_SETUP = (
    "def __cumulus_diff_reset__():\n"
    "    ns = get_ipython().user_ns\n"
    "    for k in [k for k in ns if k not in __cumulus_diff_base__]:\n"
    "        del ns[k]\n"
    "__cumulus_diff_base__ = set(get_ipython().user_ns) | {'__cumulus_diff_base__'}"
)


@dataclass
class Result:
    status: str
    error: str  # ename and evalue (and, for the notebook, the traceback text)
    out: str


def _start(kc: BlockingKernelClient, code: str) -> str:
    return str(kc.execute(code, allow_stdin=False))


def _finish(kc: BlockingKernelClient, msg_id: str) -> Result:
    """Wait for request ``msg_id`` to end: its reply and what it printed."""
    out: list[str] = []
    err: list[str] = []
    while True:
        message = kc.get_iopub_msg(timeout=180)
        if message["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = message["msg_type"], message["content"]
        if kind == "stream":
            (out if content["name"] == "stdout" else err).append(content["text"])
        if kind == "status" and content["execution_state"] == "idle":
            break
    while True:
        reply = kc.get_shell_msg(timeout=180)
        if reply["parent_header"].get("msg_id") == msg_id:
            break
    content = reply["content"]
    error = " ".join(
        [str(content.get("ename", "")), str(content.get("evalue", "")),
         *content.get("traceback", []), *err]
    )  # fmt: skip
    return Result(content["status"], error, "".join(out))


class Pair:
    """The twin (plain local kernel) and the notebook (``%%cumulus``), driven side by side."""

    def __init__(self, twin: BlockingKernelClient, notebook: BlockingKernelClient) -> None:
        self.twin, self.notebook = twin, notebook

    def both(self, twin_code: str, notebook_code: str) -> tuple[Result, Result]:
        twin_id = _start(self.twin, twin_code)
        notebook_id = _start(self.notebook, notebook_code)
        return _finish(self.twin, twin_id), _finish(self.notebook, notebook_id)

    def local(self, code: str) -> None:
        """The same local cell in both (setup: imports, data)."""
        twin, notebook = self.both(code, code)
        assert twin.status == notebook.status == "ok", (code, twin.error, notebook.error)

    def reset(self, seed: str = "") -> None:
        """Empty both local namespaces and the remote one, then run ``seed`` in both."""
        code = f"{NS}.reset(get_ipython())\n{seed}"
        remote = (
            f"{MAGICS}.sessions[{SESSION!r}].execute('__cumulus_diff_reset__()', lambda m: None)\n"
            f"{MAGICS}.sessions[{SESSION!r}].ledger.held.clear()\n"
        )
        twin, notebook = self.both(code, code + "\n" + remote)
        assert twin.status == notebook.status == "ok", (seed, twin.error, notebook.error)

    def cell(self, code: str) -> tuple[Result, Result]:
        """``code`` as a local cell in the twin and as a ``%%cumulus`` cell in the notebook."""
        return self.both(code, f"%%cumulus --session {SESSION}\n{code}")

    def namespaces(self) -> tuple[dict[str, Any], dict[str, Any]]:
        code = f"print({NS}.snapshot(get_ipython()))"
        twin, notebook = self.both(code, code)
        assert twin.status == notebook.status == "ok", (twin.error, notebook.error)
        return json.loads(twin.out), json.loads(notebook.out)

    def check(self, code: str, compare_out: bool = True, unpicklable: tuple[str, ...] = ()) -> str:
        """Run ``code`` both ways: both succeed or both fail alike, and the namespaces agree
        (but for names ``unpicklable``, which cannot come back)."""
        twin, notebook = self.cell(code)
        assert twin.status == notebook.status, (code, twin.error, notebook.error)
        if twin.status == "error":  # the same exception, named as the local cell names it
            ename = twin.error.split(" ")[0]
            assert notebook.error.split(" ")[0] == ename, (code, twin.error, notebook.error)
        elif compare_out:
            assert twin.out == notebook.out, code
        expected, got = self.namespaces()
        for name in unpicklable:  # stays remote, a handle of the same type here
            local, handle = expected.pop(name, None), got.pop(name, None)
            assert (local is None) == (handle is None), (code, name, local, handle)
            if handle is not None:  # the canon names the type first (generator) or second
                assert handle[:2] == ["RemoteRef", name] and handle[2] in local[:2], (code, name)
        differ = {
            n: (expected.get(n), got.get(n))
            for n in set(expected) | set(got)
            if expected.get(n) != got.get(n)
        }
        assert not differ, f"namespaces differ after\n{code}\n{json.dumps(differ)[:3000]}"
        return twin.status


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    tmp = tmp_path_factory.mktemp("differential")
    modules = tmp / "beside_the_notebook"
    for relative, source in MODULES.items():
        path = modules / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    gw = Gateway(
        tmp / "state" / "chronos.sqlite3", tmp / "gateway.log",
        f"--CumulusGateway.max_transfer_bytes={CAP_MIB * 2**20}",
    )  # fmt: skip
    try:
        km, twin = start_new_kernel(kernel_name="python3", startup_timeout=60)
        try:
            with notebook_kernel(gw) as notebook:
                both = Pair(twin, notebook)
                setup = f"import sys\nsys.path.insert(0, {str(modules)!r})\nimport matplotlib\nmatplotlib.use('Agg')"
                both.local(setup)
                first = _finish(
                    notebook, _start(notebook, f"%%cumulus --session {SESSION}\n{REMOTE_SETUP}")
                )
                assert first.status == "ok", first.error
                both.reset()
                yield both
        finally:
            twin.stop_channels()
            km.shutdown_kernel(now=True)
    finally:
        gw.stop()


# -- the grammar ---------------------------------------------------------------------------

INTS = ["a", "b", "c", "n", "x", "y", "z", "acc"]
SEEDS = {
    "a": "a = 3",
    "b": "b = -2",
    "c": "c = 10",
    "n": "n = 4",
    "lst": "lst = [3, 1, 2]",
    "d": "d = {'k': 1, 'm': 2}",
    "arr": "arr = np.arange(4)",
    "df": "df = pd.DataFrame({'a': [1, 2, 3], 'b': [4.0, 5.5, 6.0]})",
    "s": "s = 'hi'",
    "t": "t = (1, 'two')",
}


class Scope:
    """What the statements drawn so far surely bound (so most drawn cells run)."""

    def __init__(self, seeded: list[str]) -> None:
        self.ints = {n for n in seeded if n in INTS}
        self.others = {n for n in seeded if n not in INTS}

    def int_expr(self, draw: Any) -> str:
        names = sorted(self.ints)
        atoms = [str(draw(st.integers(-3, 9)))]
        if names:
            atoms += [draw(st.sampled_from(names)) for _ in range(2)]
        if "lst" in self.others:
            atoms.append(draw(st.sampled_from(["len(lst)", "sum(lst)", "lst[0]"])))
        if "arr" in self.others:
            atoms.append("int(arr.sum())")
        if "df" in self.others:
            atoms.append("int(df['a'].sum())")
        if "d" in self.others:
            atoms.append("d['k']")
        if draw(st.integers(0, 30)) == 0:
            atoms.append("missing_name")  # a NameError on both sides
        left, right = draw(st.sampled_from(atoms)), draw(st.sampled_from(atoms))
        op = draw(st.sampled_from(["+", "-", "*", "%", "//"]))
        if op in ("%", "//"):
            return f"({left}) {op} 7"
        return f"({left} {op} {right}) % 1000"

    def target(self, draw: Any) -> str:
        return str(draw(st.sampled_from(INTS)))

    def known_int(self, draw: Any) -> str | None:
        return draw(st.sampled_from(sorted(self.ints))) if self.ints else None


@st.composite
def statement(draw: Any, scope: Scope) -> str:
    e = lambda: scope.int_expr(draw)  # noqa: E731
    kind = draw(st.integers(0, 21))
    v = scope.target(draw)
    known = scope.known_int(draw)
    if kind == 0 or known is None:
        scope.ints.add(v)
        return f"{v} = {e()}"
    if kind == 1:
        return f"{known} += {e()}"
    if kind == 2:
        other = scope.known_int(draw)
        return f"{known}, {other} = {other}, {known}"
    if kind == 3:
        w = scope.target(draw)
        if v == w:
            scope.ints.add(v)
        return f"if {e()} > {draw(st.integers(0, 9))}:\n    {v} = {e()}\nelse:\n    {w} = {e()}"
    if kind == 4:
        return f"if {e()} > 3:\n    {v} = {e()}"  # conditionally bound: pushed if it exists
    if kind == 5:
        return f"for i in range(({e()}) % 5):\n    {known} = {known} + i"
    if kind == 6:
        src = "lst" if "lst" in scope.others else f"range(({e()}) % 6)"
        scope.others.add("comp")
        return f"comp = [i * {e()} for i in {src} if i % 2 == {draw(st.integers(0, 1))}]"
    if kind == 7 and "d" in scope.others:
        scope.others.add("dd")
        return f"dd = {{k: v * {e()} for k, v in d.items() if v > {known}}}"
    if kind == 8:
        scope.ints.add(v)
        scope.others.add("f")
        return f"def f(q, r={known}):\n    return (q + r + {known}) % 1000\n{v} = f({e()})"
    if kind == 9:
        scope.ints.add(v)
        scope.others.add("g")
        return f"g = lambda q: (q * {known}) % 1000\n{v} = g({e()})"
    if kind == 10:
        scope.ints.discard(known)
        return f"del {known}"
    if kind == 11:
        w = scope.target(draw)
        scope.ints |= {v, w}
        return f"{v} = [({w} := {e()}), {w} + 1][1]"
    if kind == 12:
        scope.others.add("label")
        return f"label = f'{{{e()}}}-{{{known}!r:>4}}'"
    if kind == 13:
        scope.ints.add(v)
        return (
            f"match ({e()}) % 3:\n    case 0:\n        {v} = 1\n    case 1 as caught:\n"
            f"        {v} = caught\n    case _:\n        {v} = 2"
        )
    if kind == 14 and "lst" in scope.others:
        return draw(st.sampled_from([f"lst.append({e()})", "lst.sort()", f"lst[0] = {e()}",
                                     "lst.reverse()", f"lst += [{e()}]"]))  # fmt: skip
    if kind == 15 and ("arr" in scope.others or "df" in scope.others or "d" in scope.others):
        options = []
        if "arr" in scope.others:
            options += [f"arr[0] = {e()}", "arr *= 2", f"arr += {e()}"]
        if "df" in scope.others:
            options += [f"df['a'] = df['a'] + {e()}", f"df.loc[0, 'b'] = {e()}"]
        if "d" in scope.others:
            options += [f"d['k'] = {e()}", f"d.update(m={e()})", "d.pop('m', None)"]
        return str(draw(st.sampled_from(options)))
    if kind == 16:
        scope.ints.add(v)
        scope.others.add("setter")
        return f"def setter():\n    global {v}\n    {v} = ({known} + 1) % 1000\nsetter()"
    if kind == 17:
        scope.ints.add(v)
        scope.others.add("make")
        return (
            f"def make(k):\n    def inner(q):\n        return (q * k + {known}) % 1000\n"
            f"    return inner\n{v} = make({e()})(2)"
        )
    if kind == 18:
        scope.ints.add(v)
        return f"try:\n    {v} = {e()} // ({known} - {known})\nexcept ZeroDivisionError as err:\n    {v} = len(str(err)) + {e()}"
    if kind == 19:
        scope.ints.add(v)
        scope.others.add("Box")
        return (
            f"class Box:\n    base = {known}\n    def get(self):\n        return (self.base + {e()}) % 1000\n"
            f"{v} = Box().get()"
        )
    if kind == 20:
        scope.others.add("total")
        return f"total = sum(j for j in range(5) if j > {known} % 5)"
    if kind == 21:
        return f"print({e()}, {known})"
    scope.ints.add(v)
    return f"{v} = {e()}"


@st.composite
def cells(draw: Any) -> tuple[str, str]:
    seeded = ["a", "b", *draw(st.lists(st.sampled_from(sorted(SEEDS)), max_size=6, unique=True))]
    seeded = list(dict.fromkeys(seeded))
    scope = Scope(seeded)
    body = [draw(statement(scope)) for _ in range(draw(st.integers(1, 5)))]
    seed = "import numpy as np\nimport pandas as pd\n" + "\n".join(SEEDS[n] for n in seeded)
    return seed, "\n".join(body)


@pytest.mark.timeout(600)
def test_generated_cells_leave_the_namespace_a_local_cell_would(pair: Pair) -> None:
    @settings(
        max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    @given(cells())
    def one(example: tuple[str, str]) -> None:
        seed, code = example
        pair.reset(seed)
        statuses.append(pair.check(code))

    statuses: list[str] = []
    one()
    assert len(statuses) >= EXAMPLES  # hypothesis ran them all
    assert statuses.count("ok") >= 0.6 * len(statuses)  # most generated cells run to the end
    print(f"{len(statuses)} generated cells, {statuses.count('ok')} ran without an error")


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_notebook_patterns_leave_the_namespace_a_local_cell_would(pair: Pair, name: str) -> None:
    pair.reset("import numpy as np\nimport pandas as pd")
    steps = CORPUS[name]
    unpicklable = tuple(code for kind, code in steps if kind == "unpicklable")
    for kind, code in steps:
        code = textwrap.dedent(code).strip("\n")
        if kind == "local":
            pair.local(code)
        elif kind == "cell":
            pair.check(code, compare_out="%time" not in code, unpicklable=unpicklable)


# -- bad input -----------------------------------------------------------------------------


def _unchanged_after(pair: Pair, seed: str, code: str) -> Result:
    pair.reset(seed)
    before, _ = pair.namespaces()
    _, notebook = pair.both("pass", f"%%cumulus --session {SESSION}\n{code}")
    twin_after, after = pair.namespaces()
    assert after == before == twin_after
    return notebook


@pytest.mark.parametrize(
    ("seed", "culprit"),
    [
        ("gen = (i for i in range(3))", "'gen' (generator)"),
        (
            "import sqlite3\ndb = sqlite3.connect(':memory:')",
            "'db' (Connection)",
        ),  # dill pickles locks
    ],
)
def test_an_unpicklable_value_is_named_and_the_cell_does_not_run(
    pair: Pair, seed: str, culprit: str
) -> None:
    name = culprit.split("'")[1]
    notebook = _unchanged_after(
        pair, f"marker = 'local'\n{seed}", f"marker = 'remote'\nprint({name})"
    )
    assert notebook.status == "error" and f"Cannot send {culprit}" in notebook.error
    assert notebook.out == ""  # the cell did not run
    _, out = pair.both("pass", f"%%cumulus --session {SESSION}\nprint('marker' in dir())")
    assert out.out == "False\n"  # nothing reached the remote either


def test_a_cell_that_is_not_python_fails_with_the_remote_syntax_error(pair: Pair) -> None:
    notebook = _unchanged_after(pair, "x = 1", "x = 2\ny = (x +")
    assert notebook.status == "error" and notebook.error.startswith("SyntaxError ")


def test_what_comes_back_fits_under_the_gateway_cap(pair: Pair) -> None:
    """A value no transfer could carry stays remote (a `RemoteRef`) and the rest come back;
    two that fit alone but not together come in two transfers (the cell failed with TooLarge
    after it had run, and nothing came back: the namespaces parted)."""
    pair.reset("v = 1")
    half = CAP_MIB * 2**20 * 5 // 8
    _, notebook = pair.cell(
        f"w = bytes({CAP_MIB * 2**20 + 1})\nv = 3\na = bytes({half})\nb = b'x' * {half}"
    )
    assert notebook.status == "ok", notebook.error
    _, shown = pair.both("pass", "print(type(w).__name__, v, len(a), b[:2], len(b))")
    assert shown.out == f"RemoteRef 3 {half} b'xx' {half}\n"
    pair.reset()


def test_a_push_over_the_gateway_cap_is_refused_and_nothing_changes(pair: Pair) -> None:
    notebook = _unchanged_after(
        pair, f"import numpy as np\nbig = np.zeros({CAP_MIB * 2**20 // 8 + 1024})\nsmall = 1",
        "small = 2\nprint(big.sum(), small)",
    )  # fmt: skip
    assert notebook.status == "error" and "over the gateway's cap" in notebook.error
    assert notebook.out == ""
