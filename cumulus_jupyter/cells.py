"""Which names a ``%%cumulus`` cell reads and which it assigns, from its AST.

Reads are the candidates to push (free variables: loaded before any assignment in the cell);
assigns are the candidates to pull (bound at the cell's top level).
"""

from __future__ import annotations

import ast
import builtins
from dataclasses import dataclass, field

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
