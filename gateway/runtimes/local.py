"""The embedded default: each kernel is a direct subprocess of the gateway host.

Kernels start in their own session (process group), without ``JPY_PARENT_PID``, so they
outlive a gateway crash and a restarted gateway can adopt them; they are identified by PID and
start time so that a recycled PID is never mistaken for a kernel.

With ``--LocalRuntime.sandbox=bwrap`` (`gateway.sandbox`), each kernel runs under bubblewrap as
an unprivileged uid, in its own directory, from a kernel environment that is not the gateway's
(`gateway.kernelenv`), in a cgroup with ``--LocalRuntime.memory`` and ``.cpus``; a kernel the
cgroup's OOM killer ends is reported as out of memory and not restarted.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import platformdirs
import psutil
from jupyter_client.connect import port_names
from traitlets import Enum, Float, Int, List, Unicode, default

from cumulus_jupyter.errors import InvalidArgument, Unavailable
from cumulus_jupyter.protocol import env as names
from gateway import kernelenv
from gateway import sandbox as sb
from gateway.checkpoints import l1_dir
from gateway.runtimes.base import KernelProcess, Launch, Runtime, Started

_START_TIME_TOLERANCE_S = 0.05


class LocalProcess:
    """A kernel process on this host, whether we started it or adopted it."""

    def __init__(self, proc: psutil.Process, started: float) -> None:
        self._proc = proc
        self.pid = proc.pid
        self.started = started
        self.returncode: int | None = None
        # LocalProvisioner.wait closes these when a Popen has them; ours are not kept
        self.stdin = self.stdout = self.stderr = None

    def poll(self) -> int | None:
        if self.returncode is not None:
            return self.returncode
        try:
            code = self._proc.wait(timeout=0)  # reaps our own child; polls an adopted one
        except psutil.TimeoutExpired:
            if self._proc.status() != psutil.STATUS_ZOMBIE:
                return None
            code = None
        except psutil.NoSuchProcess:
            code = None
        self.returncode = int(code) if code is not None else -1
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            code = self._proc.wait(timeout=timeout)
        except psutil.NoSuchProcess:
            code = None
        except psutil.TimeoutExpired:
            raise subprocess.TimeoutExpired(str(self.pid), timeout or 0) from None
        self.returncode = int(code) if code is not None else -1
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            self._proc.send_signal(signum)

    def terminate(self) -> None:
        if self.poll() is None:
            self._proc.terminate()

    def kill(self) -> None:
        if self.poll() is None:
            self._proc.kill()

    def info(self) -> dict[str, Any]:
        return {"runtime": "local", "pid": self.pid, "started": self.started}

    def remove(self) -> None:
        """Nothing: an exited process leaves nothing behind."""


class SandboxedProcess(LocalProcess):
    """A kernel under bubblewrap: its cgroup says whether it was killed for memory, and what
    it leaves behind (its directory, its cgroup) goes with `remove`."""

    def __init__(
        self,
        proc: psutil.Process,
        started: float,
        kernel_dir: Path,
        cgroup: sb.Cgroup | None,
        memory: str = "",
    ) -> None:
        super().__init__(proc, started)
        self.kernel_dir = kernel_dir
        self.cgroup = cgroup
        self.memory = memory
        self.ended_outside: str | None = None

    def poll(self) -> int | None:
        code = super().poll()
        cgroup = self.cgroup
        if code is not None and self.ended_outside is None and cgroup and cgroup.oom_kills():
            self.ended_outside = (
                f"out of memory: it went past its limit of {self.memory} "
                "(--LocalRuntime.memory) and was killed"
            )
        return code

    def info(self) -> dict[str, Any]:
        cgroup = [str(d) for d in self.cgroup.dirs] if self.cgroup else []
        return super().info() | {
            "kernel_dir": str(self.kernel_dir), "cgroup": cgroup, "memory": self.memory,
            "cgroup_version": self.cgroup.version if self.cgroup else 0,
        }  # fmt: skip

    def remove(self) -> None:
        self.remove_left(self.kernel_dir, self.cgroup)

    @staticmethod
    def remove_left(kernel_dir: Path, cgroup: sb.Cgroup | None) -> None:
        """What a sandboxed kernel leaves once its process is gone."""
        shutil.rmtree(kernel_dir, ignore_errors=True)
        if cgroup is not None:
            cgroup.remove()


def _default_dir(kind: str) -> str:
    if os.getuid() == 0:
        return f"/var/{'cache' if kind == 'cache' else 'lib'}/cumulus"
    return (
        platformdirs.user_cache_dir("cumulus")
        if kind == "cache"
        else platformdirs.user_data_dir("cumulus")
    )


class LocalRuntime(Runtime):
    """Kernels as processes on the gateway host: no daemon, no image; each under bubblewrap
    unless ``--LocalRuntime.sandbox=none``."""

    name = "local"

    sandbox = Enum(
        ["bwrap", "none"],
        default_value="bwrap",
        config=True,
        help="How kernels are isolated: bwrap (bubblewrap: own uid, mounts, PIDs, cgroup) or "
        "none (a plain subprocess of the gateway, with its uid, files and environment).",
    )
    users = Enum(
        ["dedicated", "os"],
        default_value="dedicated",
        config=True,
        help="Whose uid a sandboxed kernel runs as (when the gateway runs as root): dedicated "
        "(one uid per kernel owner, from uid_base up) or os (the OS account named like the "
        "owner, with its groups; a request from an owner with no account is refused).",
    )
    uid_base = Int(200000, config=True, help="First uid of the dedicated per-owner uids.")
    memory = Unicode(
        "", config=True, help="Host memory per sandboxed kernel (4G, 512M); empty: no limit."
    )
    cpus = Float(0.0, config=True, help="CPUs per sandboxed kernel (1.5: 150%); 0: no limit.")
    kernel_python = Unicode(
        "",
        config=True,
        help="Interpreter sandboxed kernels run (with ipykernel and this project's "
        "dependencies); empty: a virtualenv built once from the gateway's pinned versions.",
    )
    kernel_packages = List(
        Unicode(),
        config=True,
        help="More packages in the built kernel environment, pinned to the gateway's versions "
        "(default: those of a data-science stack that the gateway's environment has).",
    )
    read_only_paths = List(
        Unicode(),
        config=True,
        help="More host paths sandboxed kernels see read-only (default: the local package "
        "indexes and wheel directories pip is configured with, so overlays install as here).",
    )
    sandbox_dir = Unicode(config=True, help="Where kernels' own directories and caches go.")
    kernel_env_dir = Unicode(config=True, help="Where built kernel environments are cached.")

    @default("sandbox_dir")
    def _default_sandbox_dir(self) -> str:
        return os.path.join(_default_dir("lib"), "sandbox")

    @default("kernel_packages")
    def _default_kernel_packages(self) -> list[str]:
        return kernelenv.installed(kernelenv.DATA_STACK)

    @default("read_only_paths")
    def _default_read_only_paths(self) -> list[str]:
        return _pip_local_paths()

    @default("kernel_env_dir")
    def _default_kernel_env_dir(self) -> str:
        return os.path.join(_default_dir("cache"), "kernel-env")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._why_not: str | None = None
        self._cgroups: sb.Cgroups | None = None
        self._env: kernelenv.KernelEnv | None = None
        self._env_lock = threading.Lock()
        self._memory_bytes = sb.parse_bytes(self.memory)
        # an interrupt reaches a sandboxed kernel as a message: a SIGINT to its process group
        # would end bubblewrap's outer process, which does not forward it
        self.signals = self.sandbox == "none"
        self.ipc = self.sandbox == "bwrap"

    def check(self) -> None:
        """Says at start-up why kernels cannot be sandboxed (or run unsandboxed), and starts
        building the kernel environment."""
        if self.sandbox == "none":
            self.log.warning(
                "local runtime: kernels run UNSANDBOXED (--LocalRuntime.sandbox=none): each "
                "has the gateway's uid, files and environment, and can read its state and token"
            )
            return
        self._why_not = sb.probe()
        if self._why_not is None and (self._memory_bytes or self.cpus):
            found = sb.Cgroups.find()
            if isinstance(found, str):
                self._why_not = f"--LocalRuntime.memory/cpus set, but {found}"
            else:
                self._cgroups = found
        if self._why_not is not None:
            raise Unavailable(
                f"kernels cannot be sandboxed: {self._why_not}. Kernels will not start; run "
                "them unsandboxed only with --LocalRuntime.sandbox=none"
            )
        self.log.info(
            "local runtime: kernels sandboxed by bubblewrap (%s uid, memory %s, cpus %s)",
            self.users if os.getuid() == 0 else "the gateway's",
            self.memory or "unlimited", self.cpus or "unlimited",
        )  # fmt: skip
        threading.Thread(target=self._warm, name="kernel-env", daemon=True).start()

    def _warm(self) -> None:
        try:
            self.kernel_env()
        except Exception as exc:  # each launch will raise it again, to its requester
            self.log.warning("local runtime: the kernel environment: %s", exc)

    def kernel_env(self) -> kernelenv.KernelEnv:
        """The environment sandboxed kernels run from, built on first use (thread-safe)."""
        with self._env_lock:
            if self._env is None:
                extra = tuple(self.kernel_packages)
                self._env = kernelenv.prepare(Path(self.kernel_env_dir), extra, self.kernel_python)
            return self._env

    async def launch(self, launch: Launch) -> Started:
        if self.sandbox == "bwrap":
            return await self._launch_sandboxed(launch)
        clean_env = {k: v for k, v in launch.env.items() if k != "JPY_PARENT_PID"}
        owner = launch.env.get(names.KERNEL_USERNAME) or "anonymous"
        checkpoints = self.checkpoint_dir(launch.env, owner)  # names apart, not confined
        clean_env[names.CHECKPOINT_DIR] = str(checkpoints)
        popen = await asyncio.to_thread(
            subprocess.Popen,
            list(launch.argv),
            env=clean_env,
            cwd=launch.cwd or None,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: signals reach the whole kernel
        )
        proc = psutil.Process(popen.pid)
        # psutil reaps the child from now on; stop Popen from trying too
        popen.returncode = 0
        return Started(LocalProcess(proc, proc.create_time()))

    async def _launch_sandboxed(self, launch: Launch) -> Started:
        if self._why_not is not None:
            raise Unavailable(f"kernels cannot be sandboxed here: {self._why_not}")
        env = await asyncio.to_thread(self.kernel_env)
        plan = await asyncio.to_thread(self._plan, launch, env)
        argv, kernel_env, kernel_dir, cgroup = plan
        popen = await asyncio.to_thread(
            subprocess.Popen, argv, env=kernel_env, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        proc = psutil.Process(popen.pid)
        popen.returncode = 0
        return Started(SandboxedProcess(proc, proc.create_time(), kernel_dir, cgroup, self.memory))

    def _plan(
        self, launch: Launch, env: kernelenv.KernelEnv
    ) -> tuple[list[str], dict[str, str], Path, sb.Cgroup | None]:
        """Everything a sandboxed kernel needs made before it starts: its directory (with a
        copy of its connection file), its owner's caches, its cgroup; then its command line."""
        owner = launch.env.get(names.KERNEL_USERNAME) or "anonymous"
        identity = self.identity(owner) if os.getuid() == 0 else None
        kernel_dir = Path(self.sandbox_dir) / "kernels" / launch.kernel_id
        own = _Owner(identity)
        own.mkdir(kernel_dir)
        argv = self._command(list(launch.argv), env, kernel_dir, own)
        kernel_env = self._environment(launch.env, env, kernel_dir, owner)
        key = f"uid-{identity.uid}" if identity else "own"
        overlays = Path(launch.env.get(names.OVERLAYS) or Path(self.sandbox_dir) / "overlays")
        own.mkdir(overlays / key, parents_private=False)
        kernel_env[names.OVERLAYS] = str(overlays / key)
        checkpoints = self.checkpoint_dir(launch.env, owner)
        own.mkdir(checkpoints, parents_private=False)
        kernel_env[names.CHECKPOINT_DIR] = str(checkpoints)
        shared = [str(overlays / key), str(checkpoints)]  # the only L1 its sandbox mounts
        moved = self._data_socket(launch.env, kernel_dir, own)
        cgroup = None
        if self._cgroups is not None:
            cgroup = self._cgroups.create(launch.kernel_id)
            cgroup.limit(self._memory_bytes, self.cpus)
        box = sb.Sandbox(
            kernel_dir=str(kernel_dir),
            read_only=tuple(
                p for p in (*env.prefixes, env.pythonpath, *self.read_only_paths) if p != "/usr"
            ),
            read_write=tuple(shared),
            moved=moved,
            hidden=self._hidden(),
            identity=identity,
        )
        command = sb.join_argv(cgroup.procs if cgroup else [], sb.bwrap_argv(box, argv))
        return command, kernel_env, kernel_dir, cgroup

    def checkpoint_dir(self, env: Mapping[str, str], owner: str) -> Path:
        """``owner``'s own L1 directory: under ``CUMULUS_CHECKPOINT_DIR`` (the gateway's) or
        the sandbox directory, one per owner, whoever its uid is."""
        base = Path(env.get(names.CHECKPOINT_DIR) or Path(self.sandbox_dir) / "checkpoints")
        return l1_dir(base, owner)

    def identity(self, owner: str) -> sb.Identity:
        """The uid a kernel of ``owner`` runs as (the gateway runs as root)."""
        if self.users == "os":
            try:
                account = pwd.getpwnam(owner)
            except KeyError:
                raise InvalidArgument(
                    f"No OS account named {owner!r} (--LocalRuntime.users=os runs each kernel "
                    "as its owner's account)"
                ) from None
            if account.pw_uid == 0:
                raise InvalidArgument("Kernels never run as root (--LocalRuntime.users=os)")
            groups = tuple(g for g in os.getgrouplist(owner, account.pw_gid) if g != 0)
            return sb.Identity(account.pw_uid, account.pw_gid, groups)
        uid = _dedicated_uid(Path(self.sandbox_dir) / "uids.json", owner, self.uid_base)
        return sb.Identity(uid, uid)

    def _command(
        self, argv: list[str], env: kernelenv.KernelEnv, kernel_dir: Path, own: _Owner
    ) -> list[str]:
        """The kernelspec's command with the kernel environment's interpreter and the kernel's
        own copy of its connection file (the gateway's is readable only by the gateway)."""
        if argv and (argv[0] == sys.executable or Path(argv[0]).name.startswith("python")):
            argv[0] = env.python
        if "-f" in argv[:-1]:
            at = argv.index("-f") + 1
            copy = kernel_dir / "kernel.json"
            shutil.copyfile(argv[at], copy)
            own.chown(copy, 0o600)
            argv[at] = str(copy)
        return argv

    def _environment(
        self, requested: Mapping[str, str], env: kernelenv.KernelEnv, kernel_dir: Path, owner: str
    ) -> dict[str, str]:
        """The request's, the kernelspec's and the partition's variables; of the gateway's
        own environment, only the locale and the network proxies."""
        kept = {
            k: v for k, v in requested.items()
            if (os.environ.get(k) != v or k.startswith(_PASSED)) and k not in _DROPPED
        }  # fmt: skip
        user = "".join(c for c in owner if c.isalnum() or c in "-_.") or "kernel"
        return kept | {
            "HOME": str(kernel_dir), "USER": user, "LOGNAME": user, "TMPDIR": "/tmp",
            "PATH": f"{Path(env.python).parent}:/usr/local/bin:/usr/bin:/bin",
            "PYTHONPATH": env.pythonpath, names.WORKDIR: str(kernel_dir),
        }  # fmt: skip

    def _data_socket(
        self, requested: Mapping[str, str], kernel_dir: Path, own: _Owner
    ) -> tuple[tuple[str, str], ...]:
        """The kernel's own directory, seen at its data socket's directory (so it sees no
        other kernel's socket); the gateway reaches the socket through a link."""
        path = requested.get(names.DATA_SOCKET)
        if not path:
            return ()
        run = kernel_dir / "run"
        own.mkdir(run)
        link = Path(path)
        for name in (link.name, *_ipc_endpoints(kernel_dir / "kernel.json", link.parent)):
            (link.parent / name).unlink(missing_ok=True)
            (link.parent / name).symlink_to(run / name)
        return ((str(run), str(link.parent)),)

    def _hidden(self) -> tuple[str, ...]:
        """The gateway's own places, emptied should they lie under a mounted directory."""
        from jupyter_core import paths

        places = [sys.prefix, paths.jupyter_runtime_dir(), paths.jupyter_data_dir(),
                  *paths.jupyter_config_path(), self.sandbox_dir]  # fmt: skip
        state = os.environ.get("CHRONOS_STATE")
        if state:
            places.append(os.path.dirname(os.path.abspath(state)))
        return tuple(dict.fromkeys(os.path.abspath(p) for p in places if os.path.isdir(p)))

    def discard(self, info: Mapping[str, Any]) -> None:
        """A sandboxed kernel that died while no gateway watched: its directory and cgroup
        (only a directory of this runtime's own ``kernels``, whatever the record says)."""
        kernel_dir = Path(str(info.get("kernel_dir", "")))
        if kernel_dir.parent != Path(self.sandbox_dir) / "kernels" or not kernel_dir.name:
            return
        SandboxedProcess.remove_left(kernel_dir, _cgroup_of(info))

    def adopt(self, info: Mapping[str, Any]) -> KernelProcess | None:
        try:
            proc = psutil.Process(int(info["pid"]))
            started = proc.create_time()
        except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError, ValueError):
            return None
        if abs(started - float(info.get("started", 0))) > _START_TIME_TOLERANCE_S:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        if "kernel_dir" not in info:
            return LocalProcess(proc, started)
        return SandboxedProcess(
            proc, started, Path(info["kernel_dir"]), _cgroup_of(info), info.get("memory", "")
        )


def _cgroup_of(info: Mapping[str, Any]) -> sb.Cgroup | None:
    """A sandboxed kernel's cgroup, as `SandboxedProcess.info` recorded it."""
    dirs = [Path(d) for d in info.get("cgroup") or []]
    if not dirs:
        return None
    return sb.Cgroup(int(info.get("cgroup_version") or 2), dirs[0], dirs[-1])


#: the gateway's variables a sandboxed kernel still gets (when they are the gateway's own)
_PASSED = ("LANG", "LC_", "TZ", "TERM", "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY",
           "HTTPS_PROXY", "NO_PROXY", "PIP_", "CHRONOS_")  # fmt: skip
_DROPPED = {"JPY_PARENT_PID", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP",
            names.CHECKPOINT_OPTIONS}  # fmt: skip


class _Owner:
    """Makes the kernel's files its uid's (as root), private to it."""

    def __init__(self, identity: sb.Identity | None) -> None:
        self.identity = identity

    def chown(self, path: Path, mode: int) -> None:
        if self.identity is not None:
            os.chown(path, self.identity.uid, self.identity.gid)
        path.chmod(mode)

    def mkdir(self, path: Path, parents_private: bool = True) -> None:
        if not path.parent.exists():
            mode = 0o711 if parents_private else 0o755
            path.parent.mkdir(parents=True, exist_ok=True, mode=mode)
        path.mkdir(exist_ok=True)
        self.chown(path, 0o700)


def _pip_local_paths() -> list[str]:
    """Local directories in pip's configuration (``file://`` indexes, ``find-links``)."""
    import configparser

    values = [os.environ.get(k, "") for k in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL",
                                              "PIP_FIND_LINKS")]  # fmt: skip
    for path in ("/etc/pip.conf", "/etc/xdg/pip/pip.conf"):
        parser = configparser.ConfigParser()
        try:
            parser.read(path)
        except configparser.Error:
            continue
        for section in parser.sections():
            values += [parser[section].get(k, "") for k in ("index-url", "extra-index-url",
                                                            "find-links")]  # fmt: skip
    found = []
    for word in " ".join(values).split():
        path = word.removeprefix("file://")
        if path.startswith("/") and os.path.isdir(path):
            found.append(os.path.normpath(path))
    return list(dict.fromkeys(found))


def _ipc_endpoints(connection_file: Path, directory: Path) -> list[str]:
    """The names of a kernel's ZMQ Unix sockets in ``directory`` (its data socket's), which
    the kernel binds inside its sandbox, where that directory is its own ``run``."""
    try:
        info = json.loads(connection_file.read_text())
    except (OSError, ValueError):
        return []
    prefix = Path(str(info.get("ip", "")))
    if info.get("transport") != "ipc" or prefix.parent != directory:
        return []
    return [f"{prefix.name}-{info[k]}" for k in port_names if k in info]


def _dedicated_uid(table: Path, owner: str, base: int) -> int:
    """The owner's own uid, the next free one the first time (kept in ``table``)."""
    import fcntl

    table.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
    with open(table, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        raw = handle.read()
        uids: dict[str, int] = json.loads(raw) if raw.strip() else {}
        if owner not in uids:
            taken = set(uids.values())
            uid = base
            while uid in taken or _uid_exists(uid):
                uid += 1
            uids[owner] = uid
            handle.seek(0)
            handle.truncate()
            json.dump(uids, handle)
        return uids[owner]


def _uid_exists(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def main() -> int:
    """Build (or find) the environment sandboxed kernels
    run from, with the runtime's defaults; ``make test`` runs it before the tests, so that no
    test's first kernel waits for the build."""
    print(f"kernel environment: {LocalRuntime().kernel_env().python}")
    return 0
