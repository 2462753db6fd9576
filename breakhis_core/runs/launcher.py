"""Background jobs (training, slide analyses): one slot per kind of job, the launch of a job's process, cancel.

A :class:`JobSlot` is one job of a kind at a time, held by a lock file in the runs folder. State lives only on
disk, so a page reload, a second browser session or a restarted server all see the same job:

- the lock file (``<runs>/.job.lock`` for training, ``<runs>/.slide_job.lock`` for slide analyses) holds the
  holder's record (:class:`JobRecord`: at least ``pid`` and ``started``). It is written complete to a temporary
  file and linked into place (``os.link`` fails when the lock exists), so two simultaneous starts cannot both win
  and nobody reads a half-written lock. While a job is being prepared the record names the starting process;
  :meth:`JobSlot.hand_over` then replaces it (a rename) with the record of the launched process.
- a lock whose process is gone (or, for kinds that say so, whose job has ended) is stale and cleared. Checking,
  clearing and taking the lock happen under ``<lock>.guard`` (``files.locked``, released by the system when its
  holder dies), so a starter clearing a stale lock can never delete the lock another starter just took.

:func:`launch` starts a :class:`JobLaunch` (``python -m MODULE ARGS``) in a session of its own, its output
appended to a log file, at a lower priority than the app (``priority.py``). :func:`request_cancel` leaves the
flag file a job polls (``rundir.CANCEL_FILE`` in its folder).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from breakhis_core.errors import JobError
from breakhis_core.files import locked, read_json
from breakhis_core.lab.priority import lower_priority
from breakhis_core.runs.rundir import CANCEL_FILE, process_alive

PROJECT_ROOT = Path(__file__).resolve().parents[2]
"""The folder holding the ``breakhis_core`` package: job processes start there, so ``-m breakhis_core`` resolves."""
TF_LOG_LEVEL_ENV = "TF_CPP_MIN_LOG_LEVEL"
QUIET_TF_LOG_LEVEL = "2"
"""TensorFlow's C++ log level in job processes unless the environment sets one (2: errors only)."""


class JobRecord(Protocol):
    """What a job slot's lock file holds: the holder's process and start time, and what it works on."""

    pid: int | None
    started: str | None

    def to_dict(self) -> dict: ...

    def describe(self) -> str:
        """What the holder works on, in words, for the refusal of a second job ("run 2025…", "case-7-ab12…")."""
        ...


R = TypeVar("R", bound=JobRecord)


@dataclass(frozen=True)
class JobSlot(Generic[R]):
    """One background job of a kind at a time: the lock file ``root/lock_name`` and its guard.

    Attributes:
        root: the runs folder holding the lock file.
        lock_name: the lock file's name.
        kind: the job's kind in words ("training job", "slide analysis"), for the refusal message.
        read_record: the lock file's JSON object → its record (None when it is not one).
        still_running: beyond its process being alive, whether the holder's job goes on (slide analyses: its
            folder's status has not ended); the holder's lock is stale when this is False.
    """

    root: Path
    lock_name: str
    kind: str
    read_record: Callable[[dict], R]
    still_running: Callable[[R], bool] = field(default=lambda record: True)

    @property
    def lock_file(self) -> Path:
        return Path(self.root) / self.lock_name

    @property
    def guard_file(self) -> Path:
        return Path(self.root) / f"{self.lock_name}.guard"

    def _live(self, raw) -> R | None:
        """The record of ``raw`` (the lock file's content) when its holder is alive and its job goes on, else None."""
        if not isinstance(raw, dict):
            return None
        record = self.read_record(raw)
        if process_alive(record.pid, record.started, reap=True) and self.still_running(record):
            return record
        return None

    def holder(self) -> R | None:
        """The live holder's record, or None (a stale or unreadable lock is removed)."""
        if not self.lock_file.exists():
            return None
        live = self._live(read_json(self.lock_file))
        if live is not None:
            return live
        with locked(self.guard_file):
            return self._clear_stale()

    def _clear_stale(self) -> R | None:
        """Under the guard: the live holder, or None after removing a stale or unreadable lock."""
        raw = read_json(self.lock_file)
        if raw is None and not self.lock_file.exists():
            return None
        live = self._live(raw)
        if live is None:
            self.lock_file.unlink(missing_ok=True)  # its process is gone (or unreadable: the lock is always written whole)
        return live

    def refusal(self, holder: R, received: str) -> JobError:
        """The error of a second start while ``holder`` runs: what it works on, its pid and start, what to do."""
        return JobError(f"a {self.kind} is already running: {holder.describe()}, pid {holder.pid}, started "
                        f"{holder.started or '?'}; wait for it to finish or cancel it. Received: {received}")

    def acquire(self, record: R, received: str) -> None:
        """Take the slot with ``record`` (a stale lock is cleared first).

        Args:
            record: the starting process's record.
            received: what the refused caller asked for, for the refusal message ("slide=case-7.tiff").

        Raises:
            JobError: naming the running job when another holds the slot.
        """
        Path(self.root).mkdir(parents=True, exist_ok=True)
        with locked(self.guard_file):
            holder = self._clear_stale()
            if holder is not None:
                raise self.refusal(holder, received)
            try:
                self._write(record, replace=False)
            except FileExistsError:  # only when a starter without the guard raced us
                raise self.refusal(self.read_record(read_json(self.lock_file) or {}), received) from None

    def hand_over(self, record: R) -> None:
        """Replace the held lock's record (the starter's) with the launched process's, in one rename."""
        self._write(record, replace=True)

    def release(self) -> None:
        self.lock_file.unlink(missing_ok=True)

    @contextmanager
    def released_on_failure(self) -> Iterator[None]:
        """A block run holding the slot (preparing and launching a job): when it raises, the lock is released."""
        try:
            yield
        except BaseException:
            self.release()
            raise

    def _write(self, record: R, replace: bool) -> None:
        """Put a complete lock file in place: linked (fails when one exists) or, with ``replace``, renamed over it."""
        fd, tmp = tempfile.mkstemp(prefix=f"{self.lock_name}.", suffix=".tmp", dir=self.root)
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(record.to_dict(), handle)
                handle.flush()
                os.fsync(handle.fileno())
            if replace:
                os.replace(tmp, self.lock_file)
            else:
                os.link(tmp, self.lock_file)  # atomic; FileExistsError when another job holds the slot
        finally:
            Path(tmp).unlink(missing_ok=True)


@dataclass(frozen=True)
class JobLaunch:
    """A background process to start: ``python -m module *args``.

    Attributes:
        module: the module run with ``-m`` ("breakhis_core", "breakhis_core.slides.jobs").
        args: its arguments.
        log_file: the process's stdout and stderr are appended to it.
        python: the interpreter.
        env: variables set for the process on top of this process's environment (TensorFlow's C++ log level
            defaults to :data:`QUIET_TF_LOG_LEVEL`).
    """

    module: str
    args: tuple[str, ...]
    log_file: Path
    python: str = sys.executable
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def argv(self) -> list[str]:
        return [self.python, "-m", self.module, *self.args]


def launch(job: JobLaunch) -> int:
    """Start ``job`` in a session of its own (a page reload or a server stop does not signal it), its output
    appended to its log file, at the background priority. Returns its pid."""
    env = {**os.environ, TF_LOG_LEVEL_ENV: os.environ.get(TF_LOG_LEVEL_ENV, QUIET_TF_LOG_LEVEL), **job.env}
    with open(job.log_file, "ab") as output:
        process = subprocess.Popen(job.argv, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True, cwd=PROJECT_ROOT, env=env)
    lower_priority(process.pid)  # interactive pages first: the job yields the CPU to them
    return process.pid


def request_cancel(folder: str | Path) -> None:
    """Ask the job working in ``folder`` to stop at its next batch (it polls ``folder/cancel``)."""
    (Path(folder) / CANCEL_FILE).touch()


def cancel_requested(folder: str | Path) -> bool:
    return (Path(folder) / CANCEL_FILE).exists()
