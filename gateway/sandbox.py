"""The local runtime's sandbox: each kernel under bubblewrap, as its own uid, in a cgroup.

Three pieces, each small enough to test alone:

- `Sandbox` (a frozen value) says what one kernel may see: the host's ``/usr`` and a few files
  of ``/etc`` read-only, the Python prefixes it runs from read-only, its own directory
  read-write (work directory, home, connection file, data socket), the per-owner caches it
  shares with the same owner's other kernels; `bwrap_argv` turns it into bubblewrap's
  arguments. Everything else (the gateway's state, token, config, logs and environment, other
  kernels' connection files, directories and sockets) is simply not mounted; `hidden` paths
  that happen to lie under a mounted one get an empty tmpfs over them.
- `Cgroup`: a per-kernel cgroup (v2 where its controllers can be delegated, else v1's memory
  and cpu hierarchies) with the memory and CPU limit; it also says whether the kernel was
  killed for memory. `join_argv` puts a command under a small shell that moves itself into
  the cgroup before it starts bubblewrap, so nothing the kernel forks escapes the limit, and
  whose death ends the sandbox.
- `probe`: whether bubblewrap runs here at all, and if not, why (one line for the log).

As root, bubblewrap runs privileged (no user namespace) and ``setpriv`` drops to the kernel's
uid inside, with every capability and ``no_new_privs``; otherwise bubblewrap makes a user
namespace and the kernel keeps the gateway's uid, isolated by its mount and PID namespaces.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: the files of /etc a Python kernel (and pip, for overlays) reads; nothing else of /etc is seen
ETC_FILES = (
    "passwd", "group", "hosts", "resolv.conf", "nsswitch.conf", "host.conf", "gai.conf",
    "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "timezone", "ssl",
    "ca-certificates", "ca-certificates.conf", "alternatives", "mime.types", "os-release",
    "pip.conf", "xdg/pip", "debian_version", "lsb-release", "machine-id",
    "fonts",  # fontconfig's own configuration: without it a first plot prints a Fontconfig error
)  # fmt: skip
#: the host's top-level directories that may be symlinks into /usr (merged /usr)
USR_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
SETPRIV = "/usr/bin/setpriv"


@dataclass(frozen=True)
class Identity:
    """Who the kernel runs as (as root only; otherwise it keeps the gateway's uid)."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()


@dataclass(frozen=True)
class Sandbox:
    """What one kernel sees. Paths are the same inside as outside."""

    kernel_dir: str  # read-write: its work directory, home, connection file
    read_only: tuple[str, ...] = ()  # the Python prefixes it runs from
    read_write: tuple[str, ...] = ()  # the owner's caches (overlays, checkpoints)
    #: (outside, inside) directories bound read-write at another path (the data socket's)
    moved: tuple[tuple[str, str], ...] = ()
    hidden: tuple[str, ...] = ()  # paths under a mounted one that must look empty
    identity: Identity | None = None  # None: keep the caller's uid (unprivileged bubblewrap)
    etc: tuple[str, ...] = ETC_FILES
    root: str = "/"  # the host's root (tests build arguments against a fake one)
    extra: tuple[str, ...] = field(default=())  # more bubblewrap arguments, from the operator


def bwrap_argv(sandbox: Sandbox, command: Sequence[str], bwrap: str = "bwrap") -> list[str]:
    """bubblewrap's command line that runs ``command`` inside ``sandbox``."""
    # --die-with-parent: the whole sandbox goes with its parent, `join_argv`'s shell
    args = [bwrap, "--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts"]
    args.append("--unshare-cgroup-try")
    if sandbox.identity is None:
        args.append("--unshare-user")
    args += ["--hostname", "cumulus-kernel", "--proc", "/proc", "--dev", "/dev"]
    # as root, bubblewrap makes the directories it needs 0700: /tmp and /etc must be open
    args += ["--perms", "1777", "--tmpfs", "/tmp", "--ro-bind", "/usr", "/usr"]
    args += _usr_links(sandbox.root)
    args += ["--perms", "0755", "--dir", "/etc"]
    for name in sandbox.etc:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    made = {"/", "/tmp", "/usr", "/proc", "/dev", "/etc"}
    for path in sandbox.read_only:
        args += [*_parents(path, made), "--ro-bind", path, path]
    for path in sandbox.hidden:  # before the read-write mounts, which may lie under one
        if _under_any(path, (*sandbox.read_only, "/usr")):
            args += ["--tmpfs", path]
            made.add(path)
    for path in (*sandbox.read_write, sandbox.kernel_dir):
        args += [*_parents(path, made), "--bind", path, path]
    for outside, inside in sandbox.moved:
        args += [*_parents(inside, made), "--bind", outside, inside]
    args += [*sandbox.extra, "--chdir", sandbox.kernel_dir, "--"]
    return args + _drop(sandbox.identity) + list(command)


def _usr_links(root: str) -> list[str]:
    args: list[str] = []
    for name in USR_LINKS:
        host = os.path.join(root, name)
        if os.path.islink(host):
            args += ["--symlink", os.readlink(host), f"/{name}"]
        elif os.path.isdir(host):
            args += ["--ro-bind", f"/{name}", f"/{name}"]
    return args


def _parents(path: str, made: set[str]) -> list[str]:
    """Traversable directories above a mount point (bubblewrap makes them 0700 as root)."""
    args: list[str] = []
    parent = os.path.dirname(path.rstrip("/"))
    chain: list[str] = []
    while parent not in made and parent != "/":
        chain.append(parent)
        parent = os.path.dirname(parent)
    for directory in reversed(chain):
        args += ["--perms", "0755", "--dir", directory]
        made.add(directory)
    made.add(path)
    return args


def _under_any(path: str, roots: Sequence[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _drop(identity: Identity | None) -> list[str]:
    """``setpriv``'s words that become ``identity`` for good: no capability can come back and
    no setuid program can raise it (``no_new_privs``)."""
    if identity is None:
        return [SETPRIV, "--no-new-privs", "--"]
    groups = ",".join(str(g) for g in identity.groups)
    return [
        SETPRIV, f"--reuid={identity.uid}", f"--regid={identity.gid}",
        f"--groups={groups}" if groups else "--clear-groups",
        "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--",
    ]  # fmt: skip


def join_argv(procs: Sequence[str], command: Sequence[str]) -> list[str]:
    """``command`` under a small shell that first moves itself into each ``cgroup.procs`` of
    ``procs`` (so nothing the kernel forks escapes the limits) and then stays as its parent:
    bubblewrap's ``--die-with-parent`` ends the sandbox with this shell (killed by PID, or by
    process group), never with the gateway, whose kernels must outlive a crash."""
    script = (
        'for p; do [ "$p" = -- ] && break; echo $$ > "$p" || exit 125; shift; done; shift; "$@"'
    )
    return ["/bin/sh", "-c", script, "cumulus-sandbox", *procs, "--", *command]


def probe(bwrap: str = "bwrap") -> str | None:
    """None when bubblewrap can start a process here with the mounts a kernel needs; else
    why not, in one line."""
    found = shutil.which(bwrap)
    if found is None:
        return f"{bwrap} is not installed (Debian: apt-get install bubblewrap)"
    if not os.path.exists(SETPRIV):
        return f"{SETPRIV} is missing (Debian: apt-get install util-linux)"
    sandbox = Sandbox(
        kernel_dir="/tmp", identity=Identity(65534, 65534) if os.getuid() == 0 else None
    )
    argv = bwrap_argv(sandbox, ["/bin/true"], bwrap=found)
    try:
        done = subprocess.run(argv, capture_output=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{found} cannot run: {exc}"
    if done.returncode != 0:
        why = done.stderr.decode(errors="replace").strip().splitlines()
        return (
            f"{found} cannot make a sandbox here: {why[-1] if why else f'exit {done.returncode}'}"
        )
    return None


# -- cgroups -----------------------------------------------------------------------------------

CGROUP_ROOT = "/sys/fs/cgroup"
_PERIOD_US = 100_000


class Cgroup:
    """The per-kernel cgroup under ``base`` directories (one per hierarchy: v2 has one, v1 a
    memory and a cpu one). Made by `Cgroups.create`."""

    def __init__(self, version: int, memory_dir: Path | None, cpu_dir: Path | None) -> None:
        self.version = version
        self.memory_dir = memory_dir
        self.cpu_dir = cpu_dir

    @property
    def dirs(self) -> list[Path]:
        return list(dict.fromkeys(d for d in (self.memory_dir, self.cpu_dir) if d is not None))

    @property
    def procs(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs]

    def limit(self, memory_bytes: int, cpus: float) -> None:
        if memory_bytes and self.memory_dir is not None:
            if self.version == 2:
                _write(self.memory_dir / "memory.max", str(memory_bytes))
                _write(self.memory_dir / "memory.swap.max", "0", optional=True)
            else:
                _write(self.memory_dir / "memory.limit_in_bytes", str(memory_bytes))
                _write(self.memory_dir / "memory.memsw.limit_in_bytes", str(memory_bytes), True)
        if cpus and self.cpu_dir is not None:
            quota = max(1000, int(cpus * _PERIOD_US))
            if self.version == 2:
                _write(self.cpu_dir / "cpu.max", f"{quota} {_PERIOD_US}")
            else:
                _write(self.cpu_dir / "cpu.cfs_period_us", str(_PERIOD_US))
                _write(self.cpu_dir / "cpu.cfs_quota_us", str(quota))

    def oom_kills(self) -> int:
        """How many of the kernel's processes the kernel's OOM killer ended."""
        if self.memory_dir is None:
            return 0
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            lines = (self.memory_dir / name).read_text().splitlines()
        except OSError:
            return 0
        for line in lines:
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def pids(self) -> list[int]:
        """The processes still in the cgroup."""
        found: set[int] = set()
        for directory in self.dirs:
            with contextlib.suppress(OSError, ValueError):
                found |= {int(p) for p in (directory / "cgroup.procs").read_text().split()}
        return sorted(found)

    def remove(self) -> None:
        """Kill whatever of the kernel is left (its sandbox's init and the kernel die just
        after the outer process) and remove the cgroup; bounded to about a second."""
        for _ in range(50):
            for pid in self.pids():
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            for directory in self.dirs:
                with contextlib.suppress(FileNotFoundError):
                    try:
                        directory.rmdir()
                    except OSError:
                        break
            else:
                return
            time.sleep(0.02)


def _write(path: Path, value: str, optional: bool = False) -> None:
    try:
        path.write_text(value)
    except OSError:
        if not optional:
            raise


class Cgroups:
    """Where per-kernel cgroups are made: found once (`find`), at start-up."""

    def __init__(self, version: int, memory_base: Path | None, cpu_base: Path | None) -> None:
        self.version = version
        self.memory_base = memory_base
        self.cpu_base = cpu_base

    @classmethod
    def find(cls, root: str = CGROUP_ROOT, name: str = "cumulus") -> Cgroups | str:
        """The hierarchy kernels' cgroups go in, or why there is none (one line)."""
        v2 = _v2_base(Path(root), name)
        if isinstance(v2, Cgroups):
            return v2
        v1 = _v1_base(Path(root), name)
        if isinstance(v1, Cgroups):
            return v1
        return f"no cgroup for kernel limits: v2: {v2}; v1: {v1}"

    def create(self, kernel_id: str) -> Cgroup:
        memory = self.memory_base / kernel_id if self.memory_base else None
        cpu = self.cpu_base / kernel_id if self.cpu_base else None
        for directory in dict.fromkeys(d for d in (memory, cpu) if d is not None):
            directory.mkdir(exist_ok=True)
        return Cgroup(self.version, memory, cpu)

    def existing(self, kernel_id: str) -> Cgroup:
        memory = self.memory_base / kernel_id if self.memory_base else None
        cpu = self.cpu_base / kernel_id if self.cpu_base else None
        return Cgroup(self.version, memory, cpu)


def _own_path(controller: str) -> str:
    """This process's cgroup path in the hierarchy of ``controller`` ('' for v2)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers.split(",") == [controller] or (controller == "" and controllers == ""):
            return path
    return "/"


def _v2_base(root: Path, name: str) -> Cgroups | str:
    top = root if (root / "cgroup.controllers").exists() else root / "unified"
    try:
        available = (top / "cgroup.controllers").read_text().split()
    except OSError:
        return "not mounted"
    if "memory" not in available:
        return f"{top} has no memory controller (it belongs to v1 here)"
    base = top / name
    try:
        _write(top / "cgroup.subtree_control", "+memory +cpu")
        base.mkdir(exist_ok=True)
        _write(base / "cgroup.subtree_control", "+memory +cpu")
    except OSError as exc:
        return f"cannot delegate memory and cpu under {top}: {exc.strerror or exc}"
    return Cgroups(2, base, base)


def _v1_base(root: Path, name: str) -> Cgroups | str:
    bases: list[Path] = []
    for controller in ("memory", "cpu"):
        mount = root / controller
        if not (mount / "cgroup.procs").exists():
            return f"{mount} not mounted"
        base = mount / _own_path(controller).lstrip("/") / name
        try:
            base.mkdir(exist_ok=True)
        except OSError as exc:
            return f"cannot make {base}: {exc.strerror or exc}"
        bases.append(base)
    return Cgroups(1, bases[0], bases[1])


def parse_bytes(text: str) -> int:
    """``4G``, ``512M``, ``1.5GiB``, ``1000000`` → bytes; '' or '0': no limit (0)."""
    raw = text.strip().upper().removesuffix("B").removesuffix("I")
    if not raw:
        return 0
    scale = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}.get(raw[-1], 1)
    number = raw[:-1] if scale != 1 else raw
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"not an amount of memory: {text!r} (e.g. 4G, 512M)") from None
    if value < 0:
        raise ValueError(f"not an amount of memory: {text!r} (e.g. 4G, 512M)")
    return int(value * scale)


def main() -> int:
    """``python -m gateway.sandbox``: exit 0 when kernels can be sandboxed here; else say why
    on stderr and exit 1 (``make run`` then starts the gateway with ``sandbox=none``)."""
    import sys

    why = probe()
    if why is None:
        return 0
    print(f"note: kernels cannot be sandboxed here: {why}; they run unsandboxed", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
