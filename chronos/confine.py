"""In-process memory caps, applied before user code runs.

Some frameworks take their memory cap only from a call inside the process (PyTorch's
``set_per_process_memory_fraction``, TensorFlow's logical-device memory limit). `install`
arranges for those calls to happen right after the framework is imported, reading the
``CHRONOS_*`` variables that `chronos.enforce` sets, so user code never has to. Importing the
frameworks eagerly would cost seconds; the import hook costs nothing until they are imported.

``python -m chronos.confine MODULE [ARGS...]`` installs the hooks and runs ``MODULE`` as
``__main__`` in the same process (the gateway launches kernels as
``python -m chronos.confine ipykernel_launcher -f ...``).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import runpy
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any

Hook = Callable[[ModuleType], None]


def _memory_fraction() -> float | None:
    raw = os.environ.get("CHRONOS_MEMORY_FRACTION")
    try:
        fraction = float(raw) if raw else None
    except ValueError:
        return None
    return fraction if fraction is not None and 0 < fraction < 1 else None


def cap_torch(torch: ModuleType) -> None:
    """Cap PyTorch's CUDA caching allocator to the partition's fraction on every visible
    device, when CUDA initialises (``_lazy_call``), so importing torch stays cheap."""
    fraction = _memory_fraction()
    cuda = getattr(torch, "cuda", None)
    if fraction is None or cuda is None:
        return

    def apply() -> None:
        for device in range(cuda.device_count()):
            cuda.set_per_process_memory_fraction(fraction, device)

    lazy_call = getattr(cuda, "_lazy_call", None)
    if lazy_call is not None:
        lazy_call(apply)
    elif cuda.is_available():
        apply()


def cap_tensorflow(tf: ModuleType) -> None:
    """Give TensorFlow one logical GPU per physical one, limited to the partition's memory."""
    raw = os.environ.get("CHRONOS_MEMORY_BYTES")
    if _memory_fraction() is None or not raw:
        return
    limit_mb = int(raw) // 2**20
    config = tf.config
    for gpu in config.list_physical_devices("GPU"):
        config.set_logical_device_configuration(
            gpu, [config.LogicalDeviceConfiguration(memory_limit=limit_mb)]
        )


DEFAULT_HOOKS: dict[str, Hook] = {"torch": cap_torch, "tensorflow": cap_tensorflow}


class _HookedLoader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader, hook: Hook) -> None:
        self.inner = inner
        self.hook = hook

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.inner.exec_module(module)
        try:
            self.hook(module)
        except Exception as exc:  # a cap that fails must not break the user's import
            warnings.warn(
                f"chronos: could not apply the partition's memory cap to {module.__name__}: {exc}",
                RuntimeWarning,
                stacklevel=2,
            )


class _PostImportFinder(importlib.abc.MetaPathFinder):
    def __init__(self, hooks: Mapping[str, Hook]) -> None:
        self.hooks = dict(hooks)
        self._busy: set[str] = set()

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        hook = self.hooks.get(fullname)
        if hook is None or fullname in self._busy:
            return None
        self._busy.add(fullname)
        try:
            spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        finally:
            self._busy.discard(fullname)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _HookedLoader(spec.loader, hook)
        return spec


def install(hooks: Mapping[str, Hook] | None = None) -> None:
    """Apply each hook right after its module is imported (at once if it already was).
    Idempotent: installing twice does not hook twice."""
    chosen = dict(DEFAULT_HOOKS if hooks is None else hooks)
    for name, hook in list(chosen.items()):
        if name in sys.modules:
            hook(sys.modules[name])
            del chosen[name]
    if any(isinstance(f, _PostImportFinder) and f.hooks.keys() & chosen for f in sys.meta_path):
        return
    if chosen:
        sys.meta_path.insert(0, _PostImportFinder(chosen))


def main(argv: Sequence[str] | None = None) -> Any:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print("usage: python -m chronos.confine MODULE [ARGS...]", file=sys.stderr)
        return 2
    install()
    module = args[0]
    sys.argv = args
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
