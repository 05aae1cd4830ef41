"""Directory archives for moving files to a remote kernel, safe on both ends.

`pack` makes a gzip'd tar of a directory (hidden files and folders left out, size capped).
`unpack` extracts one into a destination and refuses anything that could land outside it:
absolute names, ``..`` components, links of any kind, devices and FIFOs; and it refuses archives
whose contents add up to more than the cap (a decompression bomb) before writing anything.
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from cumulus_jupyter.errors import InvalidArgument

DEFAULT_MAX_BYTES = 100 * 2**20


@dataclass(frozen=True)
class Summary:
    files: int
    bytes: int

    def __str__(self) -> str:
        return f"{self.files} file{'s' if self.files != 1 else ''} ({self.bytes / 2**20:.1f} MiB)"


def _visible(path: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def pack(directory: Path | str, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[bytes, Summary]:
    """The directory's visible regular files as a .tar.gz; `InvalidArgument` over the cap."""
    root = Path(directory).resolve()
    if not root.is_dir():
        raise InvalidArgument(f"Cannot sync {root}: not a directory")
    files = sorted(
        p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and _visible(p, root)
    )
    total = sum(p.stat().st_size for p in files)
    if total > max_bytes:
        raise InvalidArgument(
            f"{root} holds {total / 2**20:.1f} MiB to sync; the cap is {max_bytes / 2**20:.0f} MiB"
        )
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in files:
            tar.add(path, arcname=path.relative_to(root).as_posix(), recursive=False)
    return buffer.getvalue(), Summary(len(files), total)


def _check_member(member: tarfile.TarInfo) -> None:
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts or not member.name.strip():
        raise InvalidArgument(f"Refused archive: {member.name!r} would land outside the target")
    if not (member.isfile() or member.isdir()):
        raise InvalidArgument(f"Refused archive: {member.name!r} is a link or special file")


def unpack(data: bytes, destination: Path | str, max_bytes: int = DEFAULT_MAX_BYTES) -> Summary:
    """Extract into ``destination`` (created if needed); checks every member first, so a
    refused archive writes nothing."""
    target = Path(destination).resolve()
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member)
            total = sum(m.size for m in members if m.isfile())
            if total > max_bytes:
                raise InvalidArgument(
                    f"Refused archive: {total / 2**20:.1f} MiB unpacked, over the "
                    f"{max_bytes / 2**20:.0f} MiB cap"
                )
            target.mkdir(parents=True, exist_ok=True)
            # the standard library's "data" filter checks the same things again as it writes
            tar.extractall(target, members=members, filter="data")
    except tarfile.TarError as exc:
        raise InvalidArgument(f"Refused archive: {exc}") from exc
    files = [m for m in members if m.isfile()]
    return Summary(len(files), sum(m.size for m in files))
