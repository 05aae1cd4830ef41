"""Checkpoints in two tiers, for code running in a partition (a remote kernel or a job).

``save(name, obj)`` writes ``obj`` to **L1**, the GPU host's disk (``CUMULUS_CHECKPOINT_DIR``,
default ``~/.cache/cumulus/checkpoints``), then copies it in the background to **L2**, any
fsspec URL in ``CUMULUS_CHECKPOINT_URL`` (``s3://bucket/prefix``, ``file:///shared/…``; options
such as an S3 ``endpoint_url`` as JSON in ``CUMULUS_CHECKPOINT_OPTIONS``). ``load(name)`` reads
from L1 when the checkpoint is there, else from L2 (and keeps an L1 copy).

Both are per owner. In a remote kernel the gateway sets ``CUMULUS_CHECKPOINT_DIR`` to the
owner's own L1 directory (the only one its sandbox mounts) and gives no L2 credentials: L2 is
reached through the gateway (``CUMULUS_CHECKPOINT_GATEWAY`` with the owner's
``CUMULUS_CHECKPOINT_TOKEN``), which keeps each owner under a prefix of its own
(`gateway.checkpoints`); ``CUMULUS_CHECKPOINT_URL`` then names that prefix, for messages.

Objects are stored through their own savers when they have one: PyTorch modules and state dicts
(``torch.save`` of the state dict), NumPy arrays (``.npy``), XGBoost and LightGBM models
(``save_model``); anything else, scikit-learn models included, with cloudpickle. A dict of
names to objects (what ``%cumulus checkpoint a b`` saves) stores each entry the same way.

Every checkpoint is a new version ``NAME/vN``: its files and a manifest with their SHA-256 are
written to a temporary directory that is renamed into place only when complete, and ``latest``
is switched after that, so a partial write (a crash, a full disk) never replaces a good
checkpoint. On L2 the manifest is uploaded last. ``load`` verifies every hash and refuses a
corrupted version with `CheckpointCorrupted`, naming the versions still available.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from cumulus_jupyter.errors import CumulusError, InvalidArgument, NotFound, Unavailable
from cumulus_jupyter.protocol import env

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MANIFEST = "manifest.json"


class CheckpointCorrupted(CumulusError):
    """A checkpoint's bytes do not match the hashes in its manifest."""

    status = 422


def l1_root() -> Path:
    return Path(
        os.environ.get(env.CHECKPOINT_DIR) or Path.home() / ".cache" / "cumulus" / "checkpoints"
    ).expanduser()


def l2_url() -> str | None:
    return os.environ.get(env.CHECKPOINT_URL) or None


def _checked(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise InvalidArgument(
            f"Invalid checkpoint name: {name!r}. Use letters, digits, '.', '_', '-' (max 128)"
        )
    return name


# ---------------------------------------------------------------- encoding


def _encode(obj: Any) -> tuple[str, bytes]:
    """(format, bytes) for one object, by the saver its library provides."""
    kind = type(obj).__module__.split(".")[0]
    if kind == "torch":
        import torch

        state = obj.state_dict() if hasattr(obj, "state_dict") else obj
        buffer = io.BytesIO()
        torch.save(state, buffer)
        return "torch", buffer.getvalue()
    if kind == "numpy" and type(obj).__name__ == "ndarray" and obj.dtype != object:
        import numpy as np

        buffer = io.BytesIO()
        np.save(buffer, obj, allow_pickle=False)
        return "numpy", buffer.getvalue()
    if kind in ("xgboost", "lightgbm") and hasattr(obj, "save_model"):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.json" if kind == "xgboost" else "model.txt")
            obj.save_model(path)
            return kind, Path(path).read_bytes()
    if isinstance(obj, dict) and obj and all(_is_torch_tensor(v) for v in obj.values()):
        import torch

        buffer = io.BytesIO()
        torch.save(obj, buffer)
        return "torch", buffer.getvalue()
    import cloudpickle

    return "cloudpickle", cloudpickle.dumps(obj, protocol=5)


def _is_torch_tensor(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and type(value).__name__ == "Tensor"


def _decode(fmt: str, data: bytes) -> Any:
    if fmt == "torch":
        import torch

        return torch.load(io.BytesIO(data), weights_only=True)
    if fmt == "numpy":
        import numpy as np

        return np.load(io.BytesIO(data), allow_pickle=False)
    if fmt in ("xgboost", "lightgbm"):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.json" if fmt == "xgboost" else "model.txt")
            Path(path).write_bytes(data)
            if fmt == "xgboost":
                import xgboost

                booster = xgboost.Booster()
                booster.load_model(path)
                return booster
            import lightgbm

            return lightgbm.Booster(model_file=path)
    import cloudpickle

    return cloudpickle.loads(data)


# ---------------------------------------------------------------- L1


def _versions(directory: Path) -> list[int]:
    found = [int(p.name[1:]) for p in directory.glob("v*") if p.name[1:].isdigit()]
    return sorted(found)


def save(name: str, obj: Any, *, variables: bool = False, wait_l2: bool = False) -> dict[str, Any]:
    """Write ``obj`` as a new version of checkpoint ``name`` on L1, then copy it to L2 in the
    background (``wait_l2``: before returning). ``variables``: ``obj`` is a dict of variable
    names to values, each stored by its own saver. Returns the manifest."""
    _checked(name)
    entries = obj if variables else {"value": obj}
    files = {key: _encode(value) for key, value in entries.items()}
    directory = l1_root() / name
    try:
        directory.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=".partial-", dir=directory))
        try:
            manifest: dict[str, Any] = {
                "name": name, "created_at": time.time(), "variables": variables, "files": {},
            }  # fmt: skip
            for index, (key, (fmt, data)) in enumerate(files.items()):
                filename = f"{index}.{fmt}"
                (building / filename).write_bytes(data)
                manifest["files"][key] = {
                    "file": filename, "format": fmt, "bytes": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                }  # fmt: skip
            with _VERSIONS:  # one new version at a time in this process
                version = (_versions(directory) or [0])[-1] + 1
                manifest["version"] = version
                with (building / MANIFEST).open("w") as out:
                    json.dump(manifest, out)
                    out.flush()
                    os.fsync(out.fileno())
                building.rename(directory / f"v{version}")  # complete, or not there at all
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        _point_latest(directory, version)
    except OSError as exc:
        raise Unavailable(
            f"Cannot write checkpoint {name} to {directory}: {exc.strerror or exc}; "
            "the previous checkpoint is unchanged"
        ) from exc
    url = l2_url()
    if url:
        copy = threading.Thread(
            target=_to_l2_logged, args=(name, version, url), name=f"cumulus-l2-{name}", daemon=True
        )
        copy.start()
        if not _COPIES and not _EXIT_WAIT:
            atexit.register(wait_for_copies, EXIT_WAIT_S)  # a kernel shut down lets them end
            _EXIT_WAIT.append(True)
        _COPIES.append(copy)
        if wait_l2:
            copy.join()
            if _L2_ERRORS.get((name, version)):
                raise Unavailable(_L2_ERRORS[(name, version)])
    return manifest


def _point_latest(directory: Path, version: int) -> None:
    pointer = directory / "latest"
    temporary = directory / f".latest-{os.getpid()}-{threading.get_ident()}"
    temporary.write_text(str(version))
    os.replace(temporary, pointer)


_VERSIONS = threading.Lock()
_EXIT_WAIT: list[bool] = []
EXIT_WAIT_S = 120.0  # how long a kernel that is shutting down waits for its copies to L2
_COPIES: list[threading.Thread] = []
_L2_ERRORS: dict[tuple[str, int], str] = {}


def wait_for_copies(timeout: float | None = None) -> None:
    """Block until every background copy to L2 has finished (or failed)."""
    for copy in list(_COPIES):
        copy.join(timeout)
        if not copy.is_alive():
            _COPIES.remove(copy)


# ---------------------------------------------------------------- L2


class _FsspecL2:
    """L2 as an fsspec URL this process holds the credentials of (a job on a host of its own,
    a script): ``NAME/vN/FILE`` under it."""

    def __init__(self, url: str) -> None:
        import fsspec

        raw = os.environ.get(env.CHECKPOINT_OPTIONS)
        try:
            options = json.loads(raw) if raw else {}
        except json.JSONDecodeError as exc:
            raise InvalidArgument(f"CUMULUS_CHECKPOINT_OPTIONS is not JSON: {exc}") from exc
        self.fs, root = fsspec.core.url_to_fs(url, **options)
        self.root = str(root).rstrip("/")

    def versions(self, name: str) -> list[int]:
        fs, base = self.fs, f"{self.root}/{name}"
        listed = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(base)]
        return sorted(
            int(v[1:]) for v in listed if v[1:].isdigit() and fs.exists(f"{base}/{v}/{MANIFEST}")
        )

    def put(self, name: str, version: int, file: str, data: bytes) -> None:
        target = f"{self.root}/{name}/v{version}"
        self.fs.makedirs(target, exist_ok=True)  # a directory on a file system; nothing on S3
        self.fs.pipe_file(f"{target}/{file}", data)

    def get(self, name: str, version: int, file: str) -> bytes:
        return bytes(self.fs.cat_file(f"{self.root}/{name}/v{version}/{file}"))


class _GatewayL2:
    """L2 through the gateway (`gateway.checkpoints`), what a remote kernel has: the
    gateway holds the credentials, and this kernel's token reaches its owner's prefix only."""

    def __init__(self, endpoint: str, token: str) -> None:
        import httpx

        self.client = httpx.Client(
            base_url=endpoint.rstrip("/") + "/", timeout=300,
            verify=_verify(),
            headers={"Authorization": f"checkpoint {token}"},
        )  # fmt: skip

    def _call(self, method: str, path: str, content: bytes | None = None) -> Any:
        response = self.client.request(method, path, content=content)
        if response.status_code == 404:
            raise FileNotFoundError(path)
        if response.status_code >= 400:
            try:
                message = response.json().get("message", response.text)
            except ValueError:
                message = response.text
            raise OSError(f"the gateway answered {response.status_code}: {message}")
        return response

    def versions(self, name: str) -> list[int]:
        return list(self._call("GET", name).json()["versions"])

    def put(self, name: str, version: int, file: str, data: bytes) -> None:
        self._call("PUT", f"{name}/{version}/{file}", data)

    def get(self, name: str, version: int, file: str) -> bytes:
        return bytes(self._call("GET", f"{name}/{version}/{file}").content)


def _verify() -> Any:
    """What an https:// gateway is checked against: its own certificate, pinned (handed to
    this kernel by the gateway), else the CA bundle setting or the system's."""
    pinned = os.environ.get(env.CHECKPOINT_CERT)
    if pinned:
        from cumulus_jupyter.tls import pinned_context

        return pinned_context(pinned)
    return os.environ.get(env.CA_BUNDLE) or True


_GATEWAYS: dict[tuple[str, str], _GatewayL2] = {}  # one connection pool per endpoint


def _l2() -> _FsspecL2 | _GatewayL2:
    gateway, token = os.environ.get(env.CHECKPOINT_GATEWAY), os.environ.get(env.CHECKPOINT_TOKEN)
    if gateway and token:
        if (gateway, token) not in _GATEWAYS:
            _GATEWAYS[(gateway, token)] = _GatewayL2(gateway, token)
        return _GATEWAYS[(gateway, token)]
    url = l2_url()
    assert url is not None
    return _FsspecL2(url)


def _to_l2_logged(name: str, version: int, url: str) -> None:
    try:
        _to_l2(name, version)
    except Exception as exc:
        _L2_ERRORS[(name, version)] = (
            f"Copying checkpoint {name} v{version} to {url} failed: {exc}; it is on L1 only"
        )


def _to_l2(name: str, version: int) -> None:
    store = _l2()
    source = l1_root() / name / f"v{version}"
    manifest = json.loads((source / MANIFEST).read_text())
    for entry in manifest["files"].values():
        store.put(name, version, entry["file"], (source / entry["file"]).read_bytes())
    store.put(name, version, MANIFEST, (source / MANIFEST).read_bytes())  # last: complete


def _from_l2(name: str, version: int | None) -> tuple[Path, dict[str, Any]]:
    url = l2_url()
    if not url:
        raise NotFound(f"No checkpoint {name} on this host, and no CUMULUS_CHECKPOINT_URL (L2)")
    try:
        store = _l2()
        if version is None:
            complete = store.versions(name)
            if not complete:
                raise FileNotFoundError(name)
            version = complete[-1]
        manifest = json.loads(store.get(name, version, MANIFEST))
        directory = l1_root() / name
        directory.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=".partial-", dir=directory))
        for entry in manifest["files"].values():
            (building / entry["file"]).write_bytes(store.get(name, version, entry["file"]))
        (building / MANIFEST).write_text(json.dumps(manifest))
    except FileNotFoundError as exc:
        raise NotFound(f"No checkpoint {name} on this host or in {url}") from exc
    except CumulusError:
        raise
    except Exception as exc:
        raise Unavailable(f"Cannot read checkpoint {name} from {url}: {exc}") from exc
    final = directory / f"v{version}"
    if final.exists():
        shutil.rmtree(building, ignore_errors=True)
    else:
        building.rename(final)
    return final, manifest


# ---------------------------------------------------------------- load


def load(name: str, version: int | None = None) -> Any:
    """The object saved as ``name`` (its latest version unless ``version``), from L1 if it is
    there, else from L2; `CheckpointCorrupted` if its bytes do not match its hashes."""
    _checked(name)
    directory = l1_root() / name
    source: Path | None = None
    if version is None:
        with contextlib.suppress(OSError, ValueError):
            version = int((directory / "latest").read_text())
    if version is not None and (directory / f"v{version}" / MANIFEST).exists():
        source = directory / f"v{version}"
        manifest = json.loads((source / MANIFEST).read_text())
    else:
        source, manifest = _from_l2(name, version)
    values = {}
    for key, entry in manifest["files"].items():
        data = (source / entry["file"]).read_bytes()
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            others = [v for v in _versions(directory) if v != manifest.get("version")]
            hint = f"; earlier versions: {', '.join(map(str, others))}" if others else ""
            raise CheckpointCorrupted(
                f"Checkpoint {name} v{manifest.get('version')} is corrupted: {entry['file']} "
                f"does not match its SHA-256{hint} (load({name!r}, version=N))"
            )
        values[key] = _decode(entry["format"], data)
    return values if manifest.get("variables") else values["value"]


def versions(name: str) -> list[int]:
    """The versions of ``name`` on this host's disk (L1)."""
    return _versions(l1_root() / _checked(name))


# ---------------------------------------------------------------- in a kernel's namespace


def _user_names(namespace: dict[str, Any]) -> list[str]:
    import types

    skip = (types.ModuleType, types.FunctionType, type)
    return [
        n for n, v in namespace.items()
        if not n.startswith("_") and n not in ("In", "Out", "exit", "quit", "get_ipython")
        and not isinstance(v, skip)
    ]  # fmt: skip


def save_variables(
    name: str, names: list[str] | None, namespace: dict[str, Any], wait_l2: bool = False
) -> str:
    """Checkpoint ``names`` (default: every user variable) of ``namespace`` as ``name``; one
    line saying what was saved (what ``%cumulus checkpoint`` prints)."""
    chosen = names or _user_names(namespace)
    missing = [n for n in chosen if n not in namespace]
    if missing:
        raise InvalidArgument(f"Nothing named {', '.join(missing)} in the remote kernel")
    if not chosen:
        raise InvalidArgument("No variables to checkpoint")
    manifest = save(name, {n: namespace[n] for n in chosen}, variables=True, wait_l2=wait_l2)
    size = sum(f["bytes"] for f in manifest["files"].values())
    where = (" (on L2 too)" if wait_l2 else " (copying to L2)") if l2_url() else ""
    return (f"checkpoint {name} v{manifest['version']}: {', '.join(chosen)} "
            f"({size / 2**20:.1f} MiB){where}")  # fmt: skip


def restore(name: str, namespace: dict[str, Any]) -> str:
    """Load checkpoint ``name`` (saved by `save_variables`) into ``namespace``; one line."""
    on_l1 = (l1_root() / _checked(name) / "latest").exists()
    values = load(name)
    if not isinstance(values, dict):
        values = {name: values}
    namespace.update(values)
    return f"restored {', '.join(values)} from checkpoint {name} ({'L1' if on_l1 else 'L2'})"


_TIMERS: dict[str, threading.Timer] = {}


def before_expiry(
    name: str, names: list[str] | None, namespace: dict[str, Any], expires_at: float,
    lead_s: float = 60.0,
) -> str:  # fmt: skip
    """Checkpoint ``names`` of ``namespace`` as ``name`` ``lead_s`` before ``expires_at`` (the
    partition's end), once, from a timer thread; one line saying when."""
    delay = max(0.0, expires_at - lead_s - time.time())

    def fire() -> None:
        try:
            line = save_variables(name, names, namespace, wait_l2=True)  # before the end
            print(f"Cumulus: before expiry, {line}", flush=True)
        except Exception as exc:
            print(f"Cumulus: checkpoint before expiry failed: {exc}", flush=True)

    old = _TIMERS.pop(name, None)
    if old is not None:
        old.cancel()
    timer = threading.Timer(delay, fire)
    timer.daemon = True
    timer.start()
    _TIMERS[name] = timer
    return f"checkpoint {name} will be saved {lead_s:.0f} s before expiry (in {delay:.0f} s)"
