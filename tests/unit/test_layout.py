"""The layering DESIGN.md fixes: chronos imports nothing of ours, clients never import the
gateway; and each package's public surface is what its ``__all__`` says."""

import ast
import gc
from pathlib import Path

import pytest

import chronos
import cumulus_jupyter.errors

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"chronos": {"gateway", "cumulus_jupyter"}, "cumulus_jupyter": {"gateway"}}


def parse(path: Path) -> ast.Module:
    # CPython 3.11 can fail ast.parse with "AST constructor recursion depth mismatch" when a
    # garbage collection runs a finalizer in the middle of it: collect first, then parse
    gc.collect()
    gc.disable()
    try:
        return ast.parse(path.read_text())
    finally:
        gc.enable()


def imported_packages(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layering(package: str) -> None:
    for path in (ROOT / package).rglob("*.py"):
        bad = imported_packages(path) & FORBIDDEN[package]
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize("module", [chronos, cumulus_jupyter.errors])
def test_public_surface_is_exported(module: object) -> None:
    names = module.__all__  # type: ignore[attr-defined]
    assert names == sorted(names)
    assert all(hasattr(module, name) for name in names)
