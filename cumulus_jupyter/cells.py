"""Which names a ``%%cumulus`` cell reads, binds and deletes in the notebook's namespace.

The cell is first turned into plain Python the way IPython itself does it
(``%time y = f(x)`` becomes ``get_ipython().run_line_magic('time', 'y = f(x)')``, ``x = !ls``
becomes ``x = get_ipython().getoutput('ls')``); the statement forms of ``%time``/``%timeit`` and
``%%time``/``%%timeit`` are analysed as the code they run, other magics' arguments are opaque.
Scopes are resolved by the compiler's own analysis (`symtable`), so a name is what Python
says it is, in every nested function, lambda, class body and comprehension.

- **reads** (candidates to push): every name that is read from the namespace anywhere in the
  cell: at top level, and wherever a nested scope resolves it globally (a function body that
  reads a global, a lambda, a comprehension's conditions and element expressions, a class
  body, decorators, defaults, evaluated annotations, f-strings, ``match`` value patterns,
  ``except`` types, ``del x``, ``x += 1``). Only a name that every path binds at top level
  before any statement that mentions it is left out (``a = 1`` then ``b = a``), so pushing never
  misses: a name bound only under ``if``, in a loop or after a read is still pushed.
- **assigns** (candidates to pull): names bound at top level (assignments, ``for`` and ``with``
  targets, walrus, ``import``, ``def``, ``class``, ``match`` captures, ``except ... as``) and
  names a nested scope declares ``global`` and binds; never names bound only inside a nested
  scope.
- **deletes**: names ``del`` unbinds at top level (and ``except ... as e`` names, which Python
  unbinds when the handler ends): if the remote no longer has them after the cell, they go
  locally too.
- **imports**: names bound by ``import`` statements at top level, with the top-level module
  they come from (``None`` for a relative import), so the caller can decide whether the value
  can come back here.

A cell that is not valid Python has no names (``error`` says why): it is sent as it is, and the
remote kernel's own ``SyntaxError`` is the cell's error.
"""

from __future__ import annotations

import ast
import symtable
from dataclasses import dataclass, field
from typing import Any

_CODE_MAGICS = {"time", "timeit"}  # their argument is Python run in the user's namespace
_TIMEIT = "__cumulus_timeit__"  # what `%timeit CODE` is analysed as: a function, never pulled


@dataclass
class CellNames:
    reads: list[str] = field(default_factory=list)
    assigns: list[str] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    imports: dict[str, str | None] = field(default_factory=dict)
    #: the cell's own-scope absolute import statements, as code, with their top-level module
    import_statements: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None


def transform(code: str) -> str:
    """``code`` as the plain Python IPython would run (magics and ``!`` escapes as calls)."""
    from IPython.core.inputtransformer2 import TransformerManager

    return str(TransformerManager().transform_cell(code))  # type: ignore[no-untyped-call]


def cell_names(code: str, python: str | None = None) -> CellNames:
    """What ``code`` (a cell's text) reads, binds, deletes and imports; ``python``: the cell
    already transformed into plain Python (`transform`, or the shell's own transformers)."""
    source = transform(code) if python is None else python
    try:
        tree = _inline_code_magics(ast.parse(source))
        table = symtable.symtable(ast.unparse(tree), "<cell>", "exec")
    except (SyntaxError, ValueError, RecursionError) as exc:  # the remote kernel will say so
        return CellNames(error=f"{type(exc).__name__}: {exc}")
    global_reads: set[str] = set()
    bound_globals: set[str] = set()  # declared global in a nested scope and bound there
    _collect(table, global_reads, bound_globals, top=True)
    # `del x` needs x bound, `x += 1` reads x: the compiler counts neither as a read
    global_reads |= {n for statement in tree.body for n in _deleted(statement)}
    global_reads |= {
        node.target.id for node in ast.walk(tree)
        if isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name)
    }  # fmt: skip
    top = {s.get_name(): s for s in table.get_symbols()}

    reads: list[str] = []
    assigns: list[str] = []
    deletes: list[str] = []
    imports: dict[str, str | None] = {}
    definitely_bound: set[str] = set()
    for statement in tree.body:
        mentioned = _mentioned(statement)
        for name in mentioned:
            if name in global_reads and name not in definitely_bound and name not in reads:
                reads.append(name)
        deleted = _unbound(statement)
        for name in _bound(statement):
            symbol = top.get(name)
            is_bound = symbol is not None and (symbol.is_assigned() or symbol.is_imported())
            if (is_bound or name in bound_globals) and name not in assigns and name != _TIMEIT:
                assigns.append(name)
        for name in deleted:
            if name not in deletes:
                deletes.append(name)
        for name, module in _imported(statement).items():
            imports.setdefault(name, module)
        definitely_bound |= _definitely_bound(statement)
        definitely_bound -= deleted
    # names a nested scope binds (or deletes) as globals
    for name in sorted(bound_globals - set(assigns)):
        assigns.append(name)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Name)
            and isinstance(node.ctx, ast.Del)
            and node.id in bound_globals
        ):
            deletes.append(node.id)
    deletes = list(dict.fromkeys(deletes))
    # a name also bound otherwise than by an import statement is not "only an import"
    others = _non_import_bindings(tree)
    imports = {n: m for n, m in imports.items() if n not in others}
    statements = [
        line
        for statement in tree.body
        for node in sorted(_own_scope(statement), key=_position)
        for line in _absolute_imports(node)
    ]
    return CellNames(
        reads=reads, assigns=assigns, deletes=deletes, imports=imports,
        import_statements=statements,
    )  # fmt: skip


def _collect(
    table: symtable.SymbolTable, reads: set[str], bound: set[str], top: bool = False
) -> None:
    """Names read from the global namespace in ``table`` and every scope nested in it."""
    kind = table.get_type()
    for symbol in table.get_symbols():
        name = symbol.get_name()
        if top:
            if symbol.is_referenced():
                reads.add(name)
            continue
        if symbol.is_referenced() and (
            symbol.is_global() or (kind == "class" and symbol.is_local())
        ):  # a class body's own names fall back to the globals until it binds them
            reads.add(name)
        if symbol.is_declared_global() and symbol.is_assigned():
            bound.add(name)
            reads.add(name)  # `global g; del g` or a conditional bind: the old value matters
    for child in table.get_children():
        _collect(child, reads, bound)


_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef, ast.ListComp,
           ast.SetComp, ast.DictComp, ast.GeneratorExp)  # fmt: skip


def _mentioned(statement: ast.stmt) -> list[str]:
    """Every name loaded, augmented or deleted anywhere in ``statement``, nested scopes too."""
    found: list[str] = []
    for node in ast.walk(statement):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load | ast.Del):
            found.append(node.id)
        elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
            found.append(node.target.id)
    return list(dict.fromkeys(found))


def _own_scope(node: ast.AST) -> list[ast.AST]:
    """The nodes of ``node`` that belong to the scope it is in (nested scopes' bodies left out,
    their decorators, defaults and first iterable kept: those are evaluated here)."""
    out: list[ast.AST] = []
    stack: list[ast.AST] = [node]
    while stack:
        current = stack.pop()
        out.append(current)
        if isinstance(current, _SCOPES):
            if isinstance(current, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                stack.extend(current.args.defaults)
                stack.extend(d for d in current.args.kw_defaults if d is not None)
            if isinstance(current, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                stack.extend(current.decorator_list)
            if isinstance(current, ast.ClassDef):
                stack.extend([*current.bases, *current.keywords])
            if isinstance(current, ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp):
                stack.append(current.generators[0].iter)
            continue
        stack.extend(ast.iter_child_nodes(current))
    return out


def _bound(statement: ast.stmt) -> list[str]:
    """Names ``statement`` may bind in the scope it is in, in source order."""
    found: list[str] = []
    for node in sorted(_own_scope(statement), key=_position):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            found.append(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            found.append(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            found.extend(_alias_name(alias) for alias in node.names if alias.name != "*")
        elif isinstance(node, ast.ExceptHandler | ast.MatchAs | ast.MatchStar) and node.name:
            found.append(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            found.append(node.rest)
    # a walrus in a comprehension binds in this scope too
    for node in ast.walk(statement):
        if isinstance(node, ast.NamedExpr) and isinstance(node.target, ast.Name):
            found.append(node.target.id)
    return list(dict.fromkeys(found))


def _position(node: ast.AST) -> tuple[int, int]:
    return (getattr(node, "lineno", 0), getattr(node, "col_offset", 0))


def _deleted(statement: ast.stmt) -> set[str]:
    return {
        node.id
        for node in _own_scope(statement)
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Del)
    }


def _unbound(statement: ast.stmt) -> set[str]:
    """Names ``statement`` may leave unbound: ``del``, and ``except ... as e`` (Python deletes
    ``e`` when the handler ends, even if it was bound before)."""
    handlers = {
        node.name
        for node in _own_scope(statement)
        if isinstance(node, ast.ExceptHandler) and node.name
    }
    return _deleted(statement) | handlers


def _alias_name(alias: ast.alias) -> str:
    return alias.asname or alias.name.split(".")[0]


def _absolute_imports(node: ast.AST) -> list[tuple[str, str]]:
    """The absolute imports ``node`` makes, each as its top-level module and a statement that
    imports it (``import a, b`` is two)."""
    if isinstance(node, ast.Import):
        return [(alias.name.split(".")[0], f"import {alias.name}") for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and not node.level:
        return [(node.module.split(".")[0], ast.unparse(node))]
    return []


def _imported(statement: ast.stmt) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for node in _own_scope(statement):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found[_alias_name(alias)] = alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            module = node.module.split(".")[0] if node.module and not node.level else None
            for alias in node.names:
                if alias.name != "*":
                    found[_alias_name(alias)] = module
    return found


def _non_import_bindings(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for statement in tree.body:
        bound = set(_bound(statement))
        if isinstance(statement, ast.Import | ast.ImportFrom):
            continue
        names |= bound - set(_imported(statement))
    return names


def _targets(target: ast.expr) -> set[str]:
    """Names an assignment target binds (not attribute or subscript bases)."""
    if isinstance(target, ast.Name):
        return {target.id}
    if isinstance(target, ast.Starred):
        return _targets(target.value)
    if isinstance(target, ast.Tuple | ast.List):
        return {n for element in target.elts for n in _targets(element)}
    return set()


def _definitely_bound(statement: ast.stmt) -> set[str]:
    """Names bound by ``statement`` whenever it completes (so later reads see the cell's own
    value): plain assignments, imports, ``def``, ``class``, ``with ... as``."""
    if isinstance(statement, ast.Assign):
        return {n for target in statement.targets for n in _targets(target)}
    if isinstance(statement, ast.AnnAssign | ast.AugAssign) and (
        isinstance(statement, ast.AugAssign) or statement.value is not None
    ):
        return _targets(statement.target)
    if isinstance(statement, ast.Import | ast.ImportFrom):
        return {_alias_name(a) for a in statement.names if a.name != "*"}
    if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return {statement.name}
    if isinstance(statement, ast.With | ast.AsyncWith):
        return {
            n for item in statement.items if item.optional_vars
            for n in _targets(item.optional_vars)
        }  # fmt: skip
    return set()


def _magic_call(node: ast.AST) -> tuple[str, list[Any]] | None:
    """``get_ipython().run_line_magic(NAME, ...)`` / ``run_cell_magic``: (kind, arguments)."""
    if not (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("run_line_magic", "run_cell_magic")
        and isinstance(node.func.value, ast.Call)
        and isinstance(node.func.value.func, ast.Name)
        and node.func.value.func.id == "get_ipython"
        and all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in node.args)
    ):
        return None
    return node.func.attr, [a.value for a in node.args]  # type: ignore[attr-defined]


class _InlineMagics(ast.NodeTransformer):
    """``%time STATEMENT`` and ``%%time`` as the code they run; ``%timeit`` as a function (its
    code runs with the user's globals, its assignments stay local to it)."""

    def visit_Expr(self, node: ast.Expr) -> Any:
        call = _magic_call(node.value)
        if call is None:
            return node
        kind, args = call
        name = str(args[0]).lstrip("%") if args else ""
        if name not in _CODE_MAGICS:
            return node
        source = str(args[1]) if kind == "run_line_magic" and len(args) > 1 else ""
        if kind == "run_cell_magic" and len(args) > 2:
            source = str(args[2])
        try:
            body = _inline_code_magics(ast.parse(transform(source))).body
        except SyntaxError:
            return node  # the magic will say so itself
        keep = [node, *body] if name == "time" else [node, _timeit_function(body)]
        return [ast.copy_location(n, node) for n in keep] if body else node


def _timeit_function(body: list[ast.stmt]) -> ast.stmt:
    function = ast.parse(f"def {_TIMEIT}():\n    pass").body[0]
    assert isinstance(function, ast.FunctionDef)
    function.body = body
    return function


def _inline_code_magics(tree: ast.Module) -> ast.Module:
    module: ast.Module = ast.fix_missing_locations(_InlineMagics().visit(tree))
    return module
