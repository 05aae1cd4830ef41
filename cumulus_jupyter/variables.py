"""What a ``%%cumulus`` cell sends, brings back and deletes, so that it leaves the notebook's
namespace as the same cell run locally would (`cumulus_jupyter.cells` says which names the
cell reads, binds and deletes; this decides what that means for values).

- **push**: every name the cell may read that exists here, modules included: an installed
  module travels by reference (the remote kernel imports it), a local one (a ``helpers.py``
  beside the notebook) by value (`transfer.register_local_modules`). IPython's own names
  (``In``, ``Out``, ``_``, ``get_ipython``, ...) and `RemoteRef`s (already remote) stay.
  Only values that changed since the remote last held them are sent (`transfer.Ledger`).
- **pull**: the names the cell binds at top level (and ``global`` names its functions bind).
  A name bound only by an ``import`` comes back only if its module can be imported here (it
  travels by reference; a package the remote has and this side lacks would not load).
- **their functions' globals**: a function defined in the notebook travels rebound to the
  remote namespace (`transfer.dumps`), so the globals it reads are sent too, and those it
  binds (``global counter``) or deletes are brought back (or deleted) like the cell's own.
- **watch**: values the cell was sent that it may change in place (``lst.append(x)``,
  ``model.fit(X)``, ``a[0] = 1``, anything a called function does): after the cell, the remote
  says what each now pickles to (no data moves), and those that changed come back.
- **deletes**: a name the cell deleted that the remote no longer has is deleted here too;
  and a name the notebook deleted since the remote got it is deleted there before the next
  cell runs (so it raises ``NameError`` there as it would here).

Under `kernel_code.INLINE_MAX_BYTES` the push rides inside the cell's own execute request, and
what comes back (bound values, watched values that changed) inside its reply, described in its
metadata, the pickles its buffers (`cumulus_jupyter.agent.inline`): a cell costs one round
trip. What does not fit, or a cell that failed, takes the ``cumulus.vars`` comm (and the data
path) as before.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cumulus_jupyter import transfer
from cumulus_jupyter.cells import CellNames
from cumulus_jupyter.protocol import code as kernel_code
from cumulus_jupyter.session import Push, RemoteRef, RemoteSession

# IPython's history and helpers; they describe this kernel, never the cell's data
_IPYTHON = re.compile(r"_|__|___|_i|_ii|_iii|_i?\d+|_ih|_oh|_dh|In|Out|get_ipython|exit|quit")
_IMMUTABLE = (int, float, complex, str, bytes, bool, type(None), range, types.ModuleType,
              types.FunctionType, types.BuiltinFunctionType, type)  # fmt: skip


def ipython_name(name: str, namespace: Mapping[str, Any], hidden: Mapping[str, Any]) -> bool:
    """Whether ``name`` is IPython's own (its history, ``get_ipython``, names it put there)."""
    if _IPYTHON.fullmatch(name) or (name.startswith("__") and name.endswith("__")):
        return True
    return name in hidden and namespace.get(name) is hidden[name]


#: types whose values hold no function, so no notebook globals: not pickled to look for any
#: (exact types: a subclass may be a notebook class, whose methods read globals)
_PLAIN_DATA = frozenset({int, float, complex, str, bytes, bytearray, bool, type(None), range})


def _immutable(value: Any) -> bool:
    if isinstance(value, tuple | frozenset):
        return all(_immutable(v) for v in value)
    if isinstance(value, types.FunctionType) and value.__closure__:
        return False  # a closure's cells change when it runs (`nonlocal count; count += 1`)
    return isinstance(value, _IMMUTABLE)


def _importable(module: str | None) -> bool:
    if module is None:
        return False
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _import_local_modules(names: CellNames) -> None:
    """Run here, in a namespace of their own, the cell's imports of local modules (a
    ``helpers.py`` beside the notebook, not imported here yet, or a submodule of one not yet
    imported): so the module, as a local cell would import it, can travel by value. One that
    fails to import here is left to the remote kernel, whose own error the cell shows."""
    for top, statement in names.import_statements:
        if transfer.is_local_file(top):
            try:
                exec(statement, {})  # the user's own import line
            except Exception:  # the remote kernel's import says why
                continue


@dataclass
class Plan:
    push: list[str] = field(default_factory=list)
    pull: list[str] = field(default_factory=list)
    watch: list[str] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    modules: list[str] = field(default_factory=list)  # local modules the cell imports


def plan(
    names: CellNames,
    namespace: Mapping[str, Any],
    hidden: Mapping[str, Any] | None = None,
    also_push: list[str] | None = None,
) -> Plan:
    """What to send before the cell and bring back after it (see the module docstring)."""
    hidden = hidden or {}
    wanted = dict.fromkeys([*names.reads, *(also_push or [])])
    push = [
        n for n in wanted
        if n in namespace and not ipython_name(n, namespace, hidden)
        and not isinstance(namespace[n], RemoteRef)
    ]  # fmt: skip
    pull = [
        n for n in names.assigns
        if not ipython_name(n, namespace, hidden)
        and (n not in names.imports or _importable(names.imports[n]))
    ]  # fmt: skip
    deletes = list(names.deletes)
    # what the notebook functions sent read and write (a helper defined in an earlier cell
    # that appends to a global list, or declares one `global`): send and bring back those too
    queue = [n for n in push if type(namespace[n]) not in _PLAIN_DATA]
    while queue:
        try:
            reads, writes, dels = transfer.notebook_globals(namespace[queue.pop()], namespace)
        except Exception:  # cannot be pickled: the push will say so, naming it
            continue
        for name in sorted(reads):
            if (
                name in namespace
                and name not in push
                and not ipython_name(name, namespace, hidden)
                and not isinstance(namespace[name], RemoteRef)
            ):
                push.append(name)
                queue.append(name)
        pull += [n for n in sorted(writes) if n not in pull]
        deletes += [n for n in sorted(dels) if n not in deletes]
    bound = set(pull)
    watch = [n for n in push if n not in bound and not _immutable(namespace[n])]
    # `import helpers` in the cell, helpers.py beside the notebook: the remote finds no such
    # file, so the module goes by value, for its `import` to find it
    _import_local_modules(names)
    modules = [
        m for m in dict.fromkeys(names.imports.values())
        if m is not None and transfer.local_module(m) is not None
    ]  # fmt: skip
    return Plan(push=push, pull=pull, watch=watch, deletes=deletes, modules=modules)


def send(session: RemoteSession, found: Plan, namespace: dict[str, Any]) -> Push | None:
    """Push what the plan says, the notebook's functions rebound to the remote namespace: a
    push small enough to ride inside the cell's execute request is returned for it to carry
    (`RemoteSession.execute`), a larger one is sent now."""
    session.ledger.namespace = namespace
    values = {n: namespace[n] for n in found.push}
    values |= {transfer.MODULE_PREFIX + m: sys.modules[m] for m in found.modules}
    stale = session.ledger.stale(namespace)
    prepared = session.prepare_push(values, delete=stale)
    if prepared is None or prepared.total <= kernel_code.INLINE_MAX_BYTES:
        return prepared
    session.push(values, delete=stale)
    return None


def inline_pull(
    session: RemoteSession, found: Plan, limit: int, skip: list[str], carried: Push | None
) -> dict[str, Any] | None:
    """The execute's `kernel_code.PULL`, which brings back inside the reply what `bring_back`
    would pull: the names bound and the watched values whose fingerprint changed (those the
    carried push sends count as held); None when there is nothing to ask for."""
    held = session.ledger.held | (carried.prints if carried is not None else {})
    pull = [n for n in found.pull if n not in skip]
    watched = {n: held[n] for n in found.watch if n not in skip and n in held}
    if not pull and not watched:
        return None
    return {"names": pull, "watched": watched, "max_bytes": limit,
            "inline_max": kernel_code.INLINE_MAX_BYTES}  # fmt: skip


def changed_remotely(session: RemoteSession, names: list[str]) -> list[str]:
    """Of ``names`` (values this side sent or received), those whose remote value no longer
    pickles to what the session's ledger holds: the remote describes each (its fingerprint),
    nothing is transferred. A remote that gives no fingerprint counts as changed."""
    held = {n: session.ledger.held[n] for n in names if n in session.ledger.held}
    if not held:
        return []
    described, _ = session.pull(list(held), 0)  # over 0 bytes: all come back as descriptions
    session.ledger.sent(held)  # pull forgot them as refs; the remote still holds these values
    changed = []
    for name, ref in described.items():
        info = ref.info if isinstance(ref, RemoteRef) else {}
        if info.get("fingerprint") != held[name]:
            changed.append(name)
    return changed


def bring_back(
    session: RemoteSession,
    found: Plan,
    namespace: dict[str, Any],
    limit: int,
    skip: list[str],
    reply: dict[str, Any] | None,
    note: Callable[[str], None],
) -> None:
    """After the cell ran: pull what it bound and what it changed in place (values over
    ``limit`` bytes stay remote as `RemoteRef`s), then delete here what it deleted there.
    What the ``reply`` already brought (`inline_pull`) is taken from it. ``note`` takes a line
    for each value that stays remote because it cannot travel (the magic's status display)."""
    inline = session.inline_pulled(reply) if reply is not None else None
    if inline is not None:
        assigned, missing = inline.values, inline.missing
        unpicklable(assigned, note)
        deferred, _ = _pull_what_can_come(session, inline.deferred, limit, note)
        assigned |= deferred
        updated: dict[str, Any] = {}
    else:
        wanted = [n for n in found.pull if n not in skip]
        assigned, missing = _pull_what_can_come(session, wanted, limit, note)
        changed = changed_remotely(session, [n for n in found.watch if n not in skip])
        updated, _ = _pull_what_can_come(session, changed, limit, note)
    namespace.update(updated | assigned)
    for name in missing:
        session.ledger.forget(name)
        if name in found.deletes:
            namespace.pop(name, None)


def _pull_what_can_come(
    session: RemoteSession, names: list[str], limit: int, note: Callable[[str], None]
) -> tuple[dict[str, Any], list[str]]:
    """`RemoteSession.pull`, with a note for each value that cannot be pickled there (a file
    the cell opened, a widget): it stays remote, bound here to a `RemoteRef`."""
    values, missing = session.pull(names, limit)
    unpicklable(values, note)
    return values, missing


def unpicklable(values: dict[str, Any], note: Callable[[str], None]) -> None:
    """A note for each value that came back as a handle because it cannot travel."""
    for name, value in values.items():
        if isinstance(value, RemoteRef) and "unpicklable" in value.info:
            note(f"{name} stays in the remote kernel: {value.info['unpicklable']}")
