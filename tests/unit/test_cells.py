"""Which names a ``%%cumulus`` cell reads (push), binds (pull), deletes and imports."""

from __future__ import annotations

import pytest

from cumulus_jupyter import cells

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("code", "reads", "assigns"),
    [
        ("y = x @ x.T\nprint(y.shape)", ["x", "print"], ["y"]),
        ("import numpy as np\nz = np.zeros(n)", ["n"], ["np", "z"]),
        ("a = 1\nb = a + c", ["c"], ["a", "b"]),
        ("def f(q):\n    return q + hidden\nr = f(k)", ["hidden", "k"], ["f", "r"]),
        # reads before writes: the value is evaluated before the target is bound
        ("model = train(model)", ["train", "model"], ["model"]),
        ("x = x + 1", ["x"], ["x"]),
        ("df = df.dropna()", ["df"], ["df"]),
        ("a, b = b, a", ["b", "a"], ["a", "b"]),
        ("for i in r:\n    total = total + i", ["r", "total", "i"], ["i", "total"]),
        ("for i in range(3):\n    acc += i", ["range", "i", "acc"], ["i", "acc"]),
        ("n += 1", ["n"], ["n"]),
        # a conditional or later binding does not hide the value from before the cell
        ("if c:\n    y = 1\nprint(y)", ["c", "print", "y"], ["y"]),
        ("print(y)\ny = 2", ["print", "y"], ["y"]),
        ("y = 1\nprint(y)", ["print"], ["y"]),
        # nested scopes: what they read globally is read; what they bind stays theirs
        ("def f():\n    return g\nf()", ["g"], ["f"]),
        ("def f():\n    def inner():\n        return deep\n    return inner", ["deep"], ["f"]),
        ("lam = lambda q: q + k", ["k"], ["lam"]),
        ("s = [i * w for i in items if i > lim]", ["w", "items", "lim"], ["s"]),
        ("d = {k: v for k, v in pairs.items()}", ["pairs"], ["d"]),
        ("g = (x for row in grid for x in row if x)", ["grid"], ["g"]),
        (
            "class K(Base):\n    v = v + 1\n    def m(self):\n        return zz",
            ["Base", "v", "zz"],
            ["K"],
        ),
        (
            "@deco(arg)\ndef h(a=dflt, *, b=kd) -> Ann:\n    global G\n    G = a + G0\n    return a",
            ["Ann", "kd", "dflt", "deco", "arg", "G0"],
            ["h", "G"],
        ),
        (
            "def bump():\n    global counter\n    counter += 1\nbump()",
            ["counter"],
            ["bump", "counter"],
        ),
        ("f'{a!r} {b:{width}}'", ["a", "b", "width"], []),
        ("x: Ann = 3", ["Ann"], ["x"]),
        ("[w := i for i in items]", ["items"], ["w"]),
        ("(k := 3)\nprint(k)", ["print", "k"], ["k"]),
        ("def f():\n    [t := 1 for _ in z]\n    return t", ["z"], ["f"]),
        (
            "match p:\n    case Point(x=0) as hit:\n        r = hit\n    case Color.RED:\n        r = 2\n    case {'k': v, **rest}:\n        r = v",
            ["p", "hit", "Point", "Color", "v"],
            ["hit", "r", "v", "rest"],
        ),
        (
            "try:\n    f()\nexcept Err as e:\n    msg = str(e)",
            ["Err", "f", "str", "e"],
            ["e", "msg"],
        ),
        ("with open(p) as fh:\n    t = fh.read()", ["open", "p", "fh"], ["fh", "t"]),
        ("print(*xs, **kw)", ["print", "xs", "kw"], []),
        ("del x[0]", ["x"], []),
        ("global gg\ngg = 1", [], ["gg"]),
        # IPython syntax, transformed the way IPython does it
        ("%time t = slow(v)\nu = v", ["get_ipython", "slow", "v"], ["t", "u"]),
        ("%timeit q = slow(v)", ["get_ipython", "slow", "v"], []),
        ("%%time\nz = w + 1", ["get_ipython", "w"], ["z"]),
        ("x = !ls\ny = x", ["get_ipython"], ["x", "y"]),
        ("%matplotlib inline\nplot(data)", ["get_ipython", "plot", "data"], []),
    ],
)
def test_cell_names(code: str, reads: list[str], assigns: list[str]) -> None:
    names = cells.cell_names(code)
    assert (set(names.reads), set(names.assigns), names.error) == (set(reads), set(assigns), None)
    assert len(names.reads) == len(set(names.reads))


def test_del_needs_the_name_and_is_a_delete() -> None:
    names = cells.cell_names("del big\nsmall = 1")
    assert (names.reads, names.assigns, names.deletes) == (["big"], ["big", "small"], ["big"])
    names = cells.cell_names("def f():\n    global g\n    del g")
    assert "g" in names.reads and "g" in names.assigns


def test_names_bound_only_by_imports_say_where_from() -> None:
    names = cells.cell_names(
        "import os.path as osp\nfrom pkg import mod\nimport a.b\nfrom . import rel\n"
        "import json\njson = json.dumps({})"
    )
    assert names.imports == {"osp": "os", "mod": "pkg", "a": "a", "rel": None}


def test_a_cell_that_is_not_python_has_no_names_and_says_why() -> None:
    names = cells.cell_names("this is not python (")
    assert (names.reads, names.assigns) == ([], [])
    assert names.error is not None and names.error.startswith("SyntaxError")
    assert cells.cell_names("nonlocal x").error is not None  # found by the compiler's analysis
