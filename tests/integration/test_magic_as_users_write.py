"""``%%cumulus`` cells as data scientists write them, in a notebook of several cells: what one
remote cell leaves behind must work in the next local cell as a local cell's would (values
that can be written to, methods that still read the notebook's globals, closures that kept
counting)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.blocking.client import BlockingKernelClient

from tests.integration.test_magic import gateway_and_notebook, run
from tests.support.gateway import Gateway

pytestmark = pytest.mark.integration

CELL = "%%cumulus --session users\n"


TRAINING = (
    "import numpy as np\n"
    "class Linear:\n"
    "    def __init__(self, n):\n"
    "        self.w = np.zeros(n)\n"
    "    def params(self):\n"
    "        return [self.w]\n"
    "    def grads(self, X, y):\n"
    "        return [2 * X.T @ (X @ self.w - y) / len(y)]\n"
    "class SGD:\n"
    "    def __init__(self, params, lr=0.1):\n"
    "        self.params, self.lr = params, lr\n"
    "    def step(self, grads):\n"
    "        for p, g in zip(self.params, grads):\n"
    "            p -= self.lr * g\n"
    "X = np.eye(3)\ny = np.array([1.0, 2.0, 3.0])\n"
    "model = Linear(3)\nopt = SGD(model.params())\nlosses = []"
)  # a model and an optimizer on its parameters, as PyTorch has them


@pytest.fixture(scope="module")
def notebook(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[BlockingKernelClient, Gateway]]:
    with gateway_and_notebook(Path(tmp_path_factory.mktemp("users"))) as both:
        yield both


def ok(kc: BlockingKernelClient, code: str) -> str:
    """Run ``code``; it must succeed; what it printed."""
    reply, out, err, _ = run(kc, code)
    assert reply["status"] == "ok", (code, reply.get("ename"), reply.get("evalue"), err)
    return out


def test_arrays_and_frames_that_came_back_can_be_written_to(notebook: Any) -> None:
    """A DataFrame made in a remote cell and edited in the next local cell (``df.loc[...] =``),
    an array updated in place (``w -= lr * g``): the values that came back, small ones inside
    the reply and a 2 MiB one over the comm, were read-only views of the received frames."""
    kc, _ = notebook
    ok(
        kc,
        "import numpy as np, pandas as pd\nraw = pd.DataFrame({'g': list('abab'), 'x': [1.0, 2.0, None, 4.0]})",
    )
    ok(
        kc,
        CELL
        + "df = raw.dropna().assign(z=lambda d: d.x * 2)\nw = np.zeros(3)\nbig = np.ones(2**18)",
    )
    out = ok(
        kc,
        "df.loc[df.g == 'a', 'x'] = 100\nw -= 0.5 * np.ones(3)\nbig[0] = 7\n"
        "print(df.x.tolist(), w.tolist(), big[:2].tolist())",
    )
    assert out == "[100.0, 2.0, 4.0] [-0.5, -0.5, -0.5] [7.0, 1.0]\n"


def test_a_notebook_class_still_reads_the_notebook_globals_after_an_instance_came_back(
    notebook: Any,
) -> None:
    """A scikit-learn-like class defined in the notebook, its methods decorated by a notebook
    decorator that logs to a global list: an instance made remotely came back with the class's
    methods rebuilt on a private copy of their globals, so a global changed later in a plain
    cell (``EPS = 1.0``) was not sent, and the log stopped growing here."""
    kc, _ = notebook
    ok(
        kc,
        "import numpy as np\nEPS = 1e-8\ncalls = []\n"
        "def logged(fn):\n"
        "    def wrapper(*args, **kwargs):\n"
        "        calls.append(fn.__name__)\n"
        "        return fn(*args, **kwargs)\n"
        "    return wrapper\n"
        "class Scaler:\n"
        "    @logged\n"
        "    def fit(self, X):\n"
        "        self.scale_ = X.std(axis=0) + EPS\n"
        "        return self\n"
        "X = np.arange(12.0).reshape(4, 3)",
    )
    ok(kc, CELL + "scaler = Scaler().fit(X)")
    assert ok(kc, "print(Scaler.fit.__globals__ is globals(), calls)") == "True ['fit']\n"
    ok(kc, "EPS = 1.0")
    out = ok(kc, CELL + "s2 = Scaler().fit(X)\nprint(s2.scale_.round(3).tolist())")
    assert out == "[4.354, 4.354, 4.354]\n"
    assert ok(kc, "print(calls)") == "['fit', 'fit']\n"


def test_a_function_defined_in_a_remote_cell_writes_the_notebook_globals_when_called_here(
    notebook: Any,
) -> None:
    kc, _ = notebook
    ok(kc, "seen = []")
    ok(kc, CELL + "def note(x):\n    seen.append(x)\n    return len(seen)\nnote('remote')")
    assert ok(kc, "note('local')\nprint(seen)") == "['remote', 'local']\n"


def test_a_closure_called_remotely_keeps_its_count_here(notebook: Any) -> None:
    """``counter = make_counter(10)``; a remote cell calls ``counter()`` twice: the closure's
    cell changed there, but a function counted as immutable, so it was never looked at."""
    kc, _ = notebook
    ok(
        kc,
        "def make_counter(start=0):\n"
        "    count = start\n"
        "    def bump(k=1):\n"
        "        nonlocal count\n"
        "        count += k\n"
        "        return count\n"
        "    return bump\n"
        "counter = make_counter(10)",
    )
    assert ok(kc, CELL + "counter()\nprint(counter(5))") == "16\n"
    assert ok(kc, "print(counter())") == "17\n"


def test_a_cell_that_imports_a_module_beside_the_notebook(notebook: Any, tmp_path: Path) -> None:
    """``import helpers`` (helpers.py beside the notebook, imported here before) at the top of a
    ``%%cumulus`` cell, as notebook cells start: the remote kernel has no such file, so it was
    a remote ``ModuleNotFoundError``; now the module goes by value and its import finds it."""
    kc, _ = notebook
    package = tmp_path / "nbhelpers"
    package.mkdir()
    (package / "__init__.py").write_text("SCALE = 3\ndef double(x):\n    return 2 * x\n")
    (package / "text.py").write_text("def shout(s):\n    return s.upper() + '!'\n")
    ok(kc, f"import sys\nsys.path.insert(0, {str(tmp_path)!r})\nimport nbhelpers, nbhelpers.text")
    out = ok(
        kc,
        CELL + "import nbhelpers\nimport nbhelpers as h\nfrom nbhelpers import double\n"
        "from nbhelpers.text import shout\nc = h.double(double(nbhelpers.SCALE))\nprint(c, shout('hi'))",
    )
    assert out == "12 HI!\n"
    out = ok(kc, "print(c, h is nbhelpers, double(4), shout('ok'), 'sys' in dir())")
    assert out == "12 True 8 OK! True\n"


def test_a_module_beside_the_notebook_never_imported_here_before(
    notebook: Any, tmp_path: Path
) -> None:
    """The first cell that imports ``helpers`` is the ``%%cumulus`` one (the module was only
    looked for among those already imported here: a remote ``ModuleNotFoundError``)."""
    kc, _ = notebook
    (tmp_path / "fresh_helpers.py").write_text("def triple(x):\n    return 3 * x\n")
    package = tmp_path / "fresh_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "ops.py").write_text("def negate(x):\n    return -x\n")
    ok(kc, f"import sys\nsys.path.insert(0, {str(tmp_path)!r})\nK = 14")
    out = ok(
        kc,
        CELL + "import json, fresh_helpers\nfrom fresh_pkg.ops import negate\n"
        "h = fresh_helpers.triple(K)\nprint(h, negate(h), json.dumps([h]))",
    )
    assert out == "42 -42 [42]\n"
    assert ok(kc, "print(h, fresh_helpers.triple(2), negate(1))") == "42 6 -1\n"


def test_the_value_of_a_cell_that_ends_in_an_expression_is_underscore_and_out(
    notebook: Any,
) -> None:
    """``summary.shape`` last in a remote cell shows ``Out[n]``; the next cell's ``_`` (and
    ``Out[n]``, ``_n``) was the previous local result, not that value."""
    kc, _ = notebook
    reply, _, _, _ = run(kc, CELL + "rows = [3, 4]\nsum(rows) * 6")
    assert reply["status"] == "ok"
    n = reply["execution_count"]
    assert ok(kc, f"print(_, Out[{n}], _{n})") == "42 42 42\n"
    ok(kc, CELL + "rows.append(5);")  # a trailing semicolon: no result, `_` stays
    assert ok(kc, "print(_)") == "42\n"


def test_a_training_loop_steps_the_models_own_weights(notebook: Any) -> None:
    """The PyTorch shape: an optimizer made on the model's parameters, a ``%%cumulus`` loop
    that steps it. Each name pickled on its own, the remote optimizer stepped copies and the
    model never trained (``model.w is opt.params[0]`` was False there and here)."""
    kc, _ = notebook
    ok(kc, TRAINING)
    ok(
        kc,
        CELL + "for epoch in range(200):\n"
        "    opt.step(model.grads(X, y))\n"
        "    losses.append(float(((X @ model.w - y) ** 2).mean()))\n"
        "shared = model.w is opt.params[0]",
    )
    out = ok(
        kc,
        "print(shared, model.w is opt.params[0], losses[-1] < 1e-6, np.round(model.w, 3).tolist())",
    )
    assert out == "True True True [1.0, 2.0, 3.0]\n"


def test_two_names_for_one_object_stay_one_object(notebook: Any) -> None:
    kc, _ = notebook
    ok(kc, "a = [1, 2]")
    ok(kc, CELL + "b = a\nb.append(3)\nsame_there = a is b")
    assert ok(kc, "print(same_there, a is b, a)") == "True True [1, 2, 3]\n"


def test_an_optimizer_made_anew_still_steps_the_remote_model(notebook: Any) -> None:
    """The model is on the remote as the notebook has it; only the optimizer is new (a new
    learning rate): it must go with the model, or the remote one steps copies."""
    kc, _ = notebook
    ok(kc, TRAINING)
    ok(kc, CELL + "opt.step(model.grads(X, y))")  # both on the remote, as they are here
    ok(kc, "target = np.array([3.0, 2.0, 1.0])\nopt = SGD(model.params(), lr=0.2)")
    ok(kc, CELL + "for epoch in range(100):\n    opt.step(model.grads(X, target))")
    out = ok(kc, "print(model.w is opt.params[0], np.round(model.w, 3).tolist())")
    assert out == "True [3.0, 2.0, 1.0]\n"


def test_an_optimizer_made_anew_remotely_comes_back_on_the_notebooks_model(
    notebook: Any,
) -> None:
    """The other way: a remote cell makes a new optimizer on the (unchanged) model; here the
    optimizer must step this notebook's model, not copies of its weights."""
    kc, _ = notebook
    ok(kc, TRAINING)
    ok(kc, CELL + "opt.step(model.grads(X, y))")
    ok(kc, CELL + "opt = SGD(model.params(), lr=0.3)")
    out = ok(
        kc,
        "before = model.w.copy()\nopt.step(model.grads(X, y))\n"
        "print(model.w is opt.params[0], bool((model.w != before).any()))",
    )
    assert out == "True True\n"
