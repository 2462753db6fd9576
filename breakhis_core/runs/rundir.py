"""The run directory: the names of its files, their reads and writes, liveness, cancel and the run lock.

One run is one folder of the runs folder; ``docs/ARCHITECTURE.md`` ("Run directory") describes every
file. This module is the one definition of those names: the trainer, the job launcher, the
registry, cross-validation, slide analyses, workers, the CLI and the app's pages all go through
:class:`RunDir` (or the names below) instead of joining file names themselves.

It also holds the facts every background process shares:

- :func:`now_iso`: the time stamps written in status files (ISO 8601, local time with its offset);
- :func:`process_alive`: the one liveness check of a recorded pid (runs, the training job lock, slide
  analyses), with pid reuse and zombies detected;
- :func:`live_status`: "running" whose process is gone, and "queued" whose launched job process ended
  before it started, read "interrupted";
- the cancel flag file and the run lock (``files.try_lock``).

Run naming lives here too (:func:`new_run_id`, :func:`check_run_name`): it is a fact of the runs
folder's layout. Preparing a run (scanning, splitting, recording) is ``run_setup.prepare_run``'s.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from breakhis_core.config import TrainConfig
from breakhis_core.errors import ConfigError
from breakhis_core.files import append_jsonl, read_json, read_jsonl, try_lock, write_json_atomic
from breakhis_core.runs.status import RunStatus

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
"""The run's ``TrainConfig``."""
RUN_INFO_FILE = "run.json"
"""What the run is: run id, data summary, split, weights, device, training path, kept epochs, checks."""
STATUS_FILE = "status.json"
"""``{"status", "pid", "started", "updated", "ended", "error"}`` (also of experiments' fold runs and slide analyses)."""
PROGRESS_FILE = "progress.json"
"""The latest progress event (polled by the app)."""
SPLIT_FILE = "split.csv"
CHECKPOINTS_DIR = "checkpoints"
"""The last completed epoch of the current stage, for resume; deleted when both models are saved."""
CHECKPOINT_STATE_FILE = "state.json"
"""``checkpoints/state.json``: ``{"stage", "epochs_done", "best"}``."""
METRICS_FILE = "metrics.json"
TEST_PREDICTIONS_FILE = "test_predictions.csv"
VAL_PREDICTIONS_FILE = "val_predictions.csv"
CALIBRATION_FILE = "calibration.json"
CARD_JSON_FILE = "card.json"
CARD_MD_FILE = "card.md"
EPOCHS_DIR = "epochs"
"""A cross-validation fold run's record of every candidate epoch of each stage (``crossval.keep_pooled_epochs``
chooses the kept epoch from them after all folds finish): ``<stage>-e<N>.val.csv`` (the validation predictions,
kept) and ``<stage>-e<N>.weights.npz`` (the weights of the layers the stage trains, deleted once the experiment
has applied its choice)."""
TENSORBOARD_DIR = "tensorboard"
"""Per-stage TensorBoard logs of a run: ``<run>/tensorboard/<stage>/`` (``tensorboard --logdir runs``)."""
TRAIN_LOG_FILE = "train.log"
"""Output of a background training job (progress lines, INFO logs)."""
JOB_FILE = "job.json"
"""``{"pid", "started"}`` of the background process ``jobs.start_job`` launched for a run (or an experiment)."""
CANCEL_FILE = "cancel"
"""Flag file: training (or a slide analysis) stops at the next batch boundary."""
RUN_LOCK_FILE = ".train.lock"
"""Lock (``files.try_lock``) held by the process training a run: a second trainer of the same run is refused."""
MODEL_SUFFIX = ".keras"
RUN_FILES = (CONFIG_FILE, RUN_INFO_FILE, STATUS_FILE)
"""A folder holding any of these is a run."""
PID_START_TOLERANCE_S = 5.0
"""A process that started this long after the run's recorded start is a different process (pid reuse)."""
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
"""A run name given by the user (``--run-name``): a plain folder name."""


def history_file(stage: str) -> str:
    """``history_<stage>.jsonl``: one line per completed epoch of ``stage``."""
    return f"history_{stage}.jsonl"


def model_file(stage: str) -> str:
    """``<stage>.keras``: the stage's kept model (in the run) or its last epoch (in ``checkpoints/``)."""
    return f"{stage}{MODEL_SUFFIX}"


def best_weights_file(stage: str, epoch: int) -> str:
    """The stage's best-epoch weights in ``checkpoints/`` (the epoch in the name, so state.json never points at a newer file)."""
    return f"{stage}-best-e{epoch}.weights.h5"


def epoch_predictions_file(stage: str, epoch: int) -> str:
    """``<stage>-e<N>.val.csv`` in ``epochs/``: the validation predictions of ``stage`` after epoch ``N`` (0: its start)."""
    return f"{stage}-e{epoch}.val.csv"


def epoch_weights_file(stage: str, epoch: int) -> str:
    """``<stage>-e<N>.weights.npz`` in ``epochs/``: the weights of the layers ``stage`` trains, after epoch ``N``."""
    return f"{stage}-e{epoch}.weights.npz"


# ----------------------------------------------------------------------------- time and liveness


def now_iso() -> str:
    """Now as ISO 8601 in local time with its UTC offset, to the second (status files, run.json "created")."""
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def iso_from_seconds(seconds: float) -> str:
    """``seconds`` since the epoch as :func:`now_iso` writes times."""
    return datetime.fromtimestamp(seconds, timezone.utc).astimezone().isoformat(timespec="seconds")


def seconds_from_iso(value) -> float:
    """Seconds since the epoch of an ISO time (naive = local time); 0 when unparsable."""
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return 0.0


def process_alive(pid, started=None, *, reap: bool = False) -> bool:
    """True when process ``pid`` runs, is not a zombie, and (given ``started``) is not a reused pid.

    Args:
        pid: process id recorded in a status or lock file (None or 0 → False).
        started: ISO time the process recorded as its start (or None); a process with this pid that
            started more than ``PID_START_TOLERANCE_S`` later is another program.
        reap: first collect ``pid`` if it is a finished child of this process (a launcher that never
            waits on its children: the job and slide-analysis launchers); it then reads dead.
    """
    if not isinstance(pid, int) or pid <= 0:
        return False
    if reap:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return False  # our child, just reaped
        except ChildProcessError:
            pass  # not our child
        except OSError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    except OSError:
        return False
    try:  # Linux: state and start time from /proc; elsewhere the kill test is all we have
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
        process_start = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return True
    if fields[0] == "Z":
        return False
    started_at = seconds_from_iso(started)  # 0 when not recorded or unparsable: no reuse check
    return not started_at or process_start <= started_at + PID_START_TOLERANCE_S


def live_status(folder: Path, state: dict) -> tuple[RunStatus, str | None]:
    """(status, error) of a run (or experiment) folder from its status ``state``, with dead processes detected.

    "running" whose process is gone, and "queued" whose launched job process (``job.json``, written
    by ``jobs.start_job``) ended before it started training, both read "interrupted".
    """
    status, error = RunStatus.read(state.get("status", RunStatus.UNKNOWN)), state.get("error")
    if status == RunStatus.RUNNING and not process_alive(state.get("pid"), state.get("started")):
        return RunStatus.INTERRUPTED, f"training process {state.get('pid')} is gone; resume the run to continue"
    if status == RunStatus.QUEUED:
        job = read_json(Path(folder) / JOB_FILE)
        if isinstance(job, dict) and not process_alive(job.get("pid"), job.get("started")):
            return RunStatus.INTERRUPTED, (f"training process {job.get('pid')} ended before training started "
                                           "(see train.log); resume the run to continue")
    return status, error


# ----------------------------------------------------------------------------- naming


def unique_name(root: Path, base: str) -> str:
    """``base``, or ``base-2``, ``base-3`` … : the first name not taken in ``root``."""
    name, n = base, 2
    while (root / name).exists():
        name, n = f"{base}-{n}", n + 1
    return name


def new_run_id(config: TrainConfig, root: Path) -> str:
    """A free run id ``YYYYmmdd-HHMMSS-<mag>-<split>`` (``fold<k>`` / ``cv<K>-fold<k>`` for fold splits)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    mag = "all" if config.magnification == "all" else f"{config.magnification}x"
    split = {"folds": f"fold{config.fold}", "cv": f"cv{config.cv_folds}-fold{config.fold}"}.get(config.split, config.split)
    return unique_name(root, f"{stamp}-{mag}-{split}")


def check_run_name(run_name: str, root: Path) -> None:
    """Refuse a user-given run name that is not a plain folder name (:data:`RUN_NAME`) or is taken in ``root``.

    Raises:
        ConfigError: naming the problem (a taken name says how to resume that run).
    """
    if not RUN_NAME.fullmatch(run_name):
        raise ConfigError("a run name takes letters, digits, '.', '_' and '-' (at most 100, not starting with '.' "
                          f"or '-'). Received: run_name={run_name!r}")
    if (Path(root) / run_name).exists():
        raise ConfigError(f"a run named {run_name} exists in {root}; resume it with "
                          f"'resume {Path(root) / run_name}' or choose another name. Received: run_name={run_name}")


# ----------------------------------------------------------------------------- the run directory


@dataclass(frozen=True)
class RunDir:
    """A run directory (it need not exist yet): the paths of its files and their reads and writes.

    Attributes:
        path: the run folder (``<runs>/<run_id>``).
    """

    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def root(self) -> Path:
        """The runs folder holding this run."""
        return self.path.parent

    def is_run(self) -> bool:
        """True when the folder holds any of :data:`RUN_FILES`."""
        return self.path.is_dir() and any((self.path / name).is_file() for name in RUN_FILES)

    # ------------------------------------------------------------------ paths

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def info_file(self) -> Path:
        return self.path / RUN_INFO_FILE

    @property
    def status_file(self) -> Path:
        return self.path / STATUS_FILE

    @property
    def progress_file(self) -> Path:
        return self.path / PROGRESS_FILE

    @property
    def split_file(self) -> Path:
        return self.path / SPLIT_FILE

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def test_predictions_file(self) -> Path:
        return self.path / TEST_PREDICTIONS_FILE

    @property
    def val_predictions_file(self) -> Path:
        return self.path / VAL_PREDICTIONS_FILE

    @property
    def calibration_file(self) -> Path:
        return self.path / CALIBRATION_FILE

    @property
    def card_json_file(self) -> Path:
        return self.path / CARD_JSON_FILE

    @property
    def card_md_file(self) -> Path:
        return self.path / CARD_MD_FILE

    @property
    def train_log(self) -> Path:
        return self.path / TRAIN_LOG_FILE

    @property
    def job_file(self) -> Path:
        return self.path / JOB_FILE

    @property
    def cancel_file(self) -> Path:
        return self.path / CANCEL_FILE

    @property
    def lock_file(self) -> Path:
        return self.path / RUN_LOCK_FILE

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    @property
    def checkpoint_state_file(self) -> Path:
        return self.checkpoints / CHECKPOINT_STATE_FILE

    def history_file(self, stage: str) -> Path:
        return self.path / history_file(stage)

    def model_file(self, stage: str) -> Path:
        """The stage's kept model, ``<stage>.keras``."""
        return self.path / model_file(stage)

    def checkpoint_file(self, stage: str) -> Path:
        """The stage's last completed epoch, ``checkpoints/<stage>.keras``."""
        return self.checkpoints / model_file(stage)

    @property
    def epochs(self) -> Path:
        return self.path / EPOCHS_DIR

    def epoch_predictions_file(self, stage: str, epoch: int) -> Path:
        return self.epochs / epoch_predictions_file(stage, epoch)

    def epoch_weights_file(self, stage: str, epoch: int) -> Path:
        return self.epochs / epoch_weights_file(stage, epoch)

    def recorded_epochs(self, stage: str) -> list[int]:
        """The epochs of ``stage`` whose validation predictions ``epochs/`` holds, ascending."""
        prefix, suffix = f"{stage}-e", ".val.csv"
        found = [p.name[len(prefix):-len(suffix)] for p in self.epochs.glob(f"{prefix}*{suffix}")]
        return sorted(int(n) for n in found if n.isdigit())

    def tensorboard_dir(self, stage: str) -> Path:
        return self.path / TENSORBOARD_DIR / stage

    # ------------------------------------------------------------------ reads and writes

    def load_config(self) -> TrainConfig:
        return TrainConfig.load(self.config_file)

    def save_config(self, config: TrainConfig) -> None:
        config.save(self.config_file)

    def read_info(self) -> dict:
        """run.json ({} when absent or unreadable)."""
        return read_json(self.info_file, {}) or {}

    def write_info(self, info: dict) -> None:
        write_json_atomic(self.info_file, info)

    def read_status(self) -> dict:
        """status.json as written ({} when absent or unreadable); see :meth:`live_status` for what it means now."""
        return read_json(self.status_file, {}) or {}

    def set_status(self, status: RunStatus, **fields) -> None:
        """Merge ``fields`` into status.json with the new status and an ``updated`` time."""
        current = self.read_status()
        current.update(fields, status=status, updated=now_iso())
        write_json_atomic(self.status_file, current)
        log.log(logging.ERROR if status == RunStatus.FAILED else logging.INFO, "run %s: %s%s", self.run_id, status,
                f" ({current['error']})" if status == RunStatus.FAILED and current.get("error") else "")

    def live_status(self) -> tuple[RunStatus, str | None]:
        """(status, error) now: see :func:`live_status`."""
        return live_status(self.path, self.read_status())

    def read_progress(self) -> dict:
        return read_json(self.progress_file, {}) or {}

    def write_progress(self, event: dict) -> None:
        write_json_atomic(self.progress_file, event)

    def read_history(self, stage: str) -> list[dict]:
        return read_jsonl(self.history_file(stage))

    def append_history(self, stage: str, record: dict) -> None:
        append_jsonl(self.history_file(stage), record)

    def read_checkpoint_state(self) -> dict:
        return read_json(self.checkpoint_state_file, {}) or {}

    def write_checkpoint_state(self, state: dict) -> None:
        write_json_atomic(self.checkpoint_state_file, state)

    def read_job(self) -> dict:
        """job.json ({} when absent or unreadable)."""
        return read_json(self.job_file, {}) or {}

    def write_job(self, pid: int) -> None:
        """Record the background process launched to train this run (see :func:`live_status`)."""
        write_json_atomic(self.job_file, {"pid": pid, "started": now_iso()})

    # ------------------------------------------------------------------ cancel and lock

    def request_cancel(self) -> None:
        """Ask the process training this run to stop at the next batch boundary."""
        self.cancel_file.touch()

    def cancel_requested(self) -> bool:
        return self.cancel_file.exists()

    def clear_cancel(self) -> None:
        self.cancel_file.unlink(missing_ok=True)

    def try_lock(self):
        """Take the run lock (``.train.lock``, held until :func:`files.unlock` or this process ends), or None when
        another process holds it."""
        return try_lock(self.lock_file)
