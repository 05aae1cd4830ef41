"""Notebook patterns for the differential test: each item is a list of steps, ``("local", code)``
run identically in both kernels (imports, data) and ``("cell", code)`` run as a local cell in
the twin and as a ``%%cumulus`` cell in the notebook, both namespaces compared after each.
``MODULES`` are files beside the notebook (on the local kernels' path, not the remote's)."""

from __future__ import annotations

MODULES = {
    "diff_helpers.py": """
        SCALE = 3
        def double(x):
            return 2 * x
        def scaled(x):
            return x * SCALE
        class Counter:
            def __init__(self):
                self.n = 0
            def bump(self):
                self.n += 1
                return self.n
    """,
    "diff_pkg/__init__.py": "",
    "diff_pkg/tools.py": """
        def shout(s):
            return s.upper() + "!"
    """,
}

Step = tuple[str, str]

CORPUS: dict[str, list[Step]] = {
    # -- models updated in place and reassigned -----------------------------------------
    "training loop, model reassigned": [
        (
            "local",
            "w = np.zeros(3)\nX = np.arange(12.0).reshape(4, 3)\ny = X @ np.array([1.0, -2.0, 0.5])",
        ),
        (
            "cell",
            """
            def train(w, lr=0.01):
                grad = X.T @ (X @ w - y) / len(y)
                return w - lr * grad
            for epoch in range(20):
                w = train(w)
            loss = float(((X @ w - y) ** 2).mean())
        """,
        ),
    ],
    "training loop, model object updated in place": [
        (
            "local",
            """
            class Linear:
                def __init__(self, n):
                    self.w = np.zeros(n)
                    self.steps = 0
                def step(self, X, y, lr):
                    self.w -= lr * X.T @ (X @ self.w - y) / len(y)
                    self.steps += 1
            model = Linear(2)
            X = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 7.0]])
            y = np.array([1.0, 2.0, 3.0])
        """,
        ),
        ("cell", "for _ in range(10):\n    model.step(X, y, 0.01)\nhistory = [model.steps]"),
        ("cell", "model.step(X, y, 0.05)\nhistory.append(model.steps)"),
    ],
    "sklearn pipeline fit in place": [
        (
            "local",
            """
            from sklearn.pipeline import make_pipeline
            from sklearn.preprocessing import StandardScaler
            from sklearn.linear_model import LinearRegression
            pipe = make_pipeline(StandardScaler(), LinearRegression())
            X = np.arange(20.0).reshape(10, 2)
            y = X[:, 0] * 2 + 1
        """,
        ),
        (
            "cell",
            "pipe.fit(X, y)\nscore = round(float(pipe.score(X, y)), 6)\npred = pipe.predict(X[:2]).round(6)",
        ),
    ],
    "sklearn model created remotely": [
        (
            "local",
            "from sklearn.linear_model import Ridge\nX = np.arange(10.0).reshape(5, 2)\ny = np.arange(5.0)",
        ),
        ("cell", "reg = Ridge(alpha=0.5).fit(X, y)\ncoef = reg.coef_.round(6)"),
    ],
    # -- pandas ---------------------------------------------------------------------------
    "pandas chain reassigned": [
        ("local", "df = pd.DataFrame({'g': list('abab'), 'v': [1.0, None, 3.0, 4.0]})"),
        (
            "cell",
            "df = df.dropna()\ndf = df.assign(v2=df.v * 2)\nsummary = df.groupby('g').v2.sum().to_dict()",
        ),
    ],
    "pandas in place": [
        ("local", "df = pd.DataFrame({'a': [3, 1, 2], 'b': [1.5, 2.5, 3.5]})"),
        (
            "cell",
            "df.sort_values('a', inplace=True)\ndf['c'] = df.a * df.b\ndf.reset_index(drop=True, inplace=True)",
        ),
    ],
    "pandas frame built remotely, read later locally": [
        ("cell", "frame = pd.DataFrame({'x': range(4)})\nframe['y'] = frame.x ** 2"),
        ("local", "total = int(frame.y.sum())"),
        ("cell", "frame = frame[frame.y > total / 10]"),
    ],
    # -- numpy ----------------------------------------------------------------------------
    "numpy in-place ops": [
        ("local", "a = np.arange(6.0)\nb = np.ones(6)"),
        ("cell", "a *= 2\na[::2] = -1\nnp.add(a, b, out=b)\nb.sort()"),
    ],
    "numpy reassigned from itself": [
        ("local", "x = np.linspace(0, 1, 5)"),
        ("cell", "x = x + 1\nx = np.sqrt(x)\nnorm = float(np.linalg.norm(x))"),
    ],
    # -- matplotlib -----------------------------------------------------------------------
    "matplotlib figure with data computed": [
        ("local", "import matplotlib.pyplot as plt\nys = [1, 3, 2]"),
        (
            "cell",
            "fig, ax = plt.subplots()\nline, = ax.plot(ys)\nlimits = [round(v, 6) for v in ax.get_ylim()]\nplt.close(fig)",
        ),
    ],
    # -- functions, classes, closures, generators, decorators ------------------------------
    "class defined in the cell and used later": [
        (
            "cell",
            """
            class Stack:
                def __init__(self):
                    self.items = []
                def push(self, v):
                    self.items.append(v)
                    return self
            st = Stack().push(1).push(2)
        """,
        ),
        ("local", "st.push(3)\nsize = len(st.items)"),
        ("cell", "st.push(size)\nlast = st.items[-1]"),
    ],
    "closure": [
        ("local", "base = 10"),
        (
            "cell",
            "def adder(k):\n    def add(v):\n        return v + k + base\n    return add\nadd5 = adder(5)\nr = add5(1)",
        ),
    ],
    "generator consumed in the cell": [
        ("local", "limit = 5"),
        (
            "cell",
            "def squares(n):\n    for i in range(n):\n        yield i * i\nvals = list(squares(limit))",
        ),
    ],
    "decorator reading a global": [
        ("local", "calls = []"),
        (
            "cell",
            """
            def logged(fn):
                def wrapper(*args):
                    calls.append(fn.__name__)
                    return fn(*args)
                return wrapper
            @logged
            def inc(v):
                return v + 1
            out = inc(inc(1))
        """,
        ),
    ],
    "dataclass": [
        (
            "cell",
            """
            from dataclasses import dataclass, field
            @dataclass
            class Point:
                x: int
                y: int = 0
                tags: list = field(default_factory=list)
            p = Point(1, 2)
            p.tags.append('a')
            pd_ = (p.x, p.y, p.tags)
        """,
        ),
    ],
    "exceptions caught": [
        ("local", "items = ['1', 'x', '3']"),
        (
            "cell",
            """
            parsed, errors = [], []
            for item in items:
                try:
                    parsed.append(int(item))
                except ValueError as exc:
                    errors.append(str(exc))
        """,
        ),
    ],
    "except name existing before is unbound": [
        ("local", "e = 'before'"),
        ("cell", "try:\n    1 / 0\nexcept ZeroDivisionError as e:\n    msg = str(e)"),
    ],
    "string formatting": [
        ("local", "name = 'ada'\nscore = 0.91234\nwidth = 8"),
        (
            "cell",
            "line = f'{name!r:>{width}} {score:.2%}'\nold = '%s-%05.1f' % (name, score)\nfmt = '{} {}'.format(name, width)",
        ),
    ],
    "dict and set comprehensions": [
        ("local", "words = ['apple', 'bob', 'cat', 'apple']\nminimum = 3"),
        (
            "cell",
            "lengths = {w: len(w) for w in words if len(w) >= minimum}\nfirsts = {w[0] for w in words}\nnested = [[c for c in w if c > 'b'] for w in words]",
        ),
    ],
    "nested functions reading globals": [
        ("local", "factor = 3\noffset = 1"),
        (
            "cell",
            "def outer(v):\n    def inner(u):\n        return u * factor\n    return inner(v) + offset\nres = [outer(i) for i in range(4)]",
        ),
    ],
    "recursive function": [
        ("local", "n = 10"),
        (
            "cell",
            "def fib(k):\n    return k if k < 2 else fib(k - 1) + fib(k - 2)\nresult = fib(n)",
        ),
    ],
    "global statement in a function": [
        ("local", "counter = 5"),
        ("cell", "def bump():\n    global counter\n    counter += 1\nbump()\nbump()"),
    ],
    "global statement creates a name": [
        ("cell", "def setup():\n    global config\n    config = {'lr': 0.1}\nsetup()"),
        ("local", "lr = config['lr']"),
    ],
    # -- reads before writes ----------------------------------------------------------------
    "accumulator loop": [
        ("local", "total = 100\nr = range(5)"),
        ("cell", "for i in r:\n    total = total + i"),
    ],
    "tuple swap": [
        ("local", "a, b = 1, 2"),
        ("cell", "a, b = b, a"),
    ],
    "augmented assignment of several kinds": [
        ("local", "n = 1\nwords = ['a']\ntext = 'x'"),
        ("cell", "n += 2\nn *= 3\nwords += ['b']\ntext += 'y'"),
    ],
    "conditional assignment then read": [
        ("local", "y = 'kept'\ncond = False"),
        ("cell", "if cond:\n    y = 'changed'\nprint(y)\nz = y"),
    ],
    "walrus at top level and in a comprehension": [
        ("local", "data = [1, 5, 8, 2]"),
        ("cell", "if (count := len(data)) > 3:\n    big = [last := v for v in data if v > 2]"),
    ],
    "match statement": [
        ("local", "cmd = ('move', 3, 4)\nORIGIN = 0"),
        (
            "cell",
            """
            match cmd:
                case ('move', dx, dy):
                    pos = (ORIGIN + dx, ORIGIN + dy)
                case ('stop',):
                    pos = None
                case _:
                    pos = 'unknown'
        """,
        ),
    ],
    "match with class and value patterns": [
        ("local", "class Color:\n    RED = 1\n    BLUE = 2\nshade = 2"),
        (
            "cell",
            "match shade:\n    case Color.RED:\n        name = 'red'\n    case Color.BLUE:\n        name = 'blue'",
        ),
    ],
    "del in a cell deletes locally": [
        ("local", "big = list(range(1000))\nkeep = 1"),
        ("cell", "size = len(big)\ndel big"),
    ],
    "deleted in the notebook between cells": [
        ("local", "v = 1\nbig_list = list(range(10))"),
        ("cell", "w = v + len(big_list)"),
        ("local", "del v\ndel big_list"),
        ("cell", "try:\n    v\nexcept NameError:\n    gone = True\nhas_list = 'big_list' in dir()"),
        ("cell", "try:\n    print(big_list)\nexcept NameError as e:\n    msg = str(e)"),
    ],
    "a remote-only handle deleted in the notebook": [
        ("cell", "g = (i for i in range(3))"),
        ("unpicklable", "g"),
        ("local", "del g"),
        ("cell", "try:\n    next(g)\nexcept NameError:\n    g_gone = True"),
    ],
    "del then rebind": [
        ("local", "tmp = 1"),
        ("cell", "del tmp\ntmp = 2"),
    ],
    "with statement": [
        ("local", "import io\ntext = 'a\\nb\\n'"),
        (
            "cell",
            "with io.StringIO(text) as fh:\n    lines = fh.read().splitlines()\nclosed = fh.closed",
        ),
        ("unpicklable", "fh"),  # a closed file cannot come back; it stays remote, with a note
    ],
    "local function reading a global changed since": [
        ("local", "rate = 2\ndef cost(v):\n    return v * rate"),
        ("cell", "c1 = cost(10)"),
        ("local", "rate = 5"),
        ("cell", "c2 = cost(10)"),
    ],
    "local function with a global statement called in the cell": [
        ("local", "counter = 0\ndef bump():\n    global counter\n    counter += 1"),
        ("cell", "bump()\nbump()"),
    ],
    "local function mutating a global list called in the cell": [
        ("local", "log = []\ndef note(v):\n    log.append(v)"),
        ("cell", "note(1)\nnote(2)"),
    ],
    "lambda reading a global and sorted key": [
        ("local", "people = [('a', 3), ('b', 1), ('c', 2)]\nidx = 1"),
        ("cell", "key = lambda p: p[idx]\nordered = sorted(people, key=key)"),
    ],
    "star expressions": [
        ("local", "seq = [1, 2, 3, 4]\nextra = {'k': 1}"),
        ("cell", "first, *rest = seq\nmerged = {**extra, 'j': first}\nargs = [*rest, *seq]"),
    ],
    "class body reading globals": [
        ("local", "DEFAULT = 7"),
        (
            "cell",
            "class Config:\n    size = DEFAULT\n    doubled = [DEFAULT * i for i in range(2)]\ncfg = Config.size + Config.doubled[1]",
        ),
    ],
    "default values and annotations": [
        ("local", "LIMIT = 4\nfrom typing import List"),
        (
            "cell",
            "def take(xs: List[int], k: int = LIMIT) -> List[int]:\n    return xs[:k]\ntaken = take(list(range(9)))",
        ),
    ],
    # -- modules ------------------------------------------------------------------------------
    "installed module imported locally": [
        ("local", "import numpy as np\nimport os.path as osp\nimport json"),
        ("cell", "arr = np.arange(3)\njoined = osp.join('a', 'b')\nencoded = json.dumps({'a': 1})"),
    ],
    "local module beside the notebook": [
        ("local", "import diff_helpers"),
        ("cell", "r = diff_helpers.double(21)\ns = diff_helpers.scaled(2)"),
    ],
    "local module aliased": [
        ("local", "import diff_helpers as h"),
        ("cell", "c = h.Counter()\nc.bump()\nvalue = c.bump()"),
    ],
    "function from a local module": [
        ("local", "from diff_helpers import double, Counter\nctr = Counter()"),
        ("cell", "ys = [double(i) for i in range(3)]\nctr.bump()"),
    ],
    "submodule of a local package": [
        ("local", "from diff_pkg import tools\nimport diff_pkg.tools"),
        ("cell", "loud = tools.shout('hi')\nlouder = diff_pkg.tools.shout(loud)"),
    ],
    "module imported in the cell": [
        (
            "cell",
            "import math\nfrom collections import Counter\nroot = math.sqrt(16)\ncounts = Counter('aab')",
        ),
        ("local", "again = math.floor(root)"),
    ],
    # -- several cells ----------------------------------------------------------------------
    "later cell reads what an earlier cumulus cell pulled": [
        ("cell", "weights = [0.5, 0.25]\nscale = 2"),
        ("cell", "weights = [w * scale for w in weights]"),
        ("local", "scale = 10"),
        ("cell", "weights.append(scale)"),
    ],
    "function pulled back then called locally and remotely": [
        ("cell", "def area(r):\n    return 3 * r * r\nunit = area(1)"),
        ("local", "local_area = area(2)"),
        ("cell", "remote_area = area(3) + unit"),
    ],
    "magics in the cell": [
        ("local", "v = 2"),
        ("cell", "%time w = v * 21\nu = w + 1"),
    ],
    "shell-style line magics do not break the analysis": [
        ("local", "q = 3"),
        ("cell", "%env CUMULUS_DIFFERENTIAL=1\nr = q * 2"),
    ],
}
