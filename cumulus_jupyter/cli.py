"""``cumulus``: the user's command line: batch jobs (submit, get, list, logs, cancel, result),
more time for a partition (``cumulus extend ID 30m``) and the Cumulus GPU kernelspecs.

``cumulus submit TARGET``: an existing directory is a directory job (``main.py`` with
``main()``), a zip of one likewise, an existing file (or a name like ``x.py``) a script, and
anything else is code, as with ``-c``. ``list`` and ``get`` colour the states on a terminal,
never when piped or with ``NO_COLOR`` set."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cumulus_jupyter import jobs, kernelspec, partitions
from cumulus_jupyter.connection import GatewayClient, GatewaySettings
from cumulus_jupyter.errors import CumulusError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cumulus", description="Cumulus Jupyter: GPU partitions for notebooks."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ks = sub.add_parser("kernelspec", help="install, list or remove Cumulus GPU kernelspecs")
    ks_sub = ks.add_subparsers(dest="action", required=True, metavar="ACTION")
    install = ks_sub.add_parser("install", help="install a Cumulus GPU kernelspec")
    where = install.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="for the current user only")
    where.add_argument("--sys-prefix", action="store_true", help="into this Python's prefix")
    where.add_argument("--prefix", help="into PREFIX/share/jupyter/kernels")
    install.add_argument("--gpu", default="0.5", help="0.1-0.9 or whole number 1-8 (default 0.5)")
    install.add_argument(
        "--duration", default="1h", help='60 s to 24 h: 90, "30m", "2h" (default 1h)'
    )
    install.add_argument("--name", help="kernelspec name (default: cumulus-gpu-AMOUNT-DURATION)")
    install.add_argument(
        "--gateway", help="gateway URL (default: $CUMULUS_GATEWAY_URL at run time)"
    )
    install.add_argument(
        "--token-file", help="file holding the gateway token (its path goes in the kernelspec)"
    )
    install.add_argument(
        "--sync",
        action="store_true",
        help="on start, copy the notebook's directory to the remote working directory "
        "(hidden files skipped; at most $CUMULUS_SYNC_MAX_MB, default 100)",
    )
    remove = ks_sub.add_parser("uninstall", help="remove a kernelspec")
    remove.add_argument("name")
    ks_sub.add_parser("list", help="list installed Cumulus GPU kernelspecs")
    for p in (install, remove):
        p.add_argument("--json", action="store_true")
    _job_commands(sub)
    extend = sub.add_parser("extend", help="add time to a partition (yours) before it expires")
    extend.add_argument("partition_id", help="the partition (p-...; a kernel's cumulus object)")
    extend.add_argument("duration", help='how much to add: 90, "30m", "2h"')
    extend.add_argument("--json", action="store_true", help="the partition, as JSON")
    extend.add_argument("--gateway", help="gateway URL (default $CUMULUS_GATEWAY_URL)")
    return parser


def _job_commands(sub: Any) -> None:
    submit = sub.add_parser(
        "submit",
        help="run a directory (main.py with main()), a script or code as a job in a partition",
    )
    submit.add_argument(
        "script", nargs="?", metavar="TARGET",
        help="a job directory (main.py defining main(), optional requirements.txt) or a zip "
        "of one, a Python script, or code to run (like -c)",
    )  # fmt: skip
    submit.add_argument("-c", dest="code", help="run this code instead of a script")
    submit.add_argument("--gpu", default="0.5", help="0.1-0.9 or whole number 1-8 (default 0.5)")
    submit.add_argument("--duration", default="1h", help='60 s to 24 h: 90, "30m", "2h"')
    submit.add_argument(
        "--requirements", default="", help='pip requirements, "pkg1 pkg2" or a requirements file'
    )
    submit.add_argument("--follow", "-f", action="store_true", help="stream its output to the end")
    submit.add_argument("--resume", help="restore this checkpoint's variables before running")
    submit.add_argument(
        "--checkpoint-before-expiry", metavar="NAMES",
        help="checkpoint these variables (comma-separated) 1 minute before the partition ends",
    )  # fmt: skip
    submit.add_argument("--checkpoint-name", help="its name (default: the job id)")
    get = sub.add_parser("get", help="a job's state")
    get.add_argument("job_id")
    sub.add_parser("list", help="your jobs: id, user, state, gpu, device, started, runtime")
    logs = sub.add_parser("logs", help="a job's output")
    logs.add_argument("job_id")
    logs.add_argument("--follow", "-f", action="store_true", help="until the job ends")
    cancel = sub.add_parser("cancel", help="stop a job (its partition is released)")
    cancel.add_argument("job_id")
    result = sub.add_parser("result", help="a directory job's result document, as JSON")
    result.add_argument("job_id")
    result.add_argument("--gateway", help="gateway URL (default $CUMULUS_GATEWAY_URL)")
    result.add_argument("--json", action="store_true", help="(it is JSON either way)")
    for p in (submit, get, sub.choices["list"], logs, cancel):
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument("--gateway", help="gateway URL (default $CUMULUS_GATEWAY_URL)")


def _requirements(text: str) -> list[str]:
    path = Path(text)
    if text and path.is_file():
        lines = path.read_text().splitlines()
        return [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    return text.split()


async def _jobs(args: argparse.Namespace) -> int:
    client = GatewayClient(GatewaySettings.resolve(args.gateway))
    try:
        if args.command == "extend":
            return await _extend(client, args)
        return await _job_command(client, args)
    finally:
        await client.aclose()


async def _extend(client: GatewayClient, args: argparse.Namespace) -> int:
    partition = await partitions.extend(client, args.partition_id, args.duration)
    print(json.dumps(partition) if args.json else partitions.describe(partition, args.duration))
    return 0


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _submission(args: argparse.Namespace) -> dict[str, Any]:
    """The body for ``cumulus submit``: a directory, a zip, a script or code (`jobs.kind_of`)."""
    requirements = _requirements(args.requirements)
    kind = jobs.kind_of(args.script) if args.script is not None and args.code is None else ""
    if kind in ("directory", "zip"):
        return jobs.directory_body(args.script, args.gpu, args.duration, requirements)
    if kind == "code":
        return jobs.script_body(None, args.script, args.gpu, args.duration, requirements)
    return jobs.script_body(args.script, args.code, args.gpu, args.duration, requirements)


async def _job_command(client: GatewayClient, args: argparse.Namespace) -> int:
    if args.command == "result":
        document = await jobs.document(client, args.job_id)
        print(json.dumps(document, indent=2))
        return 0 if document.get("status") == "success" else 1
    if args.command == "submit":
        body = _submission(args)
        if args.resume:
            body["resume"] = args.resume
        if args.checkpoint_before_expiry:
            names = [n for n in args.checkpoint_before_expiry.split(",") if n]
            body["checkpoint"] = {"name": args.checkpoint_name, "names": names}
        job = await jobs.submit(client, body)
        if not args.follow:
            print(json.dumps(job) if args.json else job["id"])
            return 0
        _say(f"submitted {job['id']} ({job['gpu']} GPU, {job['duration_s']} s)")
        job = await jobs.follow(client, job["id"], _out, _say)
    elif args.command == "logs":
        if args.follow:
            job = await jobs.follow(client, args.job_id, _out, _say, logs_only=True)
        else:
            text, _, _ = await jobs.log_chunk(client, args.job_id, 0)
            _out(text)
            return 0
    elif args.command == "list":
        listed = await jobs.listing(client)
        print(json.dumps(listed) if args.json else jobs.table(listed, jobs.use_colour(sys.stdout)))
        return 0
    elif args.command == "cancel":
        job = await jobs.cancel(client, args.job_id)
    else:
        job = await jobs.get(client, args.job_id)
        if not args.json:
            print(jobs.describe(job, jobs.use_colour(sys.stdout)))
        else:
            print(json.dumps(job))
        return 0
    if args.json:
        print(json.dumps(job))
    else:
        _say(jobs.describe(job))
    return (
        {"completed": 0, "cancelled": 130}.get(job["state"], 1) if job["state"] in jobs.FINAL else 0
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command != "kernelspec":
            return asyncio.run(_jobs(args))
        if args.action == "install":
            prefix = sys.prefix if args.sys_prefix else args.prefix
            name, where = kernelspec.install(
                args.gpu, args.duration, name=args.name, user=args.user, prefix=prefix,
                gateway=args.gateway, sync=args.sync, token_file=args.token_file,
            )  # fmt: skip
            print(
                json.dumps({"name": name, "path": where})
                if args.json
                else f"Installed kernelspec {name} in {where}"
            )
        elif args.action == "uninstall":
            where = kernelspec.uninstall(args.name)
            print(
                json.dumps({"name": args.name, "path": where}) if args.json else f"Removed {where}"
            )
        else:
            for name, entry in sorted(kernelspec.installed().items()):
                print(f"  {name:<28} {entry['spec']['display_name']:<32} {entry['resource_dir']}")
    except CumulusError as exc:  # the one boundary: a line for the user, the class's exit code
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
