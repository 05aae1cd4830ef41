"""A kernel's user namespace as comparable text, and resetting it: imported by code the
differential tests run inside the kernels (``__import__('tests.support.namespaces')``), so
that nothing of this lands in the namespaces being compared."""

from __future__ import annotations

import json
import re
import types
from typing import Any

_IPYTHON = re.compile(r"_|__|___|_i|_ii|_iii|_i?\d+|_ih|_oh|_dh|In|Out|get_ipython|exit|quit")


def user_names(shell: Any) -> list[str]:
    hidden = shell.user_ns_hidden
    return sorted(
        n for n, v in shell.user_ns.items()
        if not _IPYTHON.fullmatch(n) and not (n.startswith("__") and n.endswith("__"))
        and not (n in hidden and hidden[n] is v)
    )  # fmt: skip


def canon(value: Any, depth: int = 0) -> Any:
    """A JSON-able description equal for equal values in two processes."""
    if depth > 6:
        return ["deep", type(value).__name__]
    kind = type(value)
    if value is None or kind in (bool, int, str):
        return [kind.__name__, value]
    if kind in (float, complex, bytes, range):
        return [kind.__name__, repr(value)]
    if kind in (list, tuple):
        return [kind.__name__, [canon(v, depth + 1) for v in value]]
    if kind in (set, frozenset):
        return [kind.__name__, sorted(json.dumps(canon(v, depth + 1)) for v in value)]
    if kind is dict:
        return ["dict", [[canon(k, depth + 1), canon(v, depth + 1)] for k, v in value.items()]]
    if isinstance(value, types.ModuleType):
        return ["module", value.__name__]
    if isinstance(value, types.FunctionType):
        code = value.__code__
        return ["function", value.__qualname__, code.co_code.hex(), list(code.co_names)]
    if isinstance(value, type):
        return [
            "class",
            value.__qualname__,
            sorted(k for k in vars(value) if not k.startswith("__")),
        ]
    if isinstance(value, types.GeneratorType):
        return ["generator", value.__qualname__]
    module = kind.__module__
    if kind.__name__ == "RemoteRef":  # a value that stayed in a %%cumulus session
        return ["RemoteRef", value.name, value.info.get("type")]
    if module.startswith("numpy"):
        import numpy as np

        if isinstance(value, np.ndarray):
            return ["ndarray", str(value.dtype), list(value.shape), repr(value.tolist())]
        return ["numpy", kind.__name__, repr(value)]
    if module.startswith("pandas"):
        return [
            "pandas",
            kind.__name__,
            value.to_json(orient="split"),
            repr(getattr(value, "dtypes", "")),
        ]
    if module.startswith("sklearn"):
        fitted = sorted(k for k in vars(value) if k.endswith("_") and not k.startswith("_"))
        params = {k: repr(v) for k, v in value.get_params(deep=False).items()}
        return [
            "sklearn",
            kind.__name__,
            params,
            [canon(getattr(value, k), depth + 1) for k in fitted],
        ]
    if module.startswith("matplotlib"):
        return ["matplotlib", kind.__name__]
    if hasattr(value, "__dict__") and not isinstance(value, type):
        return ["object", kind.__qualname__, canon(dict(vars(value)), depth + 1)]
    text = repr(value)
    return ["repr", kind.__name__, re.sub(r" at 0x[0-9a-f]+", "", text)]


def snapshot(shell: Any) -> str:
    """The user namespace, described (printed by the caller)."""
    return json.dumps({n: canon(shell.user_ns[n]) for n in user_names(shell)}, sort_keys=True)


def reset(shell: Any, keep: list[str] | tuple[str, ...] = ()) -> None:
    """Delete every user name (but ``keep``)."""
    for name in user_names(shell):
        if name not in keep:
            del shell.user_ns[name]
