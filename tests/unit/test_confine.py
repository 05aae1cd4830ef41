import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

from chronos import confine

pytestmark = pytest.mark.unit


def test_hook_runs_after_the_module_is_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "fakeframework_a1.py").write_text("LOADED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen: list[ModuleType] = []
    confine.install({"fakeframework_a1": seen.append})
    confine.install({"fakeframework_a1": seen.append})  # idempotent
    try:
        import fakeframework_a1  # type: ignore[import-not-found]

        assert seen == [fakeframework_a1] and fakeframework_a1.LOADED
    finally:
        sys.meta_path[:] = [
            f for f in sys.meta_path if not isinstance(f, confine._PostImportFinder)
        ]
        sys.modules.pop("fakeframework_a1", None)


def test_a_failing_hook_warns_and_does_not_break_the_import(tmp_path: Path) -> None:
    (tmp_path / "fakeframework_b2.py").write_text("X = 1\n")
    code = textwrap.dedent(
        f"""
        import sys, warnings
        sys.path.insert(0, {str(tmp_path)!r})
        from chronos import confine
        def boom(module): raise RuntimeError("no GPU")
        confine.install({{"fakeframework_b2": boom}})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import fakeframework_b2
        print(fakeframework_b2.X, caught[0].message)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert (
        "1 chronos: could not apply the partition's memory cap to fakeframework_b2: no GPU"
        in out.stdout
    )


def test_run_module_under_confine_as_main(tmp_path: Path) -> None:
    (tmp_path / "job_c3.py").write_text(
        "import sys\nif __name__ == '__main__':\n    hooked = any(type(f).__name__ == '_PostImportFinder' for f in sys.meta_path)\n    print('main', sys.argv[1:], hooked)\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "chronos.confine", "job_c3", "--flag", "x"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "main ['--flag', 'x'] True"


def test_torch_cap_is_queued_for_cuda_initialisation(monkeypatch: pytest.MonkeyPatch) -> None:
    """The torch hook must not initialise CUDA at import: it defers to torch.cuda._lazy_call.
    (Real torch on a GPU is checked in tests/gpu.)"""
    calls: list[tuple[float, int]] = []
    queued: list[object] = []

    class Cuda:
        def device_count(self) -> int:
            return 2

        def set_per_process_memory_fraction(self, fraction: float, device: int) -> None:
            calls.append((fraction, device))

        def _lazy_call(self, fn: object) -> None:
            queued.append(fn)

    torch = ModuleType("torch")
    torch.cuda = Cuda()  # type: ignore[attr-defined]
    monkeypatch.setenv("CHRONOS_MEMORY_FRACTION", "0.3")
    confine.cap_torch(torch)
    assert calls == [] and len(queued) == 1
    queued[0]()  # type: ignore[operator]
    assert calls == [(0.3, 0), (0.3, 1)]
    monkeypatch.setenv("CHRONOS_MEMORY_FRACTION", "1")
    confine.cap_torch(torch)
    assert len(queued) == 1  # whole devices: no cap
