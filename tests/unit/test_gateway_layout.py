"""The gateway's own layering: of the client's package it imports only the error tree and the
wire contract; its modules import each other without a cycle (``TYPE_CHECKING`` imports
counted); every module says in its docstring what it holds."""

from __future__ import annotations

import ast
import gc
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = ROOT / "gateway"
ALLOWED_CLIENT = ("cumulus_jupyter.errors", "cumulus_jupyter.protocol")


def parse(path: Path) -> ast.Module:
    gc.collect()  # see tests/unit/test_layout.py: a collection inside ast.parse can break it
    gc.disable()
    try:
        return ast.parse(path.read_text())
    finally:
        gc.enable()


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): parse(p) for p in sorted(GATEWAY.rglob("*.py"))}


def imports(tree: ast.Module) -> set[str]:
    """Every module named by an import anywhere in ``tree`` (``from a import b``: ``a.b`` too,
    in case ``b`` is a module)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_the_gateway_imports_only_the_errors_and_the_protocol_of_the_client() -> None:
    for name, tree in MODULES.items():
        client = {m for m in imports(tree) if m.split(".")[0] == "cumulus_jupyter"}
        bad = {m for m in client if not m.startswith(ALLOWED_CLIENT)}
        # "from cumulus_jupyter.protocol import env" names cumulus_jupyter.protocol.env: fine
        assert not {m for m in bad if m != "cumulus_jupyter"}, f"{name} imports {bad}"


def test_no_import_cycle_inside_the_gateway() -> None:
    graph = {name: {m for m in imports(tree) if m in MODULES} for name, tree in MODULES.items()}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(name) :], name]))
        if name in done:
            return
        for imported in sorted(graph[name]):
            visit(imported, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_says_what_it_holds(name: str) -> None:
    docstring = ast.get_docstring(MODULES[name])
    assert docstring and len(docstring) > 20, f"{name} has no docstring"
