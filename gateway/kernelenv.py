"""The Python environment sandboxed kernels run from: never the gateway's own.

Two cached layers under one directory, each built once and then shared by every kernel and
every gateway on the host (they are read-only to kernels):

- ``env-<hash>``: a virtualenv of the gateway's base interpreter (no system site-packages)
  with the kernel-side dependencies, pinned to the versions the gateway has installed (so the
  two sides speak the same protocol and pip resolves nothing); rebuilt only when those pins or
  the interpreter change (``pip`` from the configured index: about 30 s, once);
- ``src-<hash>``: a copy of this project's ``chronos`` and ``cumulus_jupyter`` packages, on the
  kernel's ``PYTHONPATH``; rebuilt (in milliseconds) whenever their source changes.

Each is built in a temporary directory and renamed into place, so concurrent gateways never
see half an environment. A configured interpreter (``--LocalRuntime.kernel_python``) replaces
the first layer: it must have ipykernel and the project's dependencies itself.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

#: what the kernel side imports (ipykernel, the agent's dependencies; pip, for overlays)
KERNEL_REQUIREMENTS = (
    "pip", "ipykernel", "jupyter_client", "pyzmq", "psutil", "cloudpickle", "dill", "xxhash",
    "fsspec", "httpx", "websockets", "tqdm", "platformdirs",
)  # fmt: skip
PACKAGES = ("chronos", "cumulus_jupyter")
#: what notebooks commonly import, offered in the built environment when the gateway has it
#: (frameworks as large as torch are the operator's choice: ``--LocalRuntime.kernel_packages``)
DATA_STACK = (
    "numpy", "pandas", "scipy", "matplotlib", "ipywidgets", "scikit-learn", "s3fs", "pyopencl",
    "pocl-binary-distribution", "nvidia-ml-py",
)  # fmt: skip


@dataclass(frozen=True)
class KernelEnv:
    """A built kernel environment: its interpreter, what to mount, what to put on the path."""

    python: str
    prefixes: tuple[str, ...]  # read-only mounts the interpreter needs
    pythonpath: str  # the project's packages


def pins(extra: tuple[str, ...] = ()) -> list[str]:
    """The kernel-side requirements, each pinned to the gateway's installed version."""
    out = []
    for name in (*KERNEL_REQUIREMENTS, *extra):
        try:
            out.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(name)
    return out


def installed(names: tuple[str, ...]) -> list[str]:
    """Those of ``names`` the gateway's environment has."""
    found = []
    for name in names:
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _source_digest(root: Path) -> str:
    h = hashlib.sha256()
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _publish(build: Path, final: Path) -> None:
    for directory in (p for p in build.rglob("*") if p.is_dir()):
        directory.chmod(0o755)
    build.chmod(0o755)
    try:
        build.rename(final)
    except OSError:  # another gateway published the same one first
        shutil.rmtree(build, ignore_errors=True)


def build_source(cache: Path, root: Path | None = None) -> Path:
    """The ``src-<hash>`` layer: this project's packages, copied (without bytecode)."""
    root = root or Path(__file__).resolve().parent.parent
    final = cache / f"src-{_source_digest(root)}"
    if final.is_dir():
        return final
    cache.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
    for package in PACKAGES:
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(root / package, build / package, ignore=ignore)
    _publish(build, final)
    return final


def build_env(cache: Path, extra: tuple[str, ...] = (), base: str | None = None) -> Path:
    """The ``env-<hash>`` layer: a virtualenv with the pinned kernel-side dependencies."""
    base = base or _base_python()
    requirements = pins(extra)
    final = cache / f"env-{_digest(os.path.realpath(base), *requirements)}"
    if (final / "bin" / "python").exists():
        return final
    cache.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
    try:
        _run([base, "-m", "venv", "--without-pip", str(build)])
        pip = [sys.executable, "-m", "pip", "--python", str(build / "bin" / "python")]
        _run([*pip, "install", "--quiet", "--no-input", "--disable-pip-version-check",
              *requirements])  # fmt: skip
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    # the venv's own paths name the build directory only in scripts we never run
    _publish(build, final)
    return final


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise RuntimeError(
            f"building the kernel environment: {' '.join(argv[:4])}…: " + " / ".join(tail)
        )


def prepare(cache: Path, extra: tuple[str, ...] = (), python: str = "") -> KernelEnv:
    """Both layers, built when missing; ``python``: a configured interpreter instead of the
    built virtualenv."""
    source = build_source(cache)
    if python:
        prefix = _prefix_of(python)
        return KernelEnv(python, (prefix,), str(source))
    env = build_env(cache, extra)
    base_prefix = _prefix_of(_base_python())
    return KernelEnv(str(env / "bin" / "python"), (str(env), base_prefix), str(source))


def _base_python() -> str:
    """The interpreter the gateway's own virtualenv was made from."""
    return str(getattr(sys, "_base_executable", None) or sys.executable)


def _prefix_of(python: str) -> str:
    """The installation directory of an interpreter (``/usr`` for the system's)."""
    real = Path(os.path.realpath(python))
    return str(real.parent.parent)
