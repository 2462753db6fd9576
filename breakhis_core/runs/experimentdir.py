"""The cross-validation experiment folder: the names of its files and their paths.

An experiment (``training/crossval.py``) is a folder beside the runs; ``docs/ARCHITECTURE.md`` ("Run directory",
the experiment block) describes every file, and this module is the one definition of their names (a test checks
that the two agree). It holds none of a run's own files (config.json, run.json, status.json), so the registry
never lists it; the cancel flag, ``job.json`` and ``train.log`` are named as for a run (``rundir.py``): one
background job trains every fold.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from breakhis_core.runs.rundir import CANCEL_FILE, JOB_FILE, TRAIN_LOG_FILE

EXPERIMENT_FILE = "experiment.json"
"""What the experiment is: id, created, K, grouping, seed, base config, fold runs, final run, data, patients."""
STATE_FILE = "state.json"
"""``{"status", "pid", "started", "updated", "ended", "error", "fold", "current_run"}``."""
FOLDS_FILE = "folds.csv"
"""The saved fold assignment: ``patient,label,images,fold``."""
OOF_FILE = "oof_predictions.csv"
"""Every patient's out-of-fold predictions (raw softmax)."""
METRICS_FILE = "cv_metrics.json"
"""Pooled out-of-fold metrics, per-fold metrics, mean ± sd across folds."""
DEPLOYED_FILE = "deployed.json"
"""``{"run_id", "stage", "role", "chosen"}``: the model deployed from the experiment."""
LOCK_FILE = ".experiment.lock"
"""Lock (``files.try_lock``) held by the process running the experiment."""
SHARED_WITH_RUNS = (CANCEL_FILE, JOB_FILE, TRAIN_LOG_FILE)
"""Files an experiment holds under a run's names."""


@dataclass(frozen=True)
class ExperimentDir:
    """An experiment folder (it need not exist yet): the paths of its files.

    Attributes:
        path: the experiment folder (``<runs>/<experiment_id>``).
    """

    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    @property
    def experiment_id(self) -> str:
        return self.path.name

    @property
    def root(self) -> Path:
        """The runs folder holding the experiment and its fold runs."""
        return self.path.parent

    def is_experiment(self) -> bool:
        """True when the folder holds ``experiment.json``."""
        return self.info_file.is_file()

    @property
    def info_file(self) -> Path:
        return self.path / EXPERIMENT_FILE

    @property
    def state_file(self) -> Path:
        return self.path / STATE_FILE

    @property
    def folds_file(self) -> Path:
        return self.path / FOLDS_FILE

    @property
    def oof_file(self) -> Path:
        return self.path / OOF_FILE

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def deployed_file(self) -> Path:
        return self.path / DEPLOYED_FILE

    @property
    def lock_file(self) -> Path:
        return self.path / LOCK_FILE

    @property
    def cancel_file(self) -> Path:
        return self.path / CANCEL_FILE

    @property
    def job_file(self) -> Path:
        return self.path / JOB_FILE

    @property
    def train_log(self) -> Path:
        return self.path / TRAIN_LOG_FILE
