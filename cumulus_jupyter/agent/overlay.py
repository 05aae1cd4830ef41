"""Requirements for one remote kernel: pip-installed into an overlay directory first on its
path, never into the environment the kernel (or the gateway) runs from.

Overlays are cached by the hash of the pip arguments under ``CUMULUS_OVERLAYS`` (default
``~/.cache/cumulus/overlays``), so a repeat is instant; one is built in a temporary directory
and renamed into place whole, so a half-built overlay is never used.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from cumulus_jupyter.errors import InvalidArgument
from cumulus_jupyter.protocol import env


def overlay_root() -> Path:
    return Path(os.environ.get(env.OVERLAYS) or Path.home() / ".cache" / "cumulus" / "overlays")


def install(requirements: list[str]) -> str:
    """Install ``requirements`` (pip arguments) into an overlay directory put first on this
    kernel's path, never into the environment the kernel (or the gateway) runs from. Overlays
    are cached by the hash of the arguments, so a repeat is instant."""
    key = hashlib.sha256("\0".join(requirements).encode()).hexdigest()[:16]
    target = overlay_root() / key
    cached = (target / ".cumulus-complete").exists()
    if not cached:
        building = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=_ensure(overlay_root())))
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "--no-warn-script-location", "--target", str(building), *requirements],
            capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            shutil.rmtree(building, ignore_errors=True)
            raise InvalidArgument(f"pip install failed: {done.stderr.strip()[-2000:]}")
        (building / ".cumulus-complete").touch()
        try:
            building.rename(target)  # atomic: a half-built overlay is never used
        except OSError:
            shutil.rmtree(building, ignore_errors=True)  # another kernel built it meanwhile
    if str(target) not in sys.path:
        sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    return f"{'cached' if cached else 'installed'} {' '.join(requirements)} in {target}"


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
