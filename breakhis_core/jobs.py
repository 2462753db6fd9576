"""Training as a background process that any page can poll, one job at a time.

``start_job`` prepares the run directory in the calling process (so bad data or missing
weights fail at once, with the message), then launches ``python -m breakhis_core resume RUN_DIR``
as a separate process session. State lives only on disk, so a page reload, a second browser
session or a restarted server all see the same job:

- ``<runs>/.job.lock``: ``{"pid", "run_id", "run_dir", "started"}`` of the job holding the slot,
  created with O_EXCL so two simultaneous starts cannot both win; a lock whose process is gone
  is stale and cleared.
- ``<run_dir>/status.json``, ``progress.json``, ``history_*.jsonl``: written by the trainer.
- ``<run_dir>/train.log``: the process's stdout and stderr.
- ``<run_dir>/cancel``: ``cancel_job`` creates it; training stops at the next batch boundary.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .config import TrainConfig
from .errors import JobError
from .files import read_json, read_jsonl, write_json_atomic
from .registry import process_alive
from .train import CANCEL_FILE, now_iso, prepare_run

LOCK_FILE = ".job.lock"


def pid_alive(pid: int | None, started: str | None = None) -> bool:
    """True when process ``pid`` runs (see ``registry.process_alive``); reaps it first if it is our finished child."""
    if not pid:
        return False
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False  # our child, just reaped
    except ChildProcessError:
        pass  # not our child
    except OSError:
        return False
    return process_alive(pid, started)


def current_job(runs_root: str | Path) -> dict | None:
    """The running job's lock record, or None (a stale lock is removed)."""
    lock = Path(runs_root) / LOCK_FILE
    record = read_json(lock)
    if record is None:
        if lock.exists():  # unreadable lock: written by a crashed starter
            lock.unlink(missing_ok=True)
        return None
    if pid_alive(record.get("pid"), record.get("started")):
        return record
    lock.unlink(missing_ok=True)
    return None


def _acquire(runs_root: Path) -> Path:
    lock = runs_root / LOCK_FILE
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = current_job(runs_root)
            if holder is not None:
                raise JobError(
                    f"a training job is already running: run {holder.get('run_id', '?')} "
                    f"(pid {holder.get('pid')}, started {holder.get('started', '?')}); wait for it or cancel it"
                ) from None
            continue  # the stale lock was removed; try once more
        with os.fdopen(fd, "w") as handle:
            handle.write(f'{{"pid": {os.getpid()}, "run_id": null, "started": "{now_iso()}"}}')
        return lock
    raise JobError("could not acquire the training lock; try again")


def start_job(config: TrainConfig, runs_root: str | Path, python: str = sys.executable) -> Path:
    """Prepare a run for ``config`` and start training it in a background process.

    Raises:
        JobError: when another job is running (the message names it).
        BreakHisError: for a bad config, data or weights (nothing is started then).

    Returns:
        The run directory.
    """
    runs_root = Path(runs_root)
    runs_root.mkdir(parents=True, exist_ok=True)
    lock = _acquire(runs_root)
    try:
        run_dir = prepare_run(config, runs_root)
        log = open(run_dir / "train.log", "ab")
        process = subprocess.Popen(
            [python, "-m", "breakhis_core", "resume", str(run_dir)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=Path(__file__).resolve().parents[1],
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")},
        )
        log.close()
    except BaseException:
        lock.unlink(missing_ok=True)
        raise
    write_json_atomic(lock, {"pid": process.pid, "run_id": run_dir.name, "run_dir": str(run_dir), "started": now_iso()})
    return run_dir


def cancel_job(run_dir: str | Path) -> None:
    """Ask the run's training to stop at the next batch boundary (completed epochs are kept)."""
    (Path(run_dir) / CANCEL_FILE).touch()


def job_state(run_dir: str | Path) -> dict:
    """What a page shows of a run: status, progress and both stages' per-epoch history.

    ``status`` reads "interrupted" when the file says running but the process is gone.
    """
    run_dir = Path(run_dir)
    status = read_json(run_dir / "status.json", {}) or {}
    if status.get("status") == "running" and not pid_alive(status.get("pid"), status.get("started")):
        status = {**status, "status": "interrupted"}
    return {
        "run_id": run_dir.name,
        "status": status,
        "progress": read_json(run_dir / "progress.json", {}) or {},
        "history": {stage: read_jsonl(run_dir / f"history_{stage}.jsonl") for stage in ("frozen", "finetuned")},
        "cancel_requested": (run_dir / CANCEL_FILE).exists(),
    }
