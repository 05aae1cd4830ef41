"""A directory job's archive: the zip the client packs, the gateway checks and the agent unpacks.

The seed's job format: a zip whose top level holds ``main.py``, defining ``main()`` (whose
return value is the job's result), and optionally ``requirements.txt`` (installed first). The
same checks run on all three sides (the gateway's are the ones that count), and each refusal
is one `InvalidArgument` line:

- the zip is at most `MAX_ARCHIVE_BYTES` as sent and `MAX_UNPACKED_BYTES` unpacked (what its
  directory declares; extraction reads no more than declared), so a zip bomb is refused unread;
- no member lands outside the target: no absolute name, drive or backslash, no ``..`` part, no
  symbolic link or other special file, no duplicate, no encrypted member;
- ``main.py`` (at most `MAX_MAIN_BYTES`) parses and defines ``main`` at module level (a
  ``def``, an assignment or an import);
- ``requirements.txt`` lines are pip arguments, but not ones that name other files (``-r``,
  ``-c``, ``-e``), which do not travel with the job.

Hidden files and folders (and ``__pycache__``) are left out when packing, as for a sync.
"""

from __future__ import annotations

import ast
import io
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from cumulus_jupyter.errors import InvalidArgument, TooLarge

MAIN = "main.py"
REQUIREMENTS = "requirements.txt"
MAX_ARCHIVE_BYTES = 16 * 2**20
MAX_UNPACKED_BYTES = 128 * 2**20
MAX_MEMBERS = 10_000
#: main.py is parsed where it is checked (the gateway too): kept small, data goes beside it
MAX_MAIN_BYTES = 2**20
#: what zipfile and zlib raise on a damaged archive or member
_DAMAGED = (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError,
            NotImplementedError, RuntimeError, zlib.error, struct.error)  # fmt: skip
#: the mime type of the display the agent publishes with the job's result document
RESULT_MIME = "application/vnd.cumulus.job-result+json"
#: the comm target the agent registers for a job's zip (`cumulus_jupyter.agent.job`)
JOB_TARGET = "cumulus.job"
_AGENT = "cumulus_jupyter.agent.job"
#: executed first: registers `JOB_TARGET`
REGISTER = f"import {_AGENT} as _cumulus_job\n_cumulus_job.register()"


def run_code(info: dict[str, object]) -> str:
    """Executed once the zip was sent to `JOB_TARGET`: unpack it, call ``main()``, publish the
    result document (``info``: the ``system_info`` the gateway knows)."""
    return f"import {_AGENT} as _cumulus_job\n_cumulus_job.run({info!r})"


#: a result that is not JSON-serialisable is kept pickled up to this many bytes
MAX_PICKLE_BYTES = 32 * 2**20
_FILE_OPTIONS = ("-r", "--requirement", "-c", "--constraint", "-e", "--editable")


@dataclass(frozen=True)
class JobArchive:
    """What a checked archive holds."""

    files: int
    bytes: int  # unpacked
    requirements: list[str] = field(default_factory=list)


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def _skipped(path: Path, root: Path) -> bool:
    parts = path.relative_to(root).parts
    return any(part.startswith(".") or part == "__pycache__" for part in parts)


def _files(root: Path) -> list[Path]:
    files = []
    for path in sorted(root.rglob("*")):
        if _skipped(path, root):
            continue
        if path.is_symlink():
            raise InvalidArgument(
                f"{path} is a symbolic link: a job directory's links are not followed "
                "(copy the file in instead)"
            )
        if path.is_file():
            files.append(path)
    return files


def pack(directory: Path | str) -> bytes:
    """``directory`` as a job archive; `InvalidArgument` when it is not a job directory."""
    root = Path(directory).resolve()
    if not root.is_dir():
        raise InvalidArgument(f"Cannot submit {directory}: not a directory")
    main = root / MAIN
    if not main.is_file() or main.is_symlink():
        raise InvalidArgument(
            f"{directory} has no {MAIN}: a job directory needs {MAIN} defining main()"
        )
    if main.stat().st_size > MAX_MAIN_BYTES:
        raise InvalidArgument(f"{directory}/{MAIN} is over {_mib(MAX_MAIN_BYTES)}")
    check_main(main.read_bytes(), f"{directory}/{MAIN}")
    if (root / REQUIREMENTS).is_file():
        requirements((root / REQUIREMENTS).read_bytes())
    files = _files(root)
    total = sum(p.stat().st_size for p in files)
    if total > MAX_UNPACKED_BYTES:
        raise TooLarge(
            f"{directory} holds {_mib(total)}; a job directory is capped at "
            f"{_mib(MAX_UNPACKED_BYTES)}"
        )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in files:
            zf.write(path, path.relative_to(root).as_posix())
    data = buffer.getvalue()
    if len(data) > MAX_ARCHIVE_BYTES:
        raise TooLarge(
            f"{directory} packs to {_mib(len(data))}; a job's archive is capped at "
            f"{_mib(MAX_ARCHIVE_BYTES)}"
        )
    return data


def _check_name(info: zipfile.ZipInfo) -> None:
    name = info.filename
    path = PurePosixPath(name)
    unsafe = (
        not name.strip()
        or "\\" in name
        or "\0" in name
        or path.is_absolute()
        or (len(name) > 1 and name[1] == ":")  # a drive: C:evil
        or ".." in path.parts
    )
    if unsafe:
        raise InvalidArgument(f"Refused job archive: {name!r} would land outside the job")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise InvalidArgument(f"Refused job archive: {name!r} is a symbolic link")
    if mode and stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise InvalidArgument(f"Refused job archive: {name!r} is a special file")
    if info.flag_bits & 0x1:
        raise InvalidArgument(f"Refused job archive: {name!r} is encrypted")


def _open(data: bytes) -> zipfile.ZipFile:
    if len(data) > MAX_ARCHIVE_BYTES:
        raise TooLarge(
            f"Refused job archive: {_mib(len(data))}, over the {_mib(MAX_ARCHIVE_BYTES)} cap"
        )
    try:
        return zipfile.ZipFile(io.BytesIO(data))
    except _DAMAGED as exc:
        raise InvalidArgument(f"Refused job archive: not a zip file ({exc})") from None


def _check_members(zf: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    members = zf.infolist()
    if len(members) > MAX_MEMBERS:
        raise InvalidArgument(f"Refused job archive: over {MAX_MEMBERS} members")
    seen: set[str] = set()
    for info in members:
        _check_name(info)
        key = info.filename.rstrip("/")
        if key in seen:
            raise InvalidArgument(f"Refused job archive: {info.filename!r} appears twice")
        seen.add(key)
    total = sum(info.file_size for info in members)
    if total > MAX_UNPACKED_BYTES:
        raise TooLarge(
            f"Refused job archive: {_mib(total)} unpacked, over the {_mib(MAX_UNPACKED_BYTES)} cap"
        )
    return members


def _read(zf: zipfile.ZipFile, name: str) -> bytes:
    try:
        return zf.read(name)
    except _DAMAGED as exc:  # a bad CRC, a truncated or undecodable member
        raise InvalidArgument(f"Refused job archive: {name} cannot be read ({exc})") from None


def inspect(data: bytes) -> JobArchive:
    """Check a job archive (see the module's rules); what it holds, or `InvalidArgument`."""
    with _open(data) as zf:
        members = _check_members(zf)
        names = {info.filename for info in members}
        if MAIN not in names:
            raise InvalidArgument(
                f"Refused job archive: no {MAIN} at its top level (a job needs {MAIN} "
                "defining main())"
            )
        if zf.getinfo(MAIN).file_size > MAX_MAIN_BYTES:
            raise InvalidArgument(f"Refused job archive: {MAIN} is over {_mib(MAX_MAIN_BYTES)}")
        check_main(_read(zf, MAIN), MAIN)
        needs = requirements(_read(zf, REQUIREMENTS)) if REQUIREMENTS in names else []
        files = [info for info in members if not info.is_dir()]
        return JobArchive(len(files), sum(i.file_size for i in files), needs)


def extract(data: bytes, destination: Path | str) -> JobArchive:
    """Check the archive, then unpack it into ``destination`` (created if needed)."""
    summary = inspect(data)
    target = Path(destination)
    target.mkdir(parents=True, exist_ok=True)
    with _open(data) as zf:
        try:
            zf.extractall(target)
        except _DAMAGED as exc:
            raise InvalidArgument(f"Refused job archive: it cannot be unpacked ({exc})") from None
    return summary


def _defines_main(body: list[ast.stmt]) -> bool:
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "main":
            return True
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "main" for t in targets):
                return True
        if isinstance(node, ast.Import | ast.ImportFrom) and any(
            (alias.asname or alias.name) == "main" for alias in node.names
        ):
            return True
        nested = [getattr(node, name, []) for name in ("body", "orelse", "finalbody")]
        if isinstance(node, ast.Try):
            nested += [handler.body for handler in node.handlers]
        if not isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and any(
            _defines_main(block) for block in nested if isinstance(block, list)
        ):
            return True
    return False


def check_main(source: bytes, where: str) -> None:
    """`InvalidArgument` unless ``source`` parses and defines ``main`` at module level."""
    try:
        tree = ast.parse(source, filename=where)
    except SyntaxError as exc:
        raise InvalidArgument(f"{where} does not parse: {exc.msg} (line {exc.lineno})") from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise InvalidArgument(f"{where} does not parse: {type(exc).__name__}") from None
    if not _defines_main(tree.body):
        raise InvalidArgument(
            f"{where} has no main() function: define def main(): ... returning the job's result"
        )


def requirements(text: bytes) -> list[str]:
    """``requirements.txt`` as pip arguments; `InvalidArgument` for a line naming a file."""
    try:
        lines = text.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise InvalidArgument(f"{REQUIREMENTS} is not UTF-8 text") from None
    out: list[str] = []
    for number, line in enumerate(lines, 1):
        words = line.split(" #")[0].split() if not line.lstrip().startswith("#") else []
        for word in words:
            short = len(word) > 2 and word[:2] in _FILE_OPTIONS  # -rother.txt
            if word in _FILE_OPTIONS or short or word.startswith(_FILE_OPTIONS[1::2]):
                raise InvalidArgument(
                    f"{REQUIREMENTS} line {number}: {word} names another file, which does not "
                    "travel with the job; list the requirements themselves"
                )
        out.extend(words)
    return out
