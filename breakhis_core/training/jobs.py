"""Training as a background process that any page can poll, one job at a time.

``start_job`` prepares the run directory in the calling process (so bad data or missing
weights fail at once, with the message), then launches ``python -m breakhis_core resume RUN_DIR``
through ``runs.launcher`` (its own session, a lower priority than the app, the one-job slot). State lives
only on disk, so a page reload, a second browser session or a restarted server all see the same job:

- ``<runs>/.job.lock``: ``{"pid", "run_id", "run_dir", "started"}`` of the job holding the slot
  (``launcher.JobSlot``: written whole, stale locks cleared under ``<runs>/.job.lock.guard``).
  While the run is being prepared, the lock names the starting process and ``run_id`` is null.
- ``<runs>/audit.jsonl``: one "training" line per job start (see ``audit.py``).
- ``<run_dir>/status.json``, ``progress.json``, ``history_*.jsonl``: written by the trainer.
- ``<run_dir>/job.json``: the launched process, so a run whose process died before training reads "interrupted".
- ``<run_dir>/train.log``: the process's stdout and stderr.
- ``<run_dir>/cancel``: ``cancel_job`` creates it; training stops at the next batch boundary.

Pages read :class:`JobLock` (``current_job``) and :class:`JobState` (``job_state``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from breakhis_core.lab import audit
from breakhis_core.training import crossval
from breakhis_core.config import STAGES, TrainConfig
from breakhis_core.errors import JobError
from breakhis_core.training.estimate import TimeEstimate
from breakhis_core.lab.logs import LOG_LEVEL_ENV
from breakhis_core.runs.launcher import JobLaunch, JobSlot, launch, request_cancel
from breakhis_core.training.setup import prepare_run
from breakhis_core.runs.rundir import RunDir, live_status, now_iso, process_alive
from breakhis_core.runs.status import RESUMABLE, RunStatus

log = logging.getLogger(__name__)

LOCK_FILE = ".job.lock"


@dataclass(frozen=True)
class JobLock:
    """The record of ``<runs>/.job.lock``: the background job holding the one training slot.

    Attributes:
        pid: the job's process (the starting process while the run is being prepared).
        run_id: the run (or experiment) it trains; None while it is being prepared.
        run_dir: that run's folder as a string; None while it is being prepared.
        started: ISO time the lock was taken.
    """

    pid: int | None
    run_id: str | None = None
    run_dir: str | None = None
    started: str | None = None

    @classmethod
    def from_dict(cls, record: dict) -> "JobLock":
        return cls(record.get("pid"), record.get("run_id"), record.get("run_dir"), record.get("started"))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        return f"run {self.run_id}" if self.run_id else "a new run (still being prepared)"


@dataclass(frozen=True)
class FoldRunState:
    """One run of a cross-validation experiment, as a page lists it."""

    run_id: str
    role: str
    status: RunStatus


@dataclass(frozen=True)
class ExperimentState:
    """Where a cross-validation experiment is: the fold training now (1-based; None when none), K, its runs."""

    fold: int | None
    n_folds: int
    runs: list[FoldRunState]


@dataclass(frozen=True)
class JobState:
    """What a page shows of a run (or experiment): see :func:`job_state`.

    Attributes:
        run_id: the run's (or experiment's) id.
        status: queued, running, done, failed, cancelled, interrupted (process gone) or unknown.
        error: why it failed or was interrupted; None otherwise.
        record: status.json (state.json of an experiment) as written.
        progress: the latest progress event (progress.json): "stage", "epoch", "epochs", "batch",
            "batches", "epochs_done", "total_epochs", "elapsed_s", "eta_s", "message", "last_epoch".
        history: stage → the per-epoch records of ``history_<stage>.jsonl``.
        cancel_requested: the cancel flag file exists.
        experiment: for an experiment folder, its folds; None for a run.
        estimate: the time estimate made before training (run.json "time_estimate"; an experiment: its current
            fold's), or None before it is made.
        timings: measured seconds of the parts done so far (run.json "timings": "loading_s", "cache_s",
            "frozen_s", "finetuned_s", "evaluation_s", "total_s").
    """

    run_id: str
    status: RunStatus
    error: str | None
    record: dict
    progress: dict
    history: dict[str, list[dict]]
    cancel_requested: bool
    experiment: ExperimentState | None = field(default=None)
    estimate: TimeEstimate | None = None
    timings: dict[str, float] = field(default_factory=dict)


def job_slot(runs_root: str | Path) -> JobSlot[JobLock]:
    """The one training slot of ``runs_root`` (``<runs>/.job.lock``)."""
    return JobSlot(Path(runs_root), LOCK_FILE, "training job", JobLock.from_dict)


def current_job(runs_root: str | Path) -> JobLock | None:
    """The running job's lock, or None (a stale or unreadable lock is removed)."""
    return job_slot(runs_root).holder()


def _acquire(runs_root: Path, received: str = "a new run") -> JobSlot[JobLock]:
    """Take the job slot for this process (``run_id`` null) or raise JobError naming the holder (``received``:
    what this caller asked for, in the message)."""
    slot = job_slot(runs_root)
    slot.acquire(JobLock(os.getpid(), started=now_iso()), received)
    return slot


def check_config_paths(config: TrainConfig, roots) -> TrainConfig:
    """Refuse a config that reads anything outside the data roots (see ``paths.check_dataset``).

    Checks the data set (the folder or manifest and every image it names), the Folds.csv and a
    weights file given as a path.

    Returns:
        A copy of ``config`` with those paths resolved (symlinks followed), as they were checked.

    Raises:
        DataPathError: naming the first path outside the roots.
    """
    from breakhis_core.lab.paths import check_dataset, inside_data_roots

    changes = {"data": str(check_dataset(config.data, roots))}
    if config.folds_csv:
        changes["folds_csv"] = str(inside_data_roots(config.folds_csv, roots))
    if config.weights not in ("imagenet", "none"):
        changes["weights"] = str(inside_data_roots(config.weights, roots))
    return dataclasses.replace(config, **changes)


def start_job(config: TrainConfig, runs_root: str | Path, python: str = sys.executable, data_roots=None,
              final_model: bool = False, user: str | None = None) -> Path:
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
        user: the signed-in user who started it (app with sign-in), recorded in the audit log.

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
    slot = _acquire(runs_root, f"data={config.data}")
    with slot.released_on_failure():
        if config.split == "cv":
            run_dir = crossval.prepare_experiment(config, runs_root, final_model)
        else:
            run_dir = prepare_run(config, runs_root)
        pid = _launch(run_dir, slot, python)
    audit.record_training(run_dir, RunStatus.QUEUED, pid=pid, data=config.data, **({"user": user} if user else {}))
    return run_dir


def resume_job(run_dir: str | Path, runs_root: str | Path, python: str = sys.executable, user: str | None = None) -> Path:
    """Continue an interrupted, cancelled or failed run in a background process, from its last checkpoint.

    Raises:
        JobError: when another job is running, or the run is done or still training.
    """
    run_dir, runs_root = Path(run_dir), Path(runs_root)
    status = job_state(run_dir).status
    if status not in RESUMABLE:
        raise JobError(f"only an interrupted, cancelled or failed run can be resumed. Received: status={status}")
    slot = _acquire(runs_root, f"run_id={run_dir.name}")
    with slot.released_on_failure():
        pid = _launch(run_dir, slot, python)
    audit.record_training(run_dir, "resumed", pid=pid, **({"user": user} if user else {}))
    return run_dir


def _launch(run_dir: Path, slot: JobSlot[JobLock], python: str) -> int:
    """Start ``python -m breakhis_core resume RUN_DIR`` in its own session and hand it the job slot."""
    pid = launch(JobLaunch("breakhis_core", ("resume", str(run_dir)), RunDir(run_dir).train_log, python,
                           env={LOG_LEVEL_ENV: os.environ.get(LOG_LEVEL_ENV, "INFO")}))  # train.log gets the operator's lines
    try:
        slot.hand_over(JobLock(pid, run_dir.name, str(run_dir), now_iso()))
        RunDir(run_dir).write_job(pid)  # a queued run whose process dies before training starts
        # then reads "interrupted" (rundir.live_status), not queued forever
    except BaseException:  # e.g. a full disk: a lock naming this (long-lived) process would block every later job
        cancel_job(run_dir)
        raise
    log.info("run %s: training job started (pid %d, output in %s)", run_dir.name, pid, RunDir(run_dir).train_log)
    return pid


def cancel_job(run_dir: str | Path) -> None:
    """Ask the run's training to stop at the next batch boundary (completed epochs are kept)."""
    request_cancel(run_dir)
    log.info("run %s: cancel requested", Path(run_dir).name)


def job_state(run_dir: str | Path) -> JobState:
    """What a page shows of a run: status, progress and both stages' per-epoch history.

    ``status`` reads "interrupted" when the file says running (or queued, for a launched job) but
    the process is gone (see ``rundir.live_status``). For a cross-validation experiment folder,
    see :func:`_experiment_state`.
    """
    run = RunDir(run_dir)
    if crossval.is_experiment(run.path):
        return _experiment_state(run.path)
    record = run.read_status()
    for launched in (record, run.read_job()):
        process_alive(launched.get("pid"), reap=True)  # reap our own finished child first: a zombie would read as alive
    status, error = live_status(run.path, record)
    if status == record.get("status"):
        error = record.get("error")
    info = run.read_info()
    return JobState(run.run_id, status, error, record, run.read_progress(),
                    {stage: run.read_history(stage) for stage in STAGES}, run.cancel_requested(),
                    estimate=TimeEstimate.from_dict(info.get("time_estimate")), timings=info.get("timings") or {})


def _experiment_state(exp_dir: Path) -> JobState:
    """:func:`job_state` of a cross-validation experiment: its status and cancel request; the progress and history
    of the fold run training now (or last), the message prefixed with the fold; ``experiment`` lists the folds."""
    experiment = crossval.load_experiment(exp_dir)
    for launched in (experiment.state, RunDir(exp_dir).read_job()):
        process_alive(launched.get("pid"), reap=True)  # reap our own finished child first
    experiment = crossval.load_experiment(exp_dir)
    runs = experiment.runs()
    current = experiment.state.get("current_run") or next(
        (r.run_id for r in runs if r.status != RunStatus.DONE), runs[-1].run_id if runs else None)
    inner = job_state(experiment.root / current) if current else None
    progress = dict(inner.progress) if inner else {}
    if current and progress.get("message"):
        progress["message"] = f"{experiment.role(current)}: {progress['message']}"
    return JobState(
        experiment.experiment_id, experiment.status, experiment.error, experiment.state, progress,
        inner.history if inner else {}, RunDir(exp_dir).cancel_requested(),
        ExperimentState(experiment.state.get("fold"), experiment.n_folds,
                        [FoldRunState(r.run_id, experiment.role(r.run_id), r.status) for r in runs]),
        estimate=inner.estimate if inner else None, timings=inner.timings if inner else {},
    )
