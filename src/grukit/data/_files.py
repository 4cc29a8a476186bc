"""File helpers shared by the readers: gzip-transparent reading, strict decoding with a useful
error, atomic writes, and the checks every labelled dataset goes through."""

from __future__ import annotations

import collections
import gzip
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from grukit.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"


def read_bytes(path: str | os.PathLike) -> bytes:
    """The file's content, decompressed if it is gzip (recognised by its magic bytes, not its name)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; check the path (the current directory is {Path.cwd()})")
    with open(path, "rb") as handle:
        head = handle.read(2)
    if head == GZIP_MAGIC:
        try:
            with gzip.open(path, "rb") as handle:
                return handle.read()
        except (OSError, EOFError) as error:
            raise DataError(f"{path}: corrupt or truncated gzip file ({error}); download or copy it again") from error
    return path.read_bytes()


def decode(raw: bytes, source: str, encoding: str = "utf-8") -> str:
    """Decode strictly; a bad byte raises DataError with its line and byte offset and suggests encoding=."""
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        bad = raw[error.start:error.end].hex(" ")
        hint = ' (for example encoding="cp1252" or encoding="latin-1")' if encoding.lower().replace("_", "-") in {
            "utf-8", "utf8", "utf-8-sig"} else ""
        raise DataError(
            f"{source}: not valid {encoding} at byte offset {error.start} (line {line}): byte(s) {bad}; "
            f"pass the file's real encoding as encoding=...{hint}") from error
    except LookupError as error:
        raise DataError(f"{source}: unknown encoding={encoding!r}; use a Python codec name such as 'utf-8' or 'cp1252'") from error
    return text.removeprefix("\ufeff")


def read_text(path: str | os.PathLike, encoding: str = "utf-8") -> str:
    return decode(read_bytes(path), str(path), encoding)


def read_json(path: str | os.PathLike, what: str):
    """The JSON document in ``path``; DataError naming the line and column where it is broken and
    telling to re-save ``what`` (e.g. "the tokenizer")."""
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON at line {error.lineno}, column {error.colno} ({error.msg}); "
                        f"the file is damaged, re-save {what}") from error


def _umask() -> int:
    """The process's umask, read without changing it where the system allows (os.umask can only be
    read by setting it, which races with other threads creating files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:  # Linux >= 4.7
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(handle)`` on a temporary file in the same folder, then rename it over ``path``: a
    crash or an exception in ``write`` leaves either the old file or the new one, never half of one.

    The file gets the permissions ``open()`` would give it: those of the file it replaces, else
    ``0o666 & ~umask`` (mkstemp creates its files 0o600, private to the user)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            if hasattr(os, "fchmod"):  # POSIX (Windows has no mode bits to fix)
                os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """``data`` into ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """``text`` as UTF-8 into ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def check_labelled(source: str, texts: list, labels: list, require_classes: int | None,
                   names: dict | None = None) -> None:
    """Raise DataError for an empty dataset or one with fewer classes than the task needs."""
    if not texts:
        raise DataError(f"{source}: no examples found; check the path and split, or that the files are not empty")
    if require_classes is not None:
        counts = collections.Counter(labels)
        if len(counts) < require_classes:
            names = names or {}
            found = ", ".join(f"{names.get(label, label)!r}: {count}" for label, count in sorted(counts.items()))
            raise DataError(
                f"{source}: {require_classes} classes are needed but the data has {len(counts)} "
                f"({found}); a file or folder of the other class is missing or empty, or pass require_classes=None "
                f"to accept it")
