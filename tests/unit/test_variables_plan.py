"""What a %%cumulus cell sends, watches and brings back (`cumulus_jupyter.variables.plan`)."""

from __future__ import annotations

import os.path
import threading

import numpy as np
import pytest

from cumulus_jupyter import variables
from cumulus_jupyter.cells import cell_names

pytestmark = pytest.mark.unit


def test_modules_are_sent_ipython_names_are_not() -> None:
    ns = {"np": np, "osp": os.path, "_": 1, "_3": 2, "In": [], "get_ipython": print, "x": 1}
    found = variables.plan(cell_names("y = np.arange(x)\nz = osp.join(_, _3, In)"), ns)
    assert set(found.push) == {"np", "x", "osp"}


def test_mutable_values_sent_are_watched_immutable_ones_are_not() -> None:
    ns = {"lst": [1], "n": 3, "t": (1, 2), "arr": np.zeros(2), "big": (1, [2])}
    found = variables.plan(cell_names("lst.append(n)\narr[0] = t[0]\nprint(big)"), ns)
    assert set(found.watch) == {"lst", "arr", "big"}


def test_import_only_names_come_back_only_if_importable_here() -> None:
    names = cell_names("import numpy as np\nimport not_installed_anywhere_pkg as q\nv = 1")
    assert variables.plan(names, {}).pull == ["np", "v"]


def test_a_notebook_function_brings_its_globals_along() -> None:
    ns: dict[str, object] = {"__builtins__": __builtins__, "log": [], "LOCK": threading.Lock()}
    exec("def note(v):\n    global last\n    log.append(v)\n    last = v", ns)
    found = variables.plan(cell_names("note(1)"), ns)
    assert found.push == ["note", "log"] and found.pull == ["last"] and found.watch == ["log"]


def test_a_notebook_subclass_of_a_plain_type_still_brings_its_methods_globals() -> None:
    """Plain data (a ``str``, ``bytes``, ...) is not searched for notebook functions; a value
    whose class the notebook defined is, even when that class derives from ``str``."""
    ns: dict[str, object] = {"__builtins__": __builtins__, "PREFIX": ">", "text": "plain"}
    exec("class Tag(str):\n    def show(self):\n        return PREFIX + self\ntag = Tag('a')", ns)
    assert variables.plan(cell_names("tag.show()"), ns).push == ["tag", "PREFIX"]
    assert variables.plan(cell_names("text.upper()"), ns).push == ["text"]


def test_deletes_are_planned() -> None:
    found = variables.plan(
        cell_names("del a\ntry:\n    1 / 0\nexcept Exception as e:\n    pass"), {"a": 1}
    )
    assert found.push == ["a"] and set(found.deletes) == {"a", "e"}
