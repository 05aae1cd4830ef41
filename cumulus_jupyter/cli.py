"""``cumulus``: the user's command line (kernelspecs today; jobs later)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from cumulus_jupyter import kernelspec
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
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
    except CumulusError as exc:
        print(str(exc), file=sys.stderr)
        return 2 if exc.status == 400 else 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
