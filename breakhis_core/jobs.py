"""Training as a background process that any page can poll, one job at a time.

``start_job`` prepares the run directory in the calling process (so bad data or missing
weights fail at once, with the message), then launches ``python -m breakhis_core resume RUN_DIR``
as a separate process session. State lives only on disk, so a page reload, a second browser
session or a restarted server all see the same job:

- ``<runs>/.job.lock``: ``{"pid", "run_id", "run_dir", "started"}`` of the job holding the slot.
  It is written complete to a temporary file and linked into place (``os.link`` fails when the
  lock exists), so two simultaneous starts cannot both win and nobody reads a half-written lock.
  A lock whose process is gone is stale and cleared. Checking, clearing and taking the lock
  happen under ``<runs>/.job.lock.guard`` (``flock``, released by the kernel when its holder
  dies), so a starter clearing a stale lock can never delete the lock another starter just took.
  While the run is being prepared, the lock names the starting process and ``run_id`` is null.
- ``<runs>/audit.jsonl``: one "training" line per job start (see ``audit.py``).
- ``<run_dir>/status.json``, ``progress.json``, ``history_*.jsonl``: written by the trainer.
- ``<run_dir>/train.log``: the process's stdout and stderr.
- ``<run_dir>/cancel``: ``cancel_job`` creates it; training stops at the next batch boundary.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from . import audit, crossval
from .config import TrainConfig
from .errors import JobError
from .files import locked, read_json, read_jsonl, write_json_atomic
from .registry import JOB_FILE, live_status, process_alive
from .train import CANCEL_FILE, now_iso, prepare_run

LOCK_FILE = ".job.lock"
GUARD_FILE = ".job.lock.guard"


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
    """The running job's lock record, or None (a stale or unreadable lock is removed)."""
    lock = Path(runs_root) / LOCK_FILE
    if not lock.exists():
        return None
    record = read_json(lock)
    if isinstance(record, dict) and pid_alive(record.get("pid"), record.get("started")):
        return record
    with locked(Path(runs_root) / GUARD_FILE):
        return _clear_stale(lock)


def _clear_stale(lock: Path) -> dict | None:
    """Under the guard: the live lock record, or None after removing a stale or unreadable lock."""
    record = read_json(lock)
    if record is None and not lock.exists():
        return None
    if isinstance(record, dict) and pid_alive(record.get("pid"), record.get("started")):
        return record
    lock.unlink(missing_ok=True)  # its process is gone (or it cannot be read: the lock is always written whole)
    return None


def _busy_error(holder: dict) -> JobError:
    if holder.get("run_id"):
        what = f"run {holder['run_id']}"
    else:
        what = "a new run (still being prepared)"
    return JobError(
        f"a training job is already running: {what}, pid {holder.get('pid')}, started {holder.get('started', '?')}; "
        f"wait for it to finish or cancel it. Received: run_id={holder.get('run_id')}"
    )


def _write_lock(runs_root: Path, record: dict, replace: bool) -> None:
    """Put a complete lock file in place: linked (fails when one exists) or, with ``replace``, renamed over it."""
    lock = runs_root / LOCK_FILE
    fd, tmp = tempfile.mkstemp(prefix=".job.lock.", suffix=".tmp", dir=runs_root)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(record, handle)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(tmp, lock)
        else:
            os.link(tmp, lock)  # atomic; FileExistsError when another job holds the slot
    finally:
        Path(tmp).unlink(missing_ok=True)


def _acquire(runs_root: Path) -> Path:
    """Take the job slot for this process (``run_id`` null) or raise JobError naming the holder."""
    with locked(runs_root / GUARD_FILE):
        holder = _clear_stale(runs_root / LOCK_FILE)
        if holder is not None:
            raise _busy_error(holder)
        try:
            _write_lock(runs_root, {"pid": os.getpid(), "run_id": None, "run_dir": None, "started": now_iso()}, replace=False)
        except FileExistsError:  # only when a starter without the guard (an older version) raced us
            raise _busy_error(read_json(runs_root / LOCK_FILE) or {}) from None
    return runs_root / LOCK_FILE


def check_config_paths(config: TrainConfig, roots) -> TrainConfig:
    """Refuse a config that reads anything outside the data roots (see ``paths.check_dataset``).

    Checks the data set (the folder or manifest and every image it names), the Folds.csv and a
    weights file given as a path.

    Returns:
        A copy of ``config`` with those paths resolved (symlinks followed), as they were checked.

    Raises:
        DataPathError: naming the first path outside the roots.
    """
    from .paths import check_dataset, inside_data_roots

    changes = {"data": str(check_dataset(config.data, roots))}
    if config.folds_csv:
        changes["folds_csv"] = str(inside_data_roots(config.folds_csv, roots))
    if config.weights not in ("imagenet", "none"):
        changes["weights"] = str(inside_data_roots(config.weights, roots))
    return dataclasses.replace(config, **changes)


def start_job(config: TrainConfig, runs_root: str | Path, python: str = sys.executable, data_roots=None,
              final_model: bool = False) -> Path:
    """Prepare a run for ``config`` and start training it in a background process.

    With ``config.split == "cv"`` a cross-validation experiment is prepared instead
    (``crossval.prepare_experiment``) and the one background process trains all its folds.

    Args:
        config: the run's configuration.
        runs_root: the runs folder.
        python: the interpreter that runs ``python -m breakhis_core resume RUN_DIR``.
        data_roots: when given (the app passes its data roots), every path the config reads must lie
            inside them (``..``, symlinks and absolute paths elsewhere are refused).
        final_model: with ``split="cv"``: also train a final model on all patients after the folds.

    Raises:
        JobError: when another job is running (the message names it).
        DataPathError: when ``data_roots`` is given and the config reads outside them.
        BreakHisError: for a bad config, data or weights (nothing is started then).

    Returns:
        The run directory (the experiment folder for cross-validation).
    """
    runs_root = Path(runs_root)
    if data_roots is not None:
        config = check_config_paths(config, data_roots)
    runs_root.mkdir(parents=True, exist_ok=True)
    lock = _acquire(runs_root)
    try:
        if config.split == "cv":
            run_dir = crossval.prepare_experiment(config, runs_root, final_model)
        else:
            run_dir = prepare_run(config, runs_root)
    except BaseException:
        lock.unlink(missing_ok=True)
        raise
    pid = _launch(run_dir, runs_root, python, lock)
    audit.record_training(run_dir, "queued", pid=pid, data=config.data)
    return run_dir


def resume_job(run_dir: str | Path, runs_root: str | Path, python: str = sys.executable) -> Path:
    """Continue an interrupted, cancelled or failed run in a background process, from its last checkpoint.

    Raises:
        JobError: when another job is running, or the run is done or still training.
    """
    run_dir, runs_root = Path(run_dir), Path(runs_root)
    status = job_state(run_dir)["status"].get("status")
    if status not in ("interrupted", "cancelled", "failed", "queued"):
        raise JobError(f"only an interrupted, cancelled or failed run can be resumed. Received: status={status}")
    lock = _acquire(runs_root)
    pid = _launch(run_dir, runs_root, python, lock)
    audit.record_training(run_dir, "resumed", pid=pid)
    return run_dir


def _launch(run_dir: Path, runs_root: Path, python: str, lock: Path) -> int:
    """Start ``python -m breakhis_core resume RUN_DIR`` in its own session and hand it the job lock."""
    try:
        with open(run_dir / "train.log", "ab") as log:
            process = subprocess.Popen(
                [python, "-m", "breakhis_core", "resume", str(run_dir)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=Path(__file__).resolve().parents[1],
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")},
            )
    except BaseException:
        lock.unlink(missing_ok=True)
        raise
    try:
        _write_lock(runs_root, {"pid": process.pid, "run_id": run_dir.name, "run_dir": str(run_dir), "started": now_iso()},
                    replace=True)
        write_json_atomic(run_dir / JOB_FILE, {"pid": process.pid, "started": now_iso()})  # a queued run whose
        # process dies before training starts then reads "interrupted" (registry.live_status), not queued forever
    except BaseException:  # e.g. a full disk: a lock naming this (long-lived) process would block every later job
        cancel_job(run_dir)
        lock.unlink(missing_ok=True)
        raise
    return process.pid


def cancel_job(run_dir: str | Path) -> None:
    """Ask the run's training to stop at the next batch boundary (completed epochs are kept)."""
    (Path(run_dir) / CANCEL_FILE).touch()


def job_state(run_dir: str | Path) -> dict:
    """What a page shows of a run: status, progress and both stages' per-epoch history.

    ``status`` reads "interrupted" when the file says running (or queued, for a launched job) but
    the process is gone (see ``registry.live_status``). For a cross-validation experiment folder,
    see :func:`_experiment_state`.
    """
    run_dir = Path(run_dir)
    if crossval.is_experiment(run_dir):
        return _experiment_state(run_dir)
    status = read_json(run_dir / "status.json", {}) or {}
    for record in (status, read_json(run_dir / JOB_FILE, {}) or {}):
        pid_alive(record.get("pid"))  # reap our own finished child first: a zombie would read as alive
    live, error = live_status(run_dir, status)
    if live != status.get("status"):
        status = {**status, "status": live, "error": error}
    return {
        "run_id": run_dir.name,
        "status": status,
        "progress": read_json(run_dir / "progress.json", {}) or {},
        "history": {stage: read_jsonl(run_dir / f"history_{stage}.jsonl") for stage in ("frozen", "finetuned")},
        "cancel_requested": (run_dir / CANCEL_FILE).exists(),
    }


def _experiment_state(exp_dir: Path) -> dict:
    """:func:`job_state` of a cross-validation experiment: its status and cancel request; the progress and history
    of the fold run training now (or last), the message prefixed with the fold; ``experiment`` holds
    ``{"fold", "n_folds", "runs": [{"run_id", "role", "status"}]}``."""
    experiment = crossval.load_experiment(exp_dir)
    for record in (experiment.state, read_json(exp_dir / JOB_FILE, {}) or {}):
        pid_alive(record.get("pid"))  # reap our own finished child first
    experiment = crossval.load_experiment(exp_dir)
    runs = experiment.runs()
    current = experiment.state.get("current_run") or next(
        (r.run_id for r in runs if r.status != "done"), runs[-1].run_id if runs else None)
    inner = job_state(experiment.root / current) if current else {"progress": {}, "history": {}}
    progress = dict(inner["progress"])
    if current and progress.get("message"):
        progress["message"] = f"{experiment.role(current)}: {progress['message']}"
    return {
        "run_id": experiment.experiment_id,
        "status": {**experiment.state, "status": experiment.status, "error": experiment.error},
        "progress": progress,
        "history": inner["history"],
        "cancel_requested": (exp_dir / CANCEL_FILE).exists(),
        "experiment": {
            "fold": experiment.state.get("fold"),
            "n_folds": experiment.n_folds,
            "runs": [{"run_id": r.run_id, "role": experiment.role(r.run_id), "status": r.status} for r in runs],
        },
    }
