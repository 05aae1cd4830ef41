"""``chronos``: GPU partitions from the command line.

Every command takes ``--json``. Exit codes are stable for scripts: 0 done, 1 internal error,
2 invalid input, 3 unknown or already ended partition, 4 no capacity now, 5 state file
unusable, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from chronos import device as device_mod
from chronos import nvml
from chronos.amount import AMOUNT_RULE, DURATION_RULE, format_duration, parse_duration
from chronos.enforce import confinement_env
from chronos.errors import ChronosError, InvalidArgument
from chronos.partition import Partition, format_bytes
from chronos.store import STATE_ENV, Store, default_state_path
from chronos.watchdog import DEFAULT_GRACE_S, DEFAULT_INTERVAL_S, Watchdog, WatchdogEvent

EPILOG = f"""\
GPU amounts: {AMOUNT_RULE.lower()}: a fraction (0.1, 0.2 ... 0.9) shares one
device; a whole number (1 ... 8) takes that many devices nobody else holds.
Durations: {DURATION_RULE.lower()}; plain numbers are seconds.
DEVICE: an index (0), an id (gpu0), an NVIDIA UUID, a comma list of those
(best fit among them), or "any".

State: ${STATE_ENV} (default {default_state_path()}); devices: discovered
through OpenCL and NVML, or a JSON list in ${device_mod.DEVICES_ENV}.

Exit codes: 0 done, 1 internal error, 2 invalid input, 3 unknown or ended
partition, 4 no capacity now, 5 state file locked or corrupt, 130 interrupted."""


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
    common.add_argument("--state", metavar="PATH", help=f"state file (default: ${STATE_ENV})")
    parser = argparse.ArgumentParser(
        prog="chronos",
        description="Fractions of GPUs for a limited time: create, list, release, enforce.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, parents=[common], help=help_text, description=help_text, epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )  # fmt: skip

    add("devices", "list devices and how much of each is free")
    create = add("create", "take a partition of AMOUNT on DEVICE for DURATION")
    create.add_argument("device", metavar="DEVICE")
    create.add_argument("amount", metavar="AMOUNT", help="0.1-0.9, or whole number 1-8")
    create.add_argument("duration", metavar="DURATION", help='60 s to 24 h: 90, "30m", "2h"')
    _owner_and_pids(create)
    lst = add("list", "list active partitions")
    lst.add_argument("--all", action="store_true", help="include released and expired ones")
    release = add("release", "end a partition now")
    release.add_argument("id", metavar="ID")
    extend = add("extend", "move partition ID's expiry DURATION later")
    extend.add_argument("id", metavar="ID")
    extend.add_argument("duration", metavar="DURATION", help='how much more: 90, "30m", "2h"')
    env = add("env", "print the environment that confines a process to partition ID")
    env.add_argument("id", metavar="ID")
    run = add("run", "run COMMAND confined to a new partition, released when it exits")
    run.add_argument("device", metavar="DEVICE")
    run.add_argument("amount", metavar="AMOUNT")
    run.add_argument("duration", metavar="DURATION")
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")
    run.add_argument("--owner", default=_user())
    run.add_argument("--grace", type=float, default=DEFAULT_GRACE_S)
    watch = add("watch", "enforce expiry and memory caps until interrupted")
    watch.add_argument("--interval", type=float, default=DEFAULT_INTERVAL_S, metavar="S")
    watch.add_argument("--grace", type=float, default=DEFAULT_GRACE_S, metavar="S",
                       help="seconds between SIGTERM and SIGKILL")  # fmt: skip
    watch.add_argument("--once", action="store_true", help="one pass, then exit")
    return parser


def _owner_and_pids(command: argparse.ArgumentParser) -> None:
    command.add_argument("--owner", default=_user(), help="who holds it (default: $USER)")
    command.add_argument("--pid", type=int, action="append", default=[], metavar="PID",
                         help="a process to confine to it (repeatable)")  # fmt: skip


def _user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return os.environ.get("USER") or str(os.getuid())


# -- output --------------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns separated by two spaces, as ``docker ps`` prints them."""
    cells = [[str(c) for c in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def _partition_rows(partitions: Sequence[Partition]) -> str:
    now = time.time()
    rows = [
        (
            p.id, ",".join(p.device_ids), p.amount, format_bytes(p.memory_bytes), p.owner or "-",
            ",".join(str(r.pid) for r in p.processes) or "-",
            time.strftime("%H:%M:%S", time.localtime(p.expires_at)),
            format_duration(p.seconds_left(now)) if p.is_active else "-", p.state.value,
        )
        for p in partitions
    ]  # fmt: skip
    headers = ("ID", "DEVICES", "GPU", "MEMORY", "OWNER", "PIDS", "EXPIRES", "LEFT", "STATE")
    return table(headers, rows)


def _emit(args: argparse.Namespace, data: Any, human: str) -> None:
    print(json.dumps(data, indent=2) if args.json else human, flush=True)


# -- commands ------------------------------------------------------------------------------------


def _open(args: argparse.Namespace) -> Store:
    return Store(device_mod.discover(), args.state)


def cmd_devices(args: argparse.Namespace) -> int:
    with _open(args) as store:
        used = store.used()
        devices, offline = store.devices, store.offline
    free = {d.index: (10 - used.get(d.index, 0)) / 10 for d in devices}
    data = [
        d.to_json() | {"free": free[d.index], "online": d.index not in offline} for d in devices
    ]
    rows = [
        (d.id, d.name, d.vendor.value, d.kind, format_bytes(d.memory_bytes), f"{free[d.index]:g}",
         "no" if d.index in offline else "yes", d.uuid or "-")
        for d in devices
    ]  # fmt: skip
    header = ("ID", "NAME", "VENDOR", "KIND", "MEMORY", "FREE", "ONLINE", "UUID")
    _emit(args, data, table(header, rows))
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    with _open(args) as store:
        partition = store.create(
            args.amount, args.duration, devices=args.device, owner=args.owner, pids=args.pid
        )
    _emit(args, partition.to_json(), partition.describe())
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with _open(args) as store:
        partitions = store.partitions(include_ended=args.all)
    _emit(args, [p.to_json() for p in partitions], _partition_rows(partitions))
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    with _open(args) as store:
        partition = store.release(args.id)
    _emit(args, partition.to_json(), f"released {partition.id}")
    return 0


def cmd_extend(args: argparse.Namespace) -> int:
    with _open(args) as store:
        partition = store.extend(args.id, parse_duration(args.duration))
    _emit(args, partition.to_json(), f"extended {partition.describe()}")
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    with _open(args) as store:
        partition = store.get(args.id)
        partition.require_active()
        env = confinement_env(partition, store.devices)
    _emit(args, env, "\n".join(f"export {k}={_shell_quote(v)}" for k, v in sorted(env.items())))
    return 0


def _shell_quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def cmd_run(args: argparse.Namespace) -> int:
    command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not command:
        raise InvalidArgument(
            "Invalid command: nothing to run. Usage: chronos run DEVICE AMOUNT DURATION -- COMMAND"
        )
    with _open(args) as store:
        partition = store.create(args.amount, args.duration, devices=args.device, owner=args.owner)
        try:
            return _run_confined(store, partition, command, args)
        finally:
            if store.get(partition.id).is_active:
                store.release(partition.id)


def _run_confined(
    store: Store, partition: Partition, command: list[str], args: argparse.Namespace
) -> int:
    env = os.environ | confinement_env(partition, store.devices)
    print(partition.describe(), file=sys.stderr, flush=True)
    try:
        child = subprocess.Popen(command, env=env)
    except OSError as exc:
        raise InvalidArgument(f"Cannot run {command[0]}: {exc.strerror}") from exc
    store.attach(partition.id, child.pid)
    try:
        return child.wait(timeout=partition.seconds_left())
    except subprocess.TimeoutExpired:
        print(f"chronos: partition {partition.id} expired; stopping {command[0]}",
              file=sys.stderr, flush=True)  # fmt: skip
        child.terminate()
        try:
            child.wait(timeout=args.grace)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        return 124


def cmd_watch(args: argparse.Namespace) -> int:
    with _open(args) as store:
        monitor = nvml.NvmlMonitor() if nvml.available() else None
        dog = Watchdog(store, monitor, grace=args.grace)
        if args.once:
            for event in dog.tick():
                _print_event(args, event)
            return 0
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        if not args.json:
            memory = "NVML memory caps" if monitor else "no memory monitor (NVML absent)"
            print(f"watching {store.path}: expiry, {memory}; every {args.interval:g} s",
                  flush=True)  # fmt: skip
        dog.run(stop, args.interval, lambda event: _print_event(args, event))
    return 0


def _print_event(args: argparse.Namespace, event: WatchdogEvent) -> None:
    stamp = time.strftime("%H:%M:%S")
    line = json.dumps(event.to_json() | {"time": time.time()}) if args.json else f"{stamp} {event}"
    print(line, flush=True)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "devices": cmd_devices,
    "create": cmd_create,
    "list": cmd_list,
    "release": cmd_release,
    "extend": cmd_extend,
    "env": cmd_env,
    "run": cmd_run,
    "watch": cmd_watch,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ChronosError as exc:
        if args.json:
            error = {"type": type(exc).__name__, "status": exc.status, "message": str(exc)}
            print(json.dumps({"error": error}, indent=2), flush=True)
        print(str(exc), file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
