"""Crash-safe file writes: write to a temporary file in the same folder, fsync, then rename.

A reader (the UI polling a run, the registry listing runs) never sees a half-written file:

- :func:`write_bytes_atomic` leaves either the old complete file or the new complete file;
  its temporary file (``.<name>.<random>.tmp``) is removed on any error, and a full disk
  raises :class:`~breakhis_core.errors.DiskSpaceError` with a one-line reason;
- :func:`append_jsonl` appends one line with one write; a line torn by an earlier crash is
  ended first, so it never swallows the next record, and a failed append is undone;
- :func:`try_lock` / :func:`locked` are exclusive file locks (the ``filelock`` library: ``flock`` on POSIX,
  ``msvcrt`` locking on Windows) that the operating system releases when the holding process dies, even by
  ``kill -9``: they never go stale.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from filelock import FileLock, Timeout

from breakhis_core.errors import DiskSpaceError

DISK_FULL_ERRNOS = frozenset(e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if e is not None)
"""``errno`` values meaning the disk (or the user's quota) is full."""
TEMP_PREFIXES = (".tmp-",)
"""Leading parts of temporary file names used by atomic writers here and in ``callbacks.py`` (model files)."""


def format_bytes(size: float) -> str:
    """A byte count for messages, in binary units: "812 bytes", "3.0 KiB", "1.5 MiB", "4.0 GiB", "1,536.0 GiB"."""
    if size < 1024:
        return f"{size:.0f} bytes"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if size >= scale:
            return f"{size / scale:,.1f} {unit}"
    return f"{size / 2**10:,.1f} KiB"


def is_disk_full(exc: BaseException | None) -> bool:
    """True when ``exc``, or an exception it was raised from, is "no space left" or "quota exceeded"."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def disk_space_error(path: str | Path) -> DiskSpaceError:
    """A :class:`DiskSpaceError` saying which file could not be written and how much space is free."""
    path = Path(path)
    folder = next((p for p in (path.parent, *path.parents) if p.exists()), Path("."))
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:,.0f} MiB free"
    except OSError:
        free = "free space unknown"
    return DiskSpaceError(f"not enough disk space to write {path.name} in {path.parent} ({free}); "
                          f"free some space and try again. Received: {path}")


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (same-folder temp file + fsync + os.replace).

    Raises:
        DiskSpaceError: when the disk is full; ``path`` is left as it was and no temp file remains.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        tmp = None
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if is_disk_full(exc):
            raise disk_space_error(path) from exc
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, value) -> None:
    write_text_atomic(path, json.dumps(value, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | Path, default=None):
    """Read a JSON file; return ``default`` when it is missing or not valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one JSON line with a single write and flush it to disk (history logs, one writer).

    A torn last line (left by a crash or a full disk) is ended with a newline first, so the new
    record stays readable. When the write fails, the file is cut back to its previous length.

    Raises:
        DiskSpaceError: when the disk is full (the file is unchanged).
    """
    line = (json.dumps(record, default=str) + "\n").encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        try:
            written = os.write(fd, line)
            if written != len(line):
                raise OSError(errno.ENOSPC, f"short write ({written} of {len(line)} bytes)")
            os.fsync(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            if is_disk_full(exc):
                raise disk_space_error(path) from exc
            raise
    finally:
        os.close(fd)


def read_jsonl(path: str | Path) -> list[dict]:
    """Read JSON lines, skipping torn or empty lines left by a crash."""
    records = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return records
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def remove_temp_files(folder: str | Path) -> list[Path]:
    """Delete temporary files of interrupted atomic writes directly in ``folder``; returns them.

    Only names this package writes are touched: ``.<name>.<random>.tmp`` and ``.tmp-<pid>-<name>``.
    """
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        temporary = name.startswith(TEMP_PREFIXES) or (name.startswith(".") and name.endswith(".tmp"))
        if temporary and entry.is_file() and not entry.is_symlink():
            with contextlib.suppress(OSError):
                entry.unlink()
                removed.append(entry)
    return removed


# ----------------------------------------------------------------------------- locks


def try_lock(path: str | Path) -> FileLock | None:
    """Take an exclusive lock on ``path`` (created if needed) without waiting.

    Returns:
        The held lock (pass it to :func:`unlock`), or None when another process, or another lock of the same
        file in this process, holds it. The operating system releases the lock when the holder exits, however
        it ends.
    """
    lock = FileLock(path, thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return None
    return lock


def unlock(lock: FileLock | None) -> None:
    """Release a lock taken with :func:`try_lock`."""
    if lock is not None:
        lock.release()


@contextlib.contextmanager
def locked(path: str | Path):
    """Hold an exclusive lock on ``path`` (created if needed), waiting for it, for a ``with`` block."""
    with FileLock(path, thread_local=False):
        yield


def sha256(data: bytes) -> str:
    """Hex SHA-256 of a file's bytes (any bytes-like object): how the audit log, the case store and uploads name an
    image file."""
    return hashlib.sha256(memoryview(data)).hexdigest()
