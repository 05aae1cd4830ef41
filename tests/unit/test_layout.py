"""The layering DESIGN.md fixes, kept so by this test:

- ``chronos`` imports nothing of ours;
- ``gateway`` imports, of the client's package, only ``cumulus_jupyter.errors`` and
  ``cumulus_jupyter.protocol``; ``protocol`` itself is light (the standard library and errors);
- the client (``cumulus_jupyter``) never imports ``gateway`` or ``chronos``;
- no import cycle inside any package, ``TYPE_CHECKING`` and function-level imports counted;
- every module says what it holds in a docstring; each public surface is its ``__all__``.
"""

from __future__ import annotations

import ast
import gc
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

import chronos
import cumulus_jupyter
import cumulus_jupyter.checkpoint
import cumulus_jupyter.errors

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("chronos", "cumulus_jupyter", "gateway")
STDLIB = sys.stdlib_module_names
OPTIONAL = {"numpy"}  # imported inside ``try``, where it makes a path faster; never required


def parse(path: Path) -> ast.Module:
    # CPython 3.11 can fail ast.parse with "AST constructor recursion depth mismatch" when a
    # garbage collection runs a finalizer in the middle of it: collect first, then parse
    gc.collect()
    gc.disable()
    try:
        return ast.parse(path.read_text())
    finally:
        gc.enable()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def imports_of(name: str) -> Iterator[str]:
    """Every module ``name`` imports, anywhere in it (``TYPE_CHECKING`` blocks and functions
    included); ``from a import b`` names ``a.b`` when that is a module of ours."""
    path = modules()[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                yield f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules() else base


def ours(name: str) -> str | None:
    """The module of ours an import resolves to (its longest known prefix)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules():
            return candidate
    return None


def test_chronos_imports_nothing_of_ours() -> None:
    for name in modules():
        if name.startswith("chronos"):
            bad = {i for i in imports_of(name) if i.split(".")[0] in ("cumulus_jupyter", "gateway")}
            assert not bad, f"{name} imports {bad}"


def test_the_gateway_imports_only_the_contract_of_the_client() -> None:
    allowed = ("cumulus_jupyter.errors", "cumulus_jupyter.protocol")
    for name in modules():
        if name.startswith("gateway"):
            bad = {
                i for i in imports_of(name)
                if i.split(".")[0] == "cumulus_jupyter" and not i.startswith(allowed)
            }  # fmt: skip
            assert not bad, f"{name} imports {bad}"


def test_the_client_never_imports_the_gateway_or_chronos() -> None:
    for name in modules():
        if name.startswith("cumulus_jupyter"):
            bad = {i for i in imports_of(name) if i.split(".")[0] in ("gateway", "chronos")}
            assert not bad, f"{name} imports {bad}"


def test_the_protocol_is_light() -> None:
    for name in modules():
        if name.startswith("cumulus_jupyter.protocol"):
            for imported in imports_of(name):
                top = imported.split(".")[0]
                assert top in STDLIB | OPTIONAL or imported.startswith(
                    ("cumulus_jupyter.errors", "cumulus_jupyter.protocol")
                ), f"{name} imports {imported}"


def cycle_from(start: str, graph: dict[str, set[str]]) -> list[str] | None:
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in graph.get(node, ()):
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle_inside_a_package(package: str) -> None:
    graph: dict[str, set[str]] = {}
    for name in modules():
        if name.split(".")[0] == package:
            targets = {ours(i) for i in imports_of(name)}
            graph[name] = {t for t in targets if t and t != name and t.split(".")[0] == package}
    for name in graph:
        cycle = cycle_from(name, graph)
        assert cycle is None, " -> ".join(cycle or [])


def test_every_module_says_what_it_holds() -> None:
    missing = [name for name, path in modules().items() if not ast.get_docstring(parse(path))]
    assert not missing


@pytest.mark.parametrize(
    "module", [chronos, cumulus_jupyter, cumulus_jupyter.errors, cumulus_jupyter.checkpoint]
)
def test_public_surface_is_exported(module: object) -> None:
    names = module.__all__  # type: ignore[attr-defined]
    assert names == sorted(names)
    assert all(getattr(module, name, None) is not None for name in names)


def run_python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_remote_is_the_decorator_even_after_the_agent_is_loaded() -> None:
    # once the kernel-side module was imported, `from cumulus_jupyter import remote` used to
    # return that module
    out = run_python(
        "import cumulus_jupyter.agent, cumulus_jupyter.agent.comms, cumulus_jupyter.checkpoint\n"
        "from cumulus_jupyter import remote, run\n"
        "print(remote.__module__, run.__module__, callable(remote(gpu=0.5)))"
    )
    assert out == "cumulus_jupyter.api cumulus_jupyter.api True"


def test_the_client_loads_without_chronos_or_the_gateway() -> None:
    out = run_python(
        "import sys, cumulus_jupyter.magic, cumulus_jupyter.kernel, cumulus_jupyter.cli, "
        "cumulus_jupyter.api, cumulus_jupyter.kernelspec, cumulus_jupyter.agent\n"
        "print(sorted(m for m in ('chronos', 'gateway', 'sqlite3', 'psutil') if m in sys.modules))"
    )
    assert out == "[]"


def test_the_contract_loads_without_the_client_stack() -> None:
    out = run_python(
        "import sys, cumulus_jupyter.errors\n"
        "from cumulus_jupyter.protocol import amounts, callback, code, dataport, env, messages\n"
        "heavy = ('httpx', 'websockets', 'zmq', 'cloudpickle', 'jupyter_client', 'IPython')\n"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    assert out == "[]"
