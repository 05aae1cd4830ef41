"""Variables as they travel between the local namespace and a remote kernel (both ends use it;
which names a cell reads and assigns is `cumulus_jupyter.cells`).

- serialisation: cloudpickle (functions, lambdas, closures and classes defined in the notebook
  or in local modules travel by value), dill when cloudpickle cannot, pickle protocol 5 with
  out-of-band buffers so large arrays travel as binary message buffers without a copy;
- fingerprints, so a value that has not changed since the last push is not sent again.
"""

from __future__ import annotations

import dis
import functools
import importlib.metadata
import importlib.util
import io
import pickle
import sys
import threading
import types
from collections.abc import Iterable, Mapping
from typing import Any

import cloudpickle
import xxhash

from cumulus_jupyter.errors import InvalidArgument

_by_value: set[str] = set()
_theirs: set[str] = set()  # the client's local modules, sent here (`install_module`)
_scanned = {"modules": 0}
# `map` pickles its calls in several threads at once: one scan at a time, and the count noted
# only once the scan is done, so no thread pickles a local module by reference meanwhile
_scan_lock = threading.Lock()
# ours are installed wherever a remote kernel runs, editable installs included
_OURS = {"cumulus_jupyter", "chronos", "gateway"}


@functools.cache
def _installed_top_levels() -> frozenset[str]:
    return frozenset(importlib.metadata.packages_distributions())


def register_local_modules() -> list[str]:
    """Have cloudpickle send local modules by value: those imported here from files that no
    installed distribution provides (a ``helpers.py`` beside the notebook), which the remote
    kernel cannot import. Installed packages and the standard library still go by reference."""
    with _scan_lock:
        if len(sys.modules) == _scanned["modules"]:
            return []  # nothing imported since the last look
        added = _register_new_local_modules()
        _scanned["modules"] = len(sys.modules)
    return added


def _found_remotely(top: str) -> bool:
    """Whether a remote kernel imports the top-level module ``top`` itself: the standard
    library, an installed distribution, ours."""
    return top in sys.stdlib_module_names or top in _OURS or top in _installed_top_levels()


def _register_new_local_modules() -> list[str]:
    added = []
    for name, module in list(sys.modules.items()):
        top = name.split(".")[0]
        if (
            "." in name or top in _by_value or top in _theirs or _found_remotely(top)
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


#: a local module a cell imports (``import helpers`` in a ``%%cumulus`` cell) travels under this
#: name, by value, and the remote registers it in its ``sys.modules`` instead of binding it:
#: there no file ``helpers.py`` is found (a dot: no variable can be called so)
MODULE_PREFIX = "__cumulus_module__."


def is_local_file(top: str) -> bool:
    """Whether ``top`` (a top-level module name) would be imported here from a file no
    installed distribution provides (a ``helpers.py`` beside the notebook), imported or not."""
    if _found_remotely(top):
        return False
    if top in sys.modules:
        register_local_modules()
        return top in _by_value
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return False
    return spec is not None and spec.origin not in (None, "built-in", "frozen")


def local_module(name: str) -> types.ModuleType | None:
    """The module ``name`` if it was imported here from a local file (`register_local_modules`:
    it travels by value, the remote cannot import it), else None."""
    register_local_modules()
    module = sys.modules.get(name)
    return module if name in _by_value and isinstance(module, types.ModuleType) else None


def install_module(name: str, module: Any) -> None:
    """A client's local module (`MODULE_PREFIX`), arrived by value: in ``sys.modules``, with
    its submodules, for the cell's ``import`` to find; and going back by reference (the client
    has the file), so that ``import helpers as h`` brings back the client's own module."""
    if not isinstance(module, types.ModuleType) or sys.modules.get(name) is module:
        return
    sys.modules[name] = module
    _theirs.add(name.split(".")[0])
    for attribute, value in list(vars(module).items()):
        if isinstance(value, types.ModuleType) and value.__name__ == f"{name}.{attribute}":
            install_module(value.__name__, value)


def _main_namespace() -> dict[str, Any]:
    """The namespace of whoever loads a notebook function: the kernel's user namespace."""
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:  # pragma: no cover - IPython is a dependency
        shell = None
    namespace: dict[str, Any] = (
        shell.user_ns if shell is not None else vars(sys.modules["__main__"])
    )
    return namespace


def _make_rebound_function(
    code: types.CodeType, name: str | None, argdefs: Any, closure: Any
) -> types.FunctionType:
    """A notebook function, made with the loading side's user namespace as its globals (its
    ``__builtins__`` left as they are, unlike cloudpickle's ``_make_function``)."""
    return types.FunctionType(code, _main_namespace(), name, argdefs, closure)


def _rebuilt_setstate(function: types.FunctionType, state: Any) -> None:
    """cloudpickle's function state, except that the globals it carries only fill in names the
    namespace lacks (the values a cell sends by name are the ones that count) and the
    namespace's own ``__builtins__`` is left as it is."""
    attributes, slotstate = state
    carried = slotstate.get("__globals__", {})
    namespace = function.__globals__
    builtins_before = namespace.get("__builtins__", sys.modules["builtins"])
    cloudpickle.cloudpickle._function_setstate(
        function, (attributes, {**slotstate, "__globals__": {}})
    )
    namespace["__builtins__"] = builtins_before  # cloudpickle sets its own module's
    for key, value in carried.items():
        namespace.setdefault(key, value)


_GLOBAL_OPS = {"LOAD_GLOBAL": 0, "LOAD_NAME": 0, "STORE_GLOBAL": 1, "DELETE_GLOBAL": 2}


def _code_globals(code: types.CodeType) -> tuple[set[str], set[str], set[str]]:
    """The global names ``code`` (and the code nested in it) reads, binds and deletes."""
    found: tuple[set[str], set[str], set[str]] = (set(), set(), set())
    for instruction in dis.get_instructions(code):
        if instruction.opname in _GLOBAL_OPS:
            found[_GLOBAL_OPS[instruction.opname]].add(str(instruction.argval))
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            for mine, nested in zip(found, _code_globals(constant), strict=True):
                mine |= nested
    return found


class _NotebookPickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle, but a function of the notebook (its globals are ``namespace``: defined in a
    cell, or a method of a class defined in one) travels without its globals and is rebuilt
    with the receiving kernel's user namespace as its globals: there it reads and writes that
    namespace, as it did this one (cloudpickle alone gives it a private copy of what it read).
    The names it reads and writes are collected, for the caller to send and bring back."""

    def __init__(
        self,
        file: Any,
        namespace: Mapping[str, Any],
        holders: dict[int, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(file, **kwargs)
        self.namespace = namespace
        self.reads: set[str] = set()
        self.writes: set[str] = set()
        self.deletes: set[str] = set()
        # the objects met that hold state (`_holds_state`), by id; held, so that no id is
        # reused by another object before the caller compares them
        self.holders = holders

    def reducer_override(self, obj: Any) -> Any:
        if self.holders is not None and _holds_state(obj):
            self.holders[id(obj)] = obj
        return super().reducer_override(obj)

    def _dynamic_function_reduce(self, func: types.FunctionType) -> Any:
        reduced = super()._dynamic_function_reduce(func)
        if func.__globals__ is not self.namespace:
            return reduced
        _, newargs, (state, slotstate), *_ = reduced
        reads, writes, deletes = _code_globals(func.__code__)
        self.reads |= reads
        self.writes |= writes | deletes
        self.deletes |= deletes
        code, _globals, name, argdefs, closure = newargs
        rebound = (code, name, argdefs, closure)
        return _make_rebound_function, rebound, (state, slotstate), None, None, _rebuilt_setstate


def _holds_state(obj: Any) -> bool:
    """Whether ``obj`` is state two names may share and a cell may change in place: an array
    or tensor (it speaks DLPack: numpy, PyTorch, JAX, CuPy) or an instance of a class the
    notebook defined. Types, functions and the library's own objects (a dtype is one object
    behind every array of it) are not: counting them, every two values would share."""
    if isinstance(obj, type):
        return False
    kind = type(obj)
    return hasattr(kind, "__dlpack__") or kind.__module__ == "__main__"


def sharing(candidates: Mapping[str, Mapping[int, Any]], shared: set[int]) -> list[str]:
    """Of ``candidates`` (name: the stateful objects it holds, by id, as `dumps` collects
    them), those holding one in ``shared`` or one held by another so found: what must travel
    with the values that hold ``shared``, for the other side to share it as this one does."""
    found: list[str] = []
    reach = set(shared)
    grew = True
    while grew and reach:
        grew = False
        for name, held in candidates.items():
            if name not in found and held.keys() & reach:
                found.append(name)
                reach |= held.keys()
                grew = True
    return found


def notebook_globals(
    value: Any, namespace: Mapping[str, Any]
) -> tuple[set[str], set[str], set[str]]:
    """The global names the notebook functions inside ``value`` read, bind and delete (pickling
    it as `dumps` does with ``namespace``, buffers left untouched: no data is copied)."""
    pickler = _NotebookPickler(io.BytesIO(), namespace, protocol=5, buffer_callback=lambda b: None)
    pickler.dump(value)
    return pickler.reads, pickler.writes, pickler.deletes


def dumps(
    name: str,
    value: Any,
    namespace: Mapping[str, Any] | None = None,
    holders: dict[int, Any] | None = None,
) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """Pickle ``value`` (protocol 5, out-of-band buffers); `InvalidArgument` names the variable
    and the reason when neither cloudpickle nor dill can. With ``namespace`` (the notebook's),
    functions defined in it travel as `_NotebookPickler` says, and ``holders`` gets the ids of
    the stateful objects met (`_holds_state`)."""
    register_local_modules()
    buffers: list[pickle.PickleBuffer] = []
    try:
        if namespace is not None:
            file = io.BytesIO()
            _NotebookPickler(
                file, namespace, holders, protocol=5, buffer_callback=buffers.append
            ).dump(value)
            return file.getvalue(), buffers
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


def pickled_size(pickled: Pickled) -> int:
    """A pickled value's size: its in-band pickle and its out-of-band buffers."""
    payload, buffers = pickled
    return len(payload) + sum(memoryview(b.raw()).nbytes for b in buffers)


_UNSHARED = (type(None), bool, int, float, complex, str, bytes)  # no state another name can share


def _shares(name: str, value: Any) -> bool:
    """Whether ``value`` may hold objects another name holds too (so it travels in a group)."""
    return not name.startswith(MODULE_PREFIX) and type(value) not in _UNSHARED


def pack_namespace(
    values: Mapping[str, Any],
    pickled: Mapping[str, Pickled] | None = None,
    namespace: Mapping[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], list[Any]]:
    """Descriptions (name, buffer range) and the flat list of buffers for a set of variables;
    ``pickled`` reuses what was already pickled (for the fingerprint) instead of pickling again.

    Two or more values that may share objects travel as one pickle (an entry with ``names``),
    so what they share stays shared on the other side: ``opt = SGD(model.params())`` then a
    cell running ``opt.step()`` steps the weights of that side's ``model``, and ``b = a`` keeps
    ``b is a``. Each pickled on its own, they would arrive as separate copies. Plain immutable
    data (numbers, ``str``, ``bytes``) travels alone: nothing in it can be shared."""
    grouped = [n for n, v in values.items() if _shares(n, v)]
    if len(grouped) < 2:
        grouped = []
    entries: list[dict[str, Any]] = []
    frames: list[Any] = []

    def add(entry: dict[str, Any], payload: bytes, buffers: list[pickle.PickleBuffer]) -> None:
        entries.append(entry | {"start": len(frames), "count": 1 + len(buffers)})
        frames.append(payload)
        frames.extend(b.raw() for b in buffers)

    for name, value in values.items():
        if name not in grouped:
            add({"name": name}, *((pickled or {}).get(name) or dumps(name, value)))
    if grouped:
        group = tuple(values[n] for n in grouped)
        add({"names": grouped}, *dumps(", ".join(grouped), group, namespace))
    return entries, frames


def _writable(frame: Any) -> memoryview:
    """A buffer for an out-of-band pickle buffer that the value may write to: a frame that
    arrived read-only (``bytes`` from the WebSocket, a read-only ZMQ frame) is copied once, or
    a numpy array or DataFrame made on it would refuse ``a[0] = 1`` / ``df.loc[...] = v``
    (``assignment destination is read-only``), as no local value does."""
    view = memoryview(frame)
    return memoryview(bytearray(view)) if view.readonly else view


def unpack_namespace(entries: list[dict[str, Any]], frames: list[Any]) -> dict[str, Any]:
    """The values `pack_namespace` described, by name (a group's unpickled together)."""
    out: dict[str, Any] = {}
    for entry in entries:
        start, count = int(entry["start"]), int(entry["count"])
        value = loads(
            bytes(frames[start]), [_writable(f) for f in frames[start + 1 : start + count]]
        )
        if "names" in entry:
            names = list(entry["names"])
            if not isinstance(value, tuple) or len(value) != len(names):
                raise InvalidArgument(f"a group of {len(names)} values did not unpickle as one")
            out.update(zip(names, value, strict=True))
        else:
            out[entry["name"]] = value
    return out


class Ledger:
    """What the remote kernel holds, by name: the fingerprint of each value last pushed there or
    pulled from there, so that a push sends only what changed since (a 2 GB array is not sent
    again for every cell)."""

    def __init__(self) -> None:
        self.held: dict[str, str] = {}
        self.handed: set[str] = set()  # bound here to a `RemoteRef`: the remote has the value
        # the notebook's namespace, once a %%cumulus cell sent from it: its functions travel
        # rebound to the remote namespace (`dumps`)
        self.namespace: Mapping[str, Any] | None = None

    def changes(
        self, values: Mapping[str, Any], force: bool = False
    ) -> tuple[dict[str, Pickled], dict[str, str]]:
        """The values that differ from what the remote holds (all of them with ``force``),
        pickled once, with their fingerprints."""
        changed: dict[str, Pickled] = {}
        prints: dict[str, str] = {}
        kept: dict[str, tuple[Pickled, dict[int, Any]]] = {}  # unchanged, and the state held
        shared: set[int] = set()  # the state the changed ones hold
        for name, value in values.items():
            holders: dict[int, Any] = {}
            pickled = dumps(name, value, self.namespace, holders)
            prints[name] = fingerprint(*pickled)
            if force or self.held.get(name) != prints[name]:
                changed[name] = pickled
                shared |= holders.keys()
            else:
                kept[name] = (pickled, holders)
        # an unchanged value holding state a changed one holds goes with it (in one pickle,
        # `pack_namespace`): ``opt = SGD(model.params(), lr=0.01)`` made anew while ``model``
        # is as the remote has it; sent alone, the remote ``opt`` would step copies
        for name in sharing({n: h for n, (_, h) in kept.items()}, shared):
            changed[name] = kept[name][0]
        return changed, {n: prints[n] for n in changed}

    def sent(self, prints: Mapping[str, str]) -> None:
        """The remote now holds these (a push succeeded)."""
        self.held.update(prints)
        self.handed.difference_update(prints)

    def received(self, values: Mapping[str, Any]) -> None:
        """What came back from the remote is what it holds."""
        for name, value in values.items():
            self.held[name] = fingerprint(*dumps(name, value, self.namespace))
            self.handed.discard(name)

    def forget(self, name: str) -> None:
        """The remote's value is not known here (it stayed remote, or is gone)."""
        self.held.pop(name, None)

    def stale(self, namespace: Mapping[str, Any]) -> list[str]:
        """The names the remote has from this side (sent, brought back, handed out as refs)
        that are no longer bound here: a local ``del`` the remote must follow."""
        return sorted(
            n for n in [*self.held, *self.handed]
            if n not in namespace and not n.startswith(MODULE_PREFIX)
        )  # fmt: skip

    def deleted(self, names: Iterable[str]) -> None:
        """The remote no longer has these."""
        for name in names:
            self.held.pop(name, None)
            self.handed.discard(name)


def size_of(name: str, value: Any) -> int:
    """Bytes ``value`` takes to send (its pickle and out-of-band buffers)."""
    payload, buffers = dumps(name, value)
    return len(payload) + sum(b.raw().nbytes for b in buffers)


def describe(value: Any, pickled: Pickled | None = None) -> dict[str, Any]:
    """What a `RemoteRef` shows of a value it does not hold, and its ``fingerprint`` (so the
    client can tell, without bringing it back, whether a value it sent changed there);
    ``pickled``: the value already pickled."""
    info: dict[str, Any] = {"type": type(value).__name__}
    for attribute in ("shape", "dtype"):
        if hasattr(value, attribute):
            info[attribute] = str(getattr(value, attribute))
    payload, buffers = pickled or dumps("value", value)
    info["bytes"] = len(payload) + sum(b.raw().nbytes for b in buffers)
    info["fingerprint"] = fingerprint(payload, buffers)
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
