"""Build the ``cumulus-job`` image with no registry: ``python -m gateway.container.build``.

1. **Base**: a Debian root file system from ``debootstrap`` (minbase + Python), imported with
   ``docker import`` as ``cumulus-job-base:<suite>-<hash>``; skipped when that image exists.
2. **Wheelhouse**: this project's wheel and every wheel the job extra needs, fetched on the host
   for the image's Python (``pip download --only-binary``, so no compiler runs in the image);
   skipped when the project's sources and pins have not changed since the last build.
3. **Image**: ``docker build`` of ``Dockerfile`` on that base (the engine's layer cache makes a
   rebuild with nothing changed take seconds).

Needs root for debootstrap, and a Docker engine (``DOCKER_HOST`` or ``--docker-url``).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from platformdirs import user_cache_dir

from cumulus_jupyter.errors import CumulusError, Unavailable
from gateway.runtimes.docker import engine

if TYPE_CHECKING:
    import docker

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent.parent
DEFAULT_TAG = "cumulus-job:latest"
SUITE = "bookworm"  # Python 3.11, as the project's wheels are built for
IMAGE_PYTHON = "3.11"
PACKAGES = ("python3", "python3-venv", "ca-certificates")
MIRROR = "http://deb.debian.org/debian"
GLIBC = (2, 36)  # bookworm's: the newest manylinux tag the image can load


def log(message: str) -> None:
    print(f"cumulus-job: {message}", flush=True)


def digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:12]


def sources() -> Iterator[Path]:
    yield PROJECT / "pyproject.toml"
    for package in ("chronos", "cumulus_jupyter", "gateway"):
        yield from sorted((PROJECT / package).rglob("*.py"))


def has_image(client: docker.DockerClient, tag: str) -> bool:
    import docker

    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


def base_image(client: docker.DockerClient, suite: str, mirror: str, cache: Path) -> str:
    """The base image's tag, after making it when it is not on the engine yet."""
    tag = f"cumulus-job-base:{suite}-{digest(suite, mirror, *PACKAGES)}"
    if has_image(client, tag):
        log(f"base {tag}: present")
        return tag
    if shutil.which("debootstrap") is None:
        raise Unavailable("debootstrap is not installed (apt-get install debootstrap)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=cache, prefix="rootfs-") as tmp:
        root = Path(tmp) / "root"
        log(f"base {tag}: debootstrap {suite} from {mirror} (about a minute)")
        run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", suite,
             str(root), mirror])  # fmt: skip
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (root / junk).glob("*"):
                if entry.is_file():
                    entry.unlink()
        archive = Path(tmp) / "rootfs.tar"
        run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(archive), "."])
        repository, _, version = tag.partition(":")
        client.api.import_image_from_file(str(archive), repository=repository, tag=version)
    log(f"base {tag}: imported in {time.monotonic() - started:.0f} s")
    return tag


def manylinux_platforms() -> list[str]:
    tags = ["manylinux1_x86_64", "manylinux2010_x86_64", "manylinux2014_x86_64", "linux_x86_64"]
    tags += [f"manylinux_2_{minor}_x86_64" for minor in range(5, GLIBC[1] + 1)]
    return tags


def wheelhouse(context: Path, pip: Sequence[str]) -> None:
    """Fill ``context/wheels`` unless the sources it was made from are unchanged."""
    key = digest(*(p.read_bytes() for p in sources()))
    stamp = context / "wheels.key"
    wheels = context / "wheels"
    if stamp.exists() and stamp.read_text() == key and any(wheels.glob("*.whl")):
        log("wheelhouse: unchanged")
        return
    started = time.monotonic()
    shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir(parents=True)
    log("wheelhouse: building the project's wheel")
    run([*pip, "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(PROJECT)])
    project = next(wheels.glob("cumulus_jupyter-*.whl"))
    log(f"wheelhouse: fetching the job's dependencies for Python {IMAGE_PYTHON}")
    platforms = [arg for tag in manylinux_platforms() for arg in ("--platform", tag)]
    run([*pip, "download", "--quiet", "--only-binary=:all:", "--dest", str(wheels),
         "--python-version", IMAGE_PYTHON, "--implementation", "cp", *platforms,
         f"cumulus-jupyter[job] @ {project.as_uri()}"])  # fmt: skip
    stamp.write_text(key)
    count = len(list(wheels.glob("*.whl")))
    log(f"wheelhouse: {count} wheels in {time.monotonic() - started:.0f} s")


def build_image(client: docker.DockerClient, context: Path, base: str, tag: str) -> None:
    import docker

    shutil.copy2(HERE / "Dockerfile", context / "Dockerfile")
    (context / ".dockerignore").write_text("wheels.key\n")
    started = time.monotonic()
    log(f"image {tag}: docker build")
    try:
        for chunk in client.api.build(
            path=str(context), tag=tag, buildargs={"BASE": base}, network_mode="host",
            rm=True, forcerm=True, decode=True,
        ):  # fmt: skip
            if "error" in chunk:
                raise Unavailable(f"docker build failed: {chunk['error'].strip()}")
            line = str(chunk.get("stream", "")).strip()
            if line.startswith("Step ") or line.startswith(" ---> Using cache"):
                log(f"  {line}")
    except docker.errors.APIError as exc:
        raise Unavailable(f"docker build failed: {exc.explanation}") from exc
    log(f"image {tag}: built in {time.monotonic() - started:.1f} s")


def run(argv: Sequence[str]) -> None:
    try:
        subprocess.run(list(argv), check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as exc:
        tail = "\n".join((exc.stderr or exc.stdout or "").strip().splitlines()[-15:])
        raise Unavailable(f"{' '.join(argv[:3])} failed (exit {exc.returncode}):\n{tail}") from exc


def build(tag: str = DEFAULT_TAG, docker_url: str = "", suite: str = SUITE,
          mirror: str = MIRROR, cache: Path | None = None) -> str:  # fmt: skip
    """Build (or bring up to date) the job image; its tag."""
    cache = cache or Path(user_cache_dir("cumulus-jupyter")) / "job-image"
    context = cache / "context"
    context.mkdir(parents=True, exist_ok=True)
    client = engine(docker_url)
    base = base_image(client, suite, mirror, cache)
    wheelhouse(context, [sys.executable, "-m", "pip"])
    build_image(client, context, base, tag)
    return tag


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.container.build",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--tag", default=DEFAULT_TAG, help="image tag (default %(default)s)")
    parser.add_argument("--docker-url", default="", help="Docker engine (default DOCKER_HOST)")
    parser.add_argument("--suite", default=SUITE, help="Debian suite (default %(default)s)")
    parser.add_argument("--mirror", default=MIRROR, help="Debian mirror")
    parser.add_argument("--cache", type=Path, help="cache directory (default: user cache)")
    args = parser.parse_args(argv)
    try:
        build(args.tag, args.docker_url, args.suite, args.mirror, args.cache)
    except CumulusError as exc:
        print(f"cumulus-job: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
