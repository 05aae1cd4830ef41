"""Moving variables between the local namespace and a remote kernel.

- which names a cell reads (free variables: loaded before any assignment in the cell) and which
  it assigns, from its AST;
- serialisation: cloudpickle (functions, lambdas, closures and classes defined in the notebook
  or in local modules travel by value), dill when cloudpickle cannot, pickle protocol 5 with
  out-of-band buffers so large arrays travel as binary message buffers without a copy;
- fingerprints, so a value that has not changed since the last push is not sent again.
"""

from __future__ import annotations

import ast
import builtins
import functools
import importlib.metadata
import pickle
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import cloudpickle
import xxhash

from cumulus_jupyter.errors import InvalidArgument

_BUILTINS = set(dir(builtins))


@dataclass
class CellNames:
    reads: list[str] = field(default_factory=list)
    assigns: list[str] = field(default_factory=list)


class _Names(ast.NodeVisitor):
    def __init__(self) -> None:
        self.loaded: list[str] = []
        self.stored: list[str] = []

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            if node.id not in self.stored and node.id not in self.loaded:
                self.loaded.append(node.id)
        elif node.id not in self.stored:
            self.stored.append(node.id)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        # `acc += i` reads acc before it writes it
        if isinstance(node.target, ast.Name):
            if node.target.id not in self.stored and node.target.id not in self.loaded:
                self.loaded.append(node.target.id)
            self.visit(node.value)
            self._define(node.target.id)
        else:
            self.generic_visit(node)

    def _define(self, name: str) -> None:
        if name not in self.stored:
            self.stored.append(name)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for decorator in node.decorator_list:
            self.visit(decorator)
        self._define(node.name)  # its body runs later, in its own scope

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._function(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._function(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for expr in [*node.decorator_list, *node.bases]:
            self.visit(expr)
        self._define(node.name)

    def visit_Lambda(self, node: ast.Lambda) -> None:
        return  # evaluated later

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._define((alias.asname or alias.name).split(".")[0])

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            self._define(alias.asname or alias.name)

    def _comprehension(
        self, node: ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp
    ) -> None:
        # only the first iterable is evaluated in the cell's scope
        self.visit(node.generators[0].iter)

    def visit_ListComp(self, node: ast.ListComp) -> None:
        self._comprehension(node)

    def visit_SetComp(self, node: ast.SetComp) -> None:
        self._comprehension(node)

    def visit_GeneratorExp(self, node: ast.GeneratorExp) -> None:
        self._comprehension(node)

    def visit_DictComp(self, node: ast.DictComp) -> None:
        self._comprehension(node)


def cell_names(code: str) -> CellNames:
    """Names the cell reads before assigning them (candidates to push) and names it assigns
    at top level (candidates to pull). Magics and shell escapes are not Python: skipped."""
    lines = [line for line in code.splitlines() if not line.lstrip().startswith(("%", "!"))]
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return CellNames()
    visitor = _Names()
    for statement in tree.body:
        visitor.visit(statement)
    reads = [n for n in visitor.loaded if n not in _BUILTINS]
    return CellNames(reads=reads, assigns=list(visitor.stored))


_by_value: set[str] = set()
_scanned = {"modules": 0}
# ours are installed wherever a remote kernel runs, editable installs included
_OURS = {"cumulus_jupyter", "chronos", "gateway"}


@functools.cache
def _installed_top_levels() -> frozenset[str]:
    return frozenset(importlib.metadata.packages_distributions())


def register_local_modules() -> list[str]:
    """Have cloudpickle send local modules by value: those imported here from files that no
    installed distribution provides (a ``helpers.py`` beside the notebook), which the remote
    kernel cannot import. Installed packages and the standard library still go by reference."""
    if len(sys.modules) == _scanned["modules"]:
        return []  # nothing imported since the last look
    _scanned["modules"] = len(sys.modules)
    installed = _installed_top_levels() | _OURS
    added = []
    for name, module in list(sys.modules.items()):
        top = name.split(".")[0]
        if (
            "." in name or top in _by_value or top in installed or top in sys.stdlib_module_names
            or top == "__main__" or not getattr(module, "__file__", None)
        ):  # fmt: skip
            continue
        try:
            cloudpickle.register_pickle_by_value(module)
        except ValueError:
            continue
        _by_value.add(top)
        added.append(top)
    return added


def dumps(name: str, value: Any) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """Pickle ``value`` (protocol 5, out-of-band buffers); `InvalidArgument` names the variable
    and the reason when neither cloudpickle nor dill can."""
    register_local_modules()
    buffers: list[pickle.PickleBuffer] = []
    try:
        return cloudpickle.dumps(value, protocol=5, buffer_callback=buffers.append), buffers
    except Exception as first:  # cloudpickle raises many kinds
        try:
            import dill

            buffers.clear()
            return dill.dumps(value, protocol=5, buffer_callback=buffers.append), buffers
        except Exception:
            raise InvalidArgument(
                f"Cannot send {name!r} ({type(value).__name__}): {first}"
            ) from first


def loads(payload: bytes, buffers: Iterable[Any]) -> Any:
    return pickle.loads(payload, buffers=list(buffers))


def fingerprint(payload: bytes, buffers: list[pickle.PickleBuffer]) -> str:
    """What a value pickled to, hashed with XXH3-128 (~20 GB/s: an unchanged 1 GiB array is
    recognised in tens of milliseconds; blake2b took a third of a second per 256 MiB)."""
    digest = xxhash.xxh3_128(payload)
    for buffer in buffers:
        digest.update(buffer.raw())
    return digest.hexdigest()


Pickled = tuple[bytes, list[pickle.PickleBuffer]]


def pack_namespace(
    values: Mapping[str, Any], pickled: Mapping[str, Pickled] | None = None
) -> tuple[list[dict[str, Any]], list[Any]]:
    """Descriptions (name, buffer range) and the flat list of buffers for a set of variables;
    ``pickled`` reuses what was already pickled (for the fingerprint) instead of pickling again."""
    entries: list[dict[str, Any]] = []
    frames: list[Any] = []
    for name, value in values.items():
        payload, buffers = (pickled or {}).get(name) or dumps(name, value)
        entries.append({"name": name, "start": len(frames), "count": 1 + len(buffers)})
        frames.append(payload)
        frames.extend(b.raw() for b in buffers)
    return entries, frames


def unpack_namespace(entries: list[dict[str, Any]], frames: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for entry in entries:
        start, count = int(entry["start"]), int(entry["count"])
        out[entry["name"]] = loads(
            bytes(frames[start]), [memoryview(f) for f in frames[start + 1 : start + count]]
        )
    return out


def size_of(name: str, value: Any) -> int:
    """Bytes ``value`` takes to send (its pickle and out-of-band buffers)."""
    payload, buffers = dumps(name, value)
    return len(payload) + sum(b.raw().nbytes for b in buffers)


def describe(value: Any) -> dict[str, Any]:
    """What a `RemoteRef` shows of a value it does not hold."""
    info: dict[str, Any] = {"type": type(value).__name__}
    for attribute in ("shape", "dtype"):
        if hasattr(value, attribute):
            info[attribute] = str(getattr(value, attribute))
    info["bytes"] = size_of("value", value)
    return info


def versions() -> dict[str, str]:
    """What decides whether pickles made here load there."""
    found = {"python": f"{sys.version_info.major}.{sys.version_info.minor}"}
    for module in ("cloudpickle", "dill", "numpy"):
        try:
            found[module] = str(__import__(module).__version__)
        except ImportError:
            found[module] = "absent"
    return found


def compare_versions(local: dict[str, str], remote: dict[str, str]) -> tuple[list[str], list[str]]:
    """(errors, warnings): Python minor and cloudpickle major must match (code travels by
    value); other differences are worth a line."""
    errors, warnings = [], []
    for name in sorted(set(local) | set(remote)):
        mine, theirs = local.get(name, "absent"), remote.get(name, "absent")
        if mine == theirs:
            continue
        line = f"{name} {mine} here, {theirs} in the remote kernel"
        major_differs = mine.split(".")[0] != theirs.split(".")[0]
        if name == "python" or (name == "cloudpickle" and major_differs):
            errors.append(line)
        else:
            warnings.append(line)
    return errors, warnings
