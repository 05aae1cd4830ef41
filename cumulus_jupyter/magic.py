"""``%%cumulus`` and ``%cumulus``: run a cell on a fraction of a remote GPU.

::

    %load_ext cumulus_jupyter
    %%cumulus --gpu 0.5 --duration 30m
    y = x @ x.T          # x is pushed (it changed since last time); y comes back

Consecutive cells with the same ``--session`` (default: one per GPU amount) share one remote
kernel and partition. ``%cumulus status | sessions | release [NAME] | push NAMES | pull NAMES |
extend DURATION``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import functools
import shlex
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument as _untyped_argument
from IPython.core.magic_arguments import magic_arguments as _untyped_magic_arguments
from traitlets import Float, Unicode

from cumulus_jupyter import partitions, variables
from cumulus_jupyter.cells import CellNames, cell_names
from cumulus_jupyter.connection import GatewaySettings
from cumulus_jupyter.errors import (
    CumulusError,
    InvalidArgument,
    PartitionExpired,
    RemoteError,
    in_cell,
)
from cumulus_jupyter.frontend import LocalFrontend, Status
from cumulus_jupyter.protocol import code as kernel_code
from cumulus_jupyter.session import RemoteSession

F = TypeVar("F", bound=Callable[..., Any])


def _argument(*args: Any, **kwargs: Any) -> Callable[[F], F]:
    """IPython's `magic_arguments.argument`, typed."""
    return _untyped_argument(*args, **kwargs)  # type: ignore[no-untyped-call]


def _magic_arguments(name: str) -> Callable[[F], F]:
    """IPython's `magic_arguments.magic_arguments`, typed (``name`` as the usage line says)."""
    return _untyped_magic_arguments(name)  # type: ignore[no-untyped-call]


#: the options of ``%%cumulus`` that list names
_LISTED = ("push", "pull", "checkpoint_before_expiry")


_CELLS_KEPT = 128


def _names(value: str) -> list[str]:
    return [n for n in value.split(",") if n]


def _parse(parser: argparse.ArgumentParser, line: str, cell: bool = True) -> argparse.Namespace:
    """``line`` (shell quoting, as before) through a magic's parser; a bad option is one
    `InvalidArgument`, never a usage traceback."""
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise InvalidArgument(f"Cannot read the options: {exc}") from None
    try:
        return parser.parse_args(words)
    except UsageError as exc:
        message = str(exc)
        if message.startswith("unrecognized arguments: "):
            word = message.removeprefix("unrecognized arguments: ").split()[0]
            if not cell:
                raise InvalidArgument(
                    f"Unknown option: {word}. Use --session, --name (see %cumulus?)"
                ) from None
            raise InvalidArgument(
                f"Unknown option: {word}. Use --gpu, --duration, --session, --push, --pull, "
                "--no-push, --no-pull, --renew, --gateway, --requirements, --resume, "
                "--checkpoint-before-expiry, --quiet (see %%cumulus?)"
            ) from None
        if message.startswith("argument ") and "expected one argument" in message:
            option = message.removeprefix("argument ").split(":")[0].split("/")[-1]
            raise InvalidArgument(f"{option} needs a value") from None
        raise InvalidArgument(f"{message} (see {'%%cumulus' if cell else '%cumulus'}?)") from None


def _parser_of(magic: Any) -> argparse.ArgumentParser:
    """The parser `magic_arguments` gave a magic (its ``?`` help is made from it)."""
    return magic.parser  # type: ignore[no-any-return]


def _options(line: str) -> dict[str, Any]:
    """The cell magic's options: a fresh copy, parsed once per distinct line (a notebook runs
    the same few lines over and over)."""
    return {k: list(v) if isinstance(v, list) else v for k, v in _parsed(line).items()}


@functools.lru_cache(maxsize=64)
def _parsed(line: str) -> dict[str, Any]:
    opts = vars(_parse(_parser_of(CumulusMagics.cumulus), line))
    for key in _LISTED:
        value = opts[key]
        opts[key] = _names(value) if isinstance(value, str) else list(value or [])
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
        self.frontend = LocalFrontend(shell)
        self.status = Status(self.frontend, quiet=True)  # the cell's; a new one per cell
        self._cells: dict[str, CellNames] = {}  # analysed cells, oldest first (`_analysed`)
        # a notebook closed or restarted gives its partitions back (a crash cannot)
        atexit.register(_release_at_exit, weakref.ref(self))

    def release_all(self, timeout: float = 4.0) -> None:
        """Release every session at once, waiting at most ``timeout`` seconds in all."""
        sessions, self.sessions = list(self.sessions.values()), {}
        for session in sessions:
            self.frontend.forget(session)
        RemoteSession.release_many(sessions, timeout)

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
            self.status.line(f"{old.lost}. Starting a new session.")
            self.frontend.forget(old)
            with contextlib.suppress(CumulusError):
                old.release()  # a restarted kernel would still hold the old partition
        settings = GatewaySettings.resolve(opts["gateway"] or self.gateway_url or None)
        session = RemoteSession(name, settings, heartbeat=self.heartbeat_s)
        session.on_comm = lambda message: self.frontend.comm(message, session)
        session.start(opts["gpu"], opts["duration"], self._progress)
        self.sessions[name] = session
        self.current = name
        if old is not None and opts["renew"]:
            again = {n: self.ns[n] for n in old.ledger.held if n in self.ns}
            session.push(again)
            if again:
                self.status.line(f"sent again: {', '.join(sorted(again))}")
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

    def _progress(self, line: str) -> None:
        """Cumulus's news for the cell (any thread): its one status display."""
        self.status.line(line)

    @cell_magic
    @_magic_arguments("%cumulus")
    @_argument("--gpu", default="0.5", help="GPU amount of a new session: 0.1-0.9 or 1-8.")
    @_argument("--duration", default="1h", help="How long a new session's partition lasts.")
    @_argument(
        "--session",
        default=None,
        help="Cells with the same session share one remote kernel (default: gpu-AMOUNT).",
    )
    @_argument("--push", default="", help="Names to send (comma-separated), besides those read.")
    @_argument(
        "--pull", default="", help="Names to bring back whatever their size (comma-separated)."
    )
    @_argument("--no-push", action="store_true", help="Send no variables.")
    @_argument("--no-pull", action="store_true", help="Bring no variables back.")
    @_argument("--gateway", default=None, help="Gateway URL (default: $CUMULUS_GATEWAY_URL).")
    @_argument(
        "--renew",
        action="store_true",
        help="After an expiry: a new partition, the session's variables sent again.",
    )
    @_argument(
        "--requirements",
        default=None,
        help='pip-install into an overlay first: a requirements file or "pkg1 pkg2".',
    )
    @_argument("--resume", default=None, help="Restore checkpoint NAME's variables first.")
    @_argument(
        "--checkpoint-before-expiry",
        default=None,
        help="Checkpoint these remote names (comma-separated) a minute before expiry.",
    )
    @_argument("--quiet", action="store_true", help="Hide Cumulus's own status lines.")
    def cumulus(self, line: str, cell: str) -> None:
        """Run the cell remotely in a GPU partition: the names it reads go there, the names it
        assigns come back, its outputs, widgets and input() are live here.

        ``%%cumulus --gpu 0.5 --duration 30m``. Consecutive cells with the same ``--session``
        share one remote kernel; ``%cumulus?`` lists the line commands.
        """
        try:
            self._run_cell(line, cell)
        except CumulusError as exc:
            hints = (
                ["Run the cell again for a new partition (add a longer --duration)."]
                if isinstance(exc, PartitionExpired) and "--renew" not in str(exc)
                else []
            )
            raise in_cell(exc, *hints) from None

    def _run_cell(self, line: str, cell: str) -> None:
        self.status = Status(self.frontend, quiet=True)
        opts = _options(line)
        self.status.quiet = opts["quiet"]
        session = self._session(opts)
        self.frontend.begin(session)
        if opts["requirements"]:
            session.install(_requirements(opts["requirements"]), self._show)
        if opts["resume"]:
            self._remote(session, kernel_code.restore(opts["resume"]))
        if opts["checkpoint_before_expiry"]:
            expires = float(session.info()["expires_at"])
            names = opts["checkpoint_before_expiry"]
            self._remote(session, kernel_code.before_expiry(session.name, names, expires))
        ns = self.ns
        assert self.shell is not None
        found = variables.plan(self._analysed(cell), ns, self.shell.user_ns_hidden, opts["push"])
        if not opts["no_push"]:
            missing = [n for n in opts["push"] if n not in ns]
            if missing:
                raise InvalidArgument(
                    f"--push names what does not exist here: {', '.join(missing)}"
                )
            carried = variables.send(session, found, ns)
        else:
            carried = None
        limit = session.value_limit(int(self.ref_threshold_mb * 2**20))
        pull = (
            None
            if opts["no_pull"]
            else variables.inline_pull(session, found, limit, opts["pull"], carried)
        )
        results: list[dict[str, Any]] = []

        def show(message: dict[str, Any]) -> None:
            if message["msg_type"] == "execute_result":
                results.append(message)
            self._show(message)

        reply = session.execute(cell, show, carry=carried, pull=pull)
        content = reply["content"]
        failed = content.get("status") == "error"
        if not opts["no_pull"]:  # after an error too: what ran before it stays, as it would here
            with contextlib.suppress(CumulusError) if failed else contextlib.nullcontext():
                variables.bring_back(
                    session, found, ns, limit, skip=opts["pull"], reply=reply,
                    note=self.status.line,
                )  # fmt: skip
                explicit, _ = session.pull(opts["pull"])  # --pull always brings the value itself
                ns.update(explicit)
            if results and not failed:
                self._last_result(session, limit)
        if failed:
            raise RemoteError.from_reply(content)

    def _last_result(self, session: RemoteSession, limit: int) -> None:
        """A cell that ended in an expression (its ``Out[n]`` shown): its value is the remote
        ``_``, which becomes this notebook's ``_``, ``_N`` and ``Out[N]`` as a local cell's would
        (one pull, only for such a cell; over the size limit, a `RemoteRef`)."""
        with contextlib.suppress(CumulusError):
            values, _ = session.pull(["_"], limit)
            if "_" in values:
                assert self.shell is not None
                self.shell.displayhook.update_user_ns(values["_"])  # type: ignore[no-untyped-call]

    def _analysed(self, cell: str) -> CellNames:
        """`cell_names` of a cell as this shell transforms it; remembered for the last
        `_CELLS_KEPT` distinct cells (a cell run again is not analysed again)."""
        names = self._cells.pop(cell, None)
        if names is None:
            assert self.shell is not None
            names = cell_names(cell, self.shell.transform_cell(cell))  # type: ignore[no-untyped-call]
        self._cells[cell] = names  # now the most recent
        while len(self._cells) > _CELLS_KEPT:
            del self._cells[next(iter(self._cells))]
        return names

    def _remote(self, session: RemoteSession, source: str) -> None:
        """Run agent code (`protocol.code`) in the session's kernel; it prints its own line."""
        content = session.execute(source, self._show)["content"]
        if content.get("status") == "error":
            raise RemoteError.from_reply(content)

    def _show(self, message: dict[str, Any]) -> None:
        """An output of the cell's remote kernel, shown as the local kernel's own."""
        self.frontend.show(message)

    @line_magic("cumulus")  # type: ignore[arg-type]
    @_magic_arguments("cumulus")
    @_argument(
        "command",
        nargs="?",
        default="status",
        help=(
            "status: each session's partition and time left (the default); "
            "sessions: the same; "
            "release [NAME ...]: give sessions' partitions back (all without a name); "
            "push NAMES: send these variables now, changed or not; "
            "pull NAMES: bring these variables back; "
            "checkpoint [NAMES] [--name CHECKPOINT]: checkpoint remote variables; "
            "sync DIR: upload a directory into the remote working directory; "
            "pip install PACKAGE ...: pip-install into the session's overlay; "
            "extend DURATION: add DURATION (90, 30m, 2h) to the session's partition"
        ),
    )
    @_argument("args", nargs=argparse.REMAINDER, help="The command's arguments.")
    @_argument(
        "--session", default=None, help="The session to act on (default: the last one used)."
    )
    @_argument("--name", default=None, help="checkpoint: the checkpoint's name.")
    def cumulus_line(self, line: str) -> None:
        """Act on the ``%%cumulus`` sessions: status, sessions, release, push, pull,
        checkpoint, sync, pip install, extend (``%%cumulus?`` lists the cell's options)."""
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise in_cell(InvalidArgument(f"Cannot read the command: {exc}")) from None
        command, args = (words[0], words[1:]) if words else ("status", [])
        try:
            if command.startswith("-"):  # options first: the parser sorts them out
                parsed = _parse(_parser_of(self.cumulus_line), line, cell=False)
                command, args = parsed.command, list(parsed.args)
                for option in ("session", "name"):
                    if getattr(parsed, option):
                        args += [f"--{option}", getattr(parsed, option)]
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
                    session = self.sessions.pop(name)
                    self.frontend.forget(session)
                    session.release()
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
            elif command == "extend":
                session, args = self._target(args)
                duration = partitions.duration_of(args)
                print(f"Cumulus: {partitions.describe(session.extend(duration), duration)}")
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
                    "Use status, sessions, release, push, pull, checkpoint, sync, pip install, "
                    "extend"
                )
        except CumulusError as exc:
            raise in_cell(exc) from None


def _release_at_exit(ref: weakref.ref[CumulusMagics]) -> None:
    magics = ref()
    if magics is not None:
        magics.release_all()


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
