"""Checkpoints, per owner: where each owner's L1 lies on the GPU host, and L2 as the gateway
keeps it, one prefix per owner (`CheckpointStore`).

A kernel never holds the L2 credentials (``CUMULUS_CHECKPOINT_OPTIONS``: an S3 key would let
any kernel read every owner's prefix). It gets instead the gateway's checkpoint endpoint
(``/api/cumulus/checkpoints``) and a token that names its owner, an HMAC of the owner under a
key only the gateway reads (``checkpoint.key`` beside the state file, mode 0600, so kernels
adopted after a restart keep theirs). Through it the kernel's agent
(`cumulus_jupyter.agent.checkpoint`) lists, writes and reads only ``<L2>/<owner>/...``; a
user's own token reaches the same prefix through the API. Names are checked here as in the
agent, and a version whose manifest is there is never written again.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cumulus_jupyter.errors import Conflict, InvalidArgument, NotFound, Unavailable
from cumulus_jupyter.protocol import env as names

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
FILE = re.compile(r"manifest\.json|[0-9]{1,6}\.[a-z0-9]{1,16}")
MANIFEST = "manifest.json"
KEY_FILE = "checkpoint.key"
TOKEN_SCHEME = "checkpoint"  # Authorization: checkpoint <token>
CHUNK = 8 * 2**20  # bytes read from L2 at a time
_SAFE = re.compile(r"[A-Za-z0-9_-]")


def owner_dir(owner: str) -> str:
    """The one path component that stands for ``owner``: its letters, digits, ``_`` and ``-``
    as they are, every other byte as ``%XX`` (so ``.``, ``..`` and ``/`` cannot be one)."""
    return (
        "".join(
            c if _SAFE.fullmatch(c) else "".join(f"%{b:02X}" for b in c.encode()) for c in owner
        )
        or "%00"
    )


def checked_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise InvalidArgument(
            f"Invalid checkpoint name: {name[:140]!r}. Use letters, digits, '.', '_', '-' (max 128)"
        )
    return name


def checked_file(file: str) -> str:
    if not FILE.fullmatch(file):
        raise InvalidArgument(f"Invalid checkpoint file: {file[:40]!r}")
    return file


def l1_dir(base: Path, owner: str) -> Path:
    """``owner``'s L1 directory under ``base`` (``CUMULUS_CHECKPOINT_DIR`` or the sandbox's)."""
    return base / owner_dir(owner)


@dataclass
class CheckpointStore:
    """L2 (``url``, fsspec, with the gateway's ``options``) cut into one prefix per owner, and
    the key that signs kernels' checkpoint tokens. ``url`` None: no L2 on this gateway."""

    url: str | None
    options: dict[str, Any]
    key: bytes

    @classmethod
    def from_environment(cls, state_dir: Path | None) -> CheckpointStore:
        """L2 from ``CUMULUS_CHECKPOINT_URL`` / ``_OPTIONS``; the key from ``state_dir``
        (made there, 0600, the first time; in memory only when it cannot be written)."""
        raw = os.environ.get(names.CHECKPOINT_OPTIONS)
        try:
            options = json.loads(raw) if raw else {}
        except json.JSONDecodeError as exc:
            raise InvalidArgument(f"CUMULUS_CHECKPOINT_OPTIONS is not JSON: {exc}") from exc
        url = (os.environ.get(names.CHECKPOINT_URL) or "").rstrip("/") or None
        return cls(url, options, _key(state_dir))

    # -- tokens a kernel of an owner gets

    def token(self, owner: str) -> str:
        """The checkpoint token of ``owner``'s kernels."""
        mac = hmac.new(self.key, owner.encode(), hashlib.sha256).hexdigest()
        return f"{owner.encode().hex()}.{mac}"

    def owner_of(self, token: str) -> str | None:
        """The owner a checkpoint token names, or None when it is not one of ours."""
        encoded, _, _ = token.strip().partition(".")
        try:
            owner = bytes.fromhex(encoded).decode()
        except ValueError:
            return None
        return owner if hmac.compare_digest(self.token(owner), token.strip()) else None

    def kernel_env(self, owner: str, gateway_url: str, certificate: str = "") -> dict[str, str]:
        """What a kernel of ``owner`` is told about L2: where (for messages: the owner's
        prefix), through what (the gateway; ``certificate``, its own when it serves HTTPS, is
        what the kernel pins), with which token; never the credentials."""
        if self.url is None:
            return {}
        told = {
            names.CHECKPOINT_URL: self.prefix(owner),
            names.CHECKPOINT_GATEWAY: f"{gateway_url.rstrip('/')}/api/cumulus/checkpoints",
            names.CHECKPOINT_TOKEN: self.token(owner),
        }
        return told | ({names.CHECKPOINT_CERT: certificate} if certificate else {})

    # -- L2, one owner at a time (blocking: handlers call these in a thread)

    def prefix(self, owner: str) -> str:
        return f"{self._root_url()}/{owner_dir(owner)}"

    def _root_url(self) -> str:
        if self.url is None:
            raise NotFound("This gateway keeps no checkpoints off the GPU host (no L2 is set)")
        return self.url

    def _fs(self, owner: str) -> tuple[Any, str]:
        import fsspec

        url = self._root_url()
        try:
            fs, root = fsspec.core.url_to_fs(url, **self.options)
        except Exception as exc:
            raise Unavailable(f"Cannot reach the checkpoints' L2 ({url}): {exc}") from exc
        return fs, f"{str(root).rstrip('/')}/{owner_dir(owner)}"

    def names(self, owner: str) -> list[dict[str, Any]]:
        """``owner``'s checkpoints on L2: each name with its complete versions."""
        fs, root = self._fs(owner)
        with _l2(self.url):
            found = sorted(_last(p) for p in _ls(fs, root))
        listed = [(n, self.versions(owner, n)) for n in found if NAME.fullmatch(n)]
        return [{"name": n, "versions": v} for n, v in listed if v]

    def versions(self, owner: str, name: str) -> list[int]:
        """The complete versions (their manifest is there) of ``owner``'s ``name``."""
        fs, root = self._fs(owner)
        base = f"{root}/{checked_name(name)}"
        with _l2(self.url):
            listed = [_last(p) for p in _ls(fs, base)]
            return sorted(
                int(v[1:]) for v in listed
                if v[1:].isdigit() and fs.exists(f"{base}/{v}/{MANIFEST}")
            )  # fmt: skip

    def read(self, owner: str, name: str, version: int, file: str) -> bytes:
        source = self.open_read(owner, name, version, file)
        try:
            return b"".join(iter(lambda: self.read_chunk(source), b""))
        finally:
            self.close(source)

    def write(self, owner: str, name: str, version: int, file: str, data: bytes) -> None:
        """One file of a version; `Conflict` once that version is complete (immutable)."""
        out = self.open_write(owner, name, version, file)
        self.write_chunk(out, data)
        self.close(out)

    # the handlers stream files through these, a chunk at a time (a checkpoint may be GBs)

    def open_read(self, owner: str, name: str, version: int, file: str) -> Any:
        fs, root = self._fs(owner)
        path = f"{root}/{checked_name(name)}/v{version}/{checked_file(file)}"
        with _l2(self.url):
            try:
                return fs.open(path, "rb")
            except FileNotFoundError:
                raise NotFound(f"No checkpoint {name} v{version} ({file}) on L2") from None

    def read_chunk(self, source: Any) -> bytes:
        with _l2(self.url):
            return bytes(source.read(CHUNK))

    def open_write(self, owner: str, name: str, version: int, file: str) -> Any:
        """Where one file of a version not yet complete is written (`Conflict` once it is)."""
        fs, root = self._fs(owner)
        target = f"{root}/{checked_name(name)}/v{version}"
        checked_file(file)
        with _l2(self.url):
            if fs.exists(f"{target}/{MANIFEST}"):
                raise Conflict(f"Checkpoint {name} v{version} is complete; it is never rewritten")
            fs.makedirs(target, exist_ok=True)  # a directory on a file system; nothing on S3
            return fs.open(f"{target}/{file}", "wb")

    def write_chunk(self, out: Any, data: bytes) -> None:
        with _l2(self.url):
            out.write(data)

    def close(self, handle: Any, keep: bool = True) -> None:
        """Close a file being read or written; ``keep`` False: drop what was written (an
        upload cut off), where the file system can."""
        with _l2(self.url):
            discard = getattr(handle, "discard", None)
            if not keep and callable(discard):
                discard()
            else:
                handle.close()


def _ls(fs: Any, path: str) -> list[str]:
    with contextlib.suppress(FileNotFoundError):
        fs.invalidate_cache(path)
        return [str(p) for p in fs.ls(path, detail=False)]
    return []


def _last(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


@contextlib.contextmanager
def _l2(url: str | None) -> Any:
    """L2's own failures (a network, a bucket) as `Unavailable`; ours pass through."""
    try:
        yield
    except (InvalidArgument, NotFound, Conflict):
        raise
    except Exception as exc:
        raise Unavailable(f"The checkpoints' L2 ({url}) failed: {exc}") from exc


def _key(state_dir: Path | None) -> bytes:
    if state_dir is None:
        return secrets.token_bytes(32)
    path = state_dir / KEY_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError):
        key = secrets.token_bytes(32)
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another gateway process made it first: use theirs
        return bytes.fromhex(path.read_text().strip())
    except OSError:
        return key
    with os.fdopen(fd, "w") as out:
        out.write(key.hex())
    return key
