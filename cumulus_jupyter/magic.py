"""``%%cumulus`` and ``%cumulus``: run a cell on a fraction of a remote GPU.

::

    %load_ext cumulus_jupyter
    %%cumulus --gpu 0.5 --duration 30m
    y = x @ x.T          # x is pushed (it changed since last time); y comes back

Consecutive cells with the same ``--session`` (default: one per GPU amount) share one remote
kernel and partition. ``%cumulus status | sessions | release [NAME] | push NAMES | pull NAMES``.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
import types
from pathlib import Path
from typing import Any

from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.display import publish_display_data
from traitlets import Float, Unicode

from cumulus_jupyter.cells import cell_names
from cumulus_jupyter.connection import GatewaySettings
from cumulus_jupyter.errors import CumulusError, InvalidArgument, PartitionExpired, RemoteError
from cumulus_jupyter.protocol import code as kernel_code
from cumulus_jupyter.session import RemoteRef, RemoteSession


def _options(line: str) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "gpu": "0.5", "duration": "1h", "session": None, "push": [], "pull": [],
        "no_push": False, "no_pull": False, "gateway": None, "renew": False, "requirements": None,
        "resume": None, "checkpoint_before_expiry": None,
    }  # fmt: skip
    words = shlex.split(line)
    i = 0
    while i < len(words):
        word = words[i]
        key = word.lstrip("-").replace("-", "_")
        if word in ("--no-push", "--no-pull", "--renew"):
            opts[key] = True
        elif word in ("--gpu", "--duration", "--session", "--gateway", "--push", "--pull",
                      "--requirements", "--resume", "--checkpoint-before-expiry"):  # fmt: skip
            if i + 1 >= len(words):
                raise InvalidArgument(f"{word} needs a value")
            value = words[i + 1]
            listed = key in ("push", "pull", "checkpoint_before_expiry")
            opts[key] = [n for n in value.split(",") if n] if listed else value
            i += 1
        else:
            raise InvalidArgument(
                f"Unknown option: {word}. Use --gpu, --duration, --session, --push, --pull, "
                "--no-push, --no-pull, --renew, --gateway, --requirements, --resume, "
                "--checkpoint-before-expiry"
            )
        i += 1
    return opts


@magics_class
class CumulusMagics(Magics):
    gateway_url = Unicode("", config=True, help="Gateway URL (default: $CUMULUS_GATEWAY_URL).")
    ref_threshold_mb = Float(
        64.0, config=True, help="Assigned values larger than this stay remote as RemoteRefs."
    )

    heartbeat_s = Float(
        10.0, config=True, help="Seconds between checks that a session's remote kernel lives."
    )

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self.sessions: dict[str, RemoteSession] = {}
        self.current = ""  # the session the last %%cumulus cell used: line commands act on it

    @property
    def ns(self) -> dict[str, Any]:
        assert self.shell is not None
        return self.shell.user_ns  # type: ignore[no-any-return]

    def _session(self, opts: dict[str, Any]) -> RemoteSession:
        name = opts["session"] or f"gpu-{opts['gpu']}"
        old = self.sessions.get(name)
        if old is not None and old.alive:
            self.current = name
            return old
        if old is not None and isinstance(old.lost, PartitionExpired) and not opts["renew"]:
            raise PartitionExpired(
                f"Session {name}: {old.lost} Run the cell with --renew for a new partition "
                "(the session's variables are sent again), with a longer --duration if needed."
            )
        if old is not None:
            print(f"Cumulus: {old.lost}. Starting a new session.", file=sys.stderr)
            with contextlib.suppress(CumulusError):
                old.release()  # a restarted kernel would still hold the old partition
        settings = GatewaySettings.resolve(opts["gateway"] or self.gateway_url or None)
        session = RemoteSession(name, settings, heartbeat=self.heartbeat_s)
        session.start(opts["gpu"], opts["duration"], self._progress)
        self.sessions[name] = session
        self.current = name
        if old is not None and opts["renew"]:
            again = {n: self.ns[n] for n in old.ledger.held if n in self.ns}
            session.push(again)
            if again:
                print(f"Cumulus: sent again: {', '.join(sorted(again))}", file=sys.stderr)
        return session

    def _target(self, args: list[str]) -> tuple[RemoteSession, list[str]]:
        """``--session NAME`` among the arguments, else the session the last cell used."""
        name, args = _take_option(args, "--session", self.current)
        session = self.sessions.get(name)
        if session is None:
            raise InvalidArgument(
                f"No session {name!r}: run a %%cumulus cell first" if name else
                "No session yet: run a %%cumulus cell first"
            )  # fmt: skip
        return session, args

    @staticmethod
    def _progress(line: str) -> None:
        print(f"Cumulus: {line}", file=sys.stderr, flush=True)

    @cell_magic
    def cumulus(self, line: str, cell: str) -> None:
        """Run the cell remotely in a GPU partition; see the module docstring."""
        try:
            self._run_cell(line, cell)
        except CumulusError as exc:
            if isinstance(exc, RemoteError):
                raise
            print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
            if isinstance(exc, PartitionExpired):
                print(
                    "Run the cell again for a new partition (add a longer --duration).",
                    file=sys.stderr,
                )

    def _run_cell(self, line: str, cell: str) -> None:
        opts = _options(line)
        session = self._session(opts)
        if opts["requirements"]:
            session.install(_requirements(opts["requirements"]), self._show)
        if opts["resume"]:
            self._remote(session, kernel_code.restore(opts["resume"]))
        if opts["checkpoint_before_expiry"]:
            expires = float(session.info()["expires_at"])
            names = opts["checkpoint_before_expiry"]
            self._remote(session, kernel_code.before_expiry(session.name, names, expires))
        names = cell_names(cell)
        ns = self.ns
        if not opts["no_push"]:
            wanted = [n for n in dict.fromkeys([*names.reads, *opts["push"]]) if n in ns]
            values = {
                n: ns[n] for n in wanted if not isinstance(ns[n], types.ModuleType | RemoteRef)
            }
            missing = [n for n in opts["push"] if n not in ns]
            if missing:
                raise InvalidArgument(
                    f"--push names what does not exist here: {', '.join(missing)}"
                )
            session.push(values)
        reply = session.execute(cell, self._show)
        content = reply["content"]
        if content.get("status") == "error":
            raise RemoteError.from_reply(content)
        if not opts["no_pull"]:
            limit = int(self.ref_threshold_mb * 2**20)
            assigned, _ = session.pull([n for n in names.assigns if n not in opts["pull"]], limit)
            explicit, _ = session.pull(opts["pull"])  # --pull always brings the value itself
            ns.update(assigned | explicit)

    def _remote(self, session: RemoteSession, source: str) -> None:
        """Run agent code (`protocol.code`) in the session's kernel; it prints its own line."""
        content = session.execute(source, self._show)["content"]
        if content.get("status") == "error":
            raise RemoteError.from_reply(content)

    @staticmethod
    def _show(message: dict[str, Any]) -> None:
        kind, content = message["msg_type"], message["content"]
        if kind == "stream":
            stream = sys.stderr if content.get("name") == "stderr" else sys.stdout
            stream.write(content.get("text", ""))
            stream.flush()
        elif kind in ("display_data", "execute_result", "update_display_data"):
            publish_display_data(content.get("data", {}), content.get("metadata", {}))  # type: ignore[no-untyped-call]
        # an "error" output is raised as RemoteError from the reply, with its traceback

    @line_magic("cumulus")  # type: ignore[arg-type]
    def cumulus_line(self, line: str) -> None:
        """%cumulus status | sessions | release [NAME] | push NAMES | pull NAMES |
        checkpoint [NAMES] [--name CHECKPOINT] | sync DIR | pip install PACKAGES"""
        words = shlex.split(line)
        command, args = (words[0], words[1:]) if words else ("status", [])
        try:
            if command in ("status", "sessions"):
                if not self.sessions:
                    print("No Cumulus sessions.")
                for name, session in self.sessions.items():
                    if not session.check():
                        print(f"{name}: lost: {session.lost}")
                        continue
                    info = session.info()
                    left = int(info.get("seconds_left", 0))
                    print(
                        f"{name}: partition {info.get('partition_id')} on {info.get('device')}, "
                        f"{info.get('amount')} GPU, {left // 60}m{left % 60:02d}s left"
                    )
            elif command == "release":
                for name in args or list(self.sessions):
                    if name not in self.sessions:
                        raise InvalidArgument(f"No session named {name}")
                    self.sessions.pop(name).release()
                    print(f"Released session {name}")
            elif command in ("sync", "pip"):
                session, args = self._target(args)
                if command == "sync":
                    if len(args) != 1:
                        raise InvalidArgument("Usage: %cumulus sync DIR")
                    print(f"Cumulus: {session.sync(args[0])}")
                else:
                    if args[:1] != ["install"] or len(args) < 2:
                        raise InvalidArgument("Usage: %cumulus pip install PACKAGE ...")
                    session.install(args[1:], self._show)
            elif command == "checkpoint":
                session, args = self._target(args)
                name, args = _take_option(args, "--name", session.name)
                names = [n for arg in args for n in arg.split(",") if n]
                self._remote(session, kernel_code.save_variables(name, names))
            elif command in ("push", "pull"):
                session, args = self._target(args)
                names = [n for arg in args for n in arg.split(",") if n]
                if command == "push":
                    missing = [n for n in names if n not in self.ns]
                    if missing:
                        raise InvalidArgument(f"Nothing named {', '.join(missing)} here")
                    sent = session.push({n: self.ns[n] for n in names}, force=True)
                    print(f"Pushed {', '.join(sent)}")
                else:
                    values, missing = session.pull(names)
                    self.ns.update(values)
                    print(
                        f"Pulled {', '.join(values) or 'nothing'}"
                        + (f"; not there: {', '.join(missing)}" if missing else "")
                    )
            else:
                raise InvalidArgument(
                    f"Unknown %cumulus command: {command}. "
                    "Use status, sessions, release, push, pull, checkpoint, sync, pip install"
                )
        except CumulusError as exc:
            print(f"{type(exc).__name__}: {exc}", file=sys.stderr)


def _take_option(args: list[str], option: str, default: str) -> tuple[str, list[str]]:
    """The value of ``option`` among ``args`` (else ``default``), and the other arguments."""
    if option not in args:
        return default, args
    at = args.index(option)
    if at + 1 >= len(args):
        raise InvalidArgument(f"{option} needs a value")
    return args[at + 1], args[:at] + args[at + 2 :]


def _requirements(spec: str) -> list[str]:
    """``--requirements FILE`` (a requirements file) or ``--requirements "pkg1 pkg2"``."""
    path = Path(spec).expanduser()
    if path.is_file():
        return ["-r", str(path.resolve())]
    return spec.replace(",", " ").split()


def load_ipython_extension(shell: Any) -> None:
    shell.register_magics(CumulusMagics)
