"""bubblewrap's arguments for a kernel, the cgroup join, memory amounts, per-owner uids."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import sandbox
from gateway.runtimes.local import LocalRuntime, _dedicated_uid
from gateway.sandbox import Cgroup, Identity, Sandbox, bwrap_argv, join_argv, parse_bytes

pytestmark = pytest.mark.unit

KERNEL = "/var/lib/cumulus/sandbox/kernels/k1"
COMMAND = ["/env/bin/python", "-m", "chronos.confine", "ipykernel_launcher", "-f", "k.json"]


def pairs(argv: list[str], flag: str) -> list[tuple[str, str]]:
    return [(argv[i + 1], argv[i + 2]) for i, a in enumerate(argv) if a == flag]


def test_only_what_the_kernel_needs_is_mounted() -> None:
    box = Sandbox(
        kernel_dir=KERNEL, read_only=("/env", "/root/.pyenv/versions/3.11"),
        read_write=("/var/lib/cumulus/sandbox/overlays/uid-7",), identity=Identity(7, 7),
    )  # fmt: skip
    argv = bwrap_argv(box, COMMAND)
    ro = dict(pairs(argv, "--ro-bind"))
    rw = dict(pairs(argv, "--bind"))
    assert ro["/usr"] == "/usr" and ro["/env"] == "/env"
    assert set(rw) == {KERNEL, "/var/lib/cumulus/sandbox/overlays/uid-7"}
    assert "/" not in ro and "/home" not in ro and "/root" not in ro  # no host root, no homes
    tried = dict(pairs(argv, "--ro-bind-try"))
    assert "/etc/passwd" in tried and not any("jupyter" in p for p in tried)
    for flag in ("--unshare-pid", "--unshare-ipc", "--die-with-parent", "--proc", "--dev"):
        assert flag in argv
    assert argv[argv.index("--chdir") + 1] == KERNEL


def test_parents_of_mount_points_are_traversable() -> None:
    argv = bwrap_argv(Sandbox(kernel_dir=KERNEL, read_only=("/root/.pyenv/v",)), COMMAND)
    made = [argv[i + 3] for i, a in enumerate(argv) if a == "--perms" and argv[i + 1] == "0755"]
    assert made[:3] == ["/etc", "/root", "/root/.pyenv"]
    assert made.count("/var/lib/cumulus") == 1  # each directory once
    assert argv.index("/root") < argv.index("/root/.pyenv/v")


def test_as_root_the_kernel_drops_to_its_uid_for_good() -> None:
    argv = bwrap_argv(Sandbox(kernel_dir=KERNEL, identity=Identity(7, 8, (9,))), COMMAND)
    tail = argv[argv.index("--") + 1 :]
    assert tail[0] == sandbox.SETPRIV
    assert {"--reuid=7", "--regid=8", "--groups=9", "--no-new-privs", "--bounding-set=-all"} <= set(
        tail
    )
    assert tail[tail.index("--") + 1 :] == COMMAND
    assert "--unshare-user" not in argv  # privileged bubblewrap: no user namespace


def test_unprivileged_the_kernel_keeps_its_uid_in_a_user_namespace() -> None:
    argv = bwrap_argv(Sandbox(kernel_dir=KERNEL), COMMAND)
    assert "--unshare-user" in argv
    tail = argv[argv.index("--") + 1 :]
    assert tail[:3] == [sandbox.SETPRIV, "--no-new-privs", "--"] and tail[3:] == COMMAND


def test_hidden_paths_are_emptied_only_under_a_mount() -> None:
    box = Sandbox(
        kernel_dir=KERNEL, read_only=("/opt/py",),
        hidden=("/opt/py/etc/jupyter", "/srv/state", "/usr/local/etc/jupyter"),
    )  # fmt: skip
    argv = bwrap_argv(box, COMMAND)
    tmpfs = [argv[i + 1] for i, a in enumerate(argv) if a == "--tmpfs"]
    assert "/opt/py/etc/jupyter" in tmpfs and "/usr/local/etc/jupyter" in tmpfs
    assert "/srv/state" not in tmpfs  # not mounted at all: nothing to hide


def test_the_data_socket_directory_is_the_kernels_own() -> None:
    box = Sandbox(kernel_dir=KERNEL, moved=((f"{KERNEL}/run", "/tmp/cumulus-data-0"),))
    assert (f"{KERNEL}/run", "/tmp/cumulus-data-0") in pairs(bwrap_argv(box, COMMAND), "--bind")


def test_merged_usr_links_follow_the_host(tmp_path: Path) -> None:
    (tmp_path / "usr" / "bin").mkdir(parents=True)
    (tmp_path / "bin").symlink_to("usr/bin")
    (tmp_path / "lib64").mkdir()
    argv = bwrap_argv(Sandbox(kernel_dir=KERNEL, root=str(tmp_path)), COMMAND)
    assert ("usr/bin", "/bin") in pairs(argv, "--symlink")
    assert ("/lib64", "/lib64") in pairs(argv, "--ro-bind")


def test_the_cgroup_is_joined_before_bubblewrap_starts() -> None:
    procs = ["/sys/fs/cgroup/cumulus/k1/cgroup.procs"]
    argv = join_argv(procs, ["bwrap", "--", "python"])
    assert argv[:2] == ["/bin/sh", "-c"]
    assert argv[3:] == ["cumulus-sandbox", *procs, "--", "bwrap", "--", "python"]


def test_the_join_script_runs_the_command_as_its_child(tmp_path: Path) -> None:
    import subprocess

    procs = [str(tmp_path / "a"), str(tmp_path / "b")]
    command = ["sh", "-c", 'echo "$PPID $1"; exit 3', "x", "--"]
    done = subprocess.run(join_argv(procs, command), capture_output=True, text=True)
    parent, arg = done.stdout.split()
    assert done.returncode == 3 and arg == "--"  # its exit status, its arguments intact
    assert [Path(p).read_text().strip() for p in procs] == [parent, parent]


def test_limits_are_written_per_cgroup_version(tmp_path: Path) -> None:
    v2 = Cgroup(2, tmp_path, tmp_path)
    v2.limit(256 * 2**20, 1.5)
    assert (tmp_path / "memory.max").read_text() == str(256 * 2**20)
    assert (tmp_path / "cpu.max").read_text() == "150000 100000"
    (tmp_path / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert v2.oom_kills() == 1
    mem, cpu = tmp_path / "memory", tmp_path / "cpu"
    mem.mkdir(), cpu.mkdir()
    v1 = Cgroup(1, mem, cpu)
    v1.limit(2**30, 0.5)
    assert (mem / "memory.limit_in_bytes").read_text() == str(2**30)
    assert (cpu / "cpu.cfs_quota_us").read_text() == "50000"
    (mem / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    assert v1.oom_kills() == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", 0), ("0", 0), ("512M", 512 * 2**20), ("4G", 4 * 2**30), ("1.5GiB", 3 * 2**29),
     ("1000", 1000), ("2gb", 2 * 2**30)],
)  # fmt: skip
def test_memory_amounts(text: str, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["lots", "-1G", "G"])
def test_bad_memory_amounts_say_so(text: str) -> None:
    with pytest.raises(ValueError, match="not an amount of memory"):
        parse_bytes(text)


def test_each_owner_keeps_a_uid_of_their_own(tmp_path: Path) -> None:
    table = tmp_path / "uids.json"
    ana, bob = _dedicated_uid(table, "ana", 300000), _dedicated_uid(table, "bob", 300000)
    assert ana != bob and ana >= 300000
    assert _dedicated_uid(table, "ana", 300000) == ana  # kept


def test_unsandboxed_only_when_asked() -> None:
    assert LocalRuntime().sandbox == "bwrap"
    assert LocalRuntime(sandbox="none").signals is True
    assert LocalRuntime().signals is False  # interrupts go as messages to a sandboxed kernel
