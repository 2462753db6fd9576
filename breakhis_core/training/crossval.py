"""Patient-wise K-fold cross-validation as one experiment: K ordinary runs, pooled out-of-fold metrics.

Every patient (slide id or case number, ``group_by``) is assigned to one of K folds by
scikit-learn's ``StratifiedGroupKFold`` (``data.assign_folds``: shuffled with the seed, balanced by
class as whole patients allow). Fold k is an ordinary run (``split="cv"``, ``fold=k``) whose test
split is fold k's patients and whose validation patients are carved from the other folds' patients;
it trains the full two-stage recipe, evaluates its test split and fits its calibration
(``calibration.py``). Optionally a final model is trained on all patients (validation carved, no
test split), its estimate being the cross-validation figures.

The kept epoch of each stage and the operating point of each fold are chosen on pooled inner validation once
every fold has finished: fold k's on every fold model's validation predictions except those of fold k's own
test patients (:func:`keep_pooled_epochs`, :func:`pool_calibrations`), about K - 1 times the patients of one
fold's validation split. The final model trains exactly the epochs chosen on all folds' validation predictions
(:func:`set_final_epochs`). The experiment folder sits beside the runs (its file names: ``runs/experimentdir.py``,
``ExperimentDir``)::

    runs/<experiment_id>/          experiment_id = YYYYmmdd-HHMMSS-<mag>-cv<K>
      experiment.json              experiment_id, created, n_folds, group_by, seed, config (the base
                                   TrainConfig), runs (fold run ids, fold 1 first), final_run (or null),
                                   data summary, patients
      folds.csv                    patient,label,images,fold (the saved fold assignment)
      state.json                   {"status", "pid", "started", "updated", "ended", "error", "fold"}
      oof_predictions.csv          path,label,patient,magnification,fold,p_malignant_frozen,
                                   p_malignant_finetuned (raw softmax; every patient exactly once)
      cv_metrics.json              see :func:`evaluate_experiment`
      deployed.json                {"run_id", "stage", "role", "chosen"}: the model the user deployed
      cancel, job.json, train.log  as for a run (one background job trains all folds)
    runs/<run_id>/                 fold runs (run.json "experiment": experiment_id) and the final run

The experiment folder holds none of a run's files (config.json, run.json, status.json), so
``registry.list_runs`` never lists it; ``list_experiments`` does. ``run_experiment`` trains the
folds one after another in one process and resumes at the fold (and, through the fold's own
checkpoints, the epoch) an interrupted experiment reached.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import signal
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from breakhis_core.config import DEFAULT_THRESHOLD, STAGES, TrainConfig
from breakhis_core.errors import ConfigError, JobError, RunNotFoundError
from breakhis_core.evaluation.metrics import (
    METRIC_NAMES,
    PREDICTION_TABLE_COLUMNS,
    LabelledScores,
    PredictionColumn,
    compute_metrics,
    read_prediction_table,
    stage_column,
)
from breakhis_core.files import read_json, remove_temp_files, try_lock, unlock, write_json_atomic, write_text_atomic
from breakhis_core.lab.paths import runs_dir
from breakhis_core.runs.default_model import set_default
from breakhis_core.runs.experimentdir import ExperimentDir
from breakhis_core.runs.registry import load_run, write_card
from breakhis_core.runs.rundir import RunDir, live_status, now_iso, unique_name
from breakhis_core.runs.status import RunStatus
from breakhis_core.training.callbacks import KEEP_MONITORS, KeptEpoch, load_stage_weights, save_model_atomic

OPERATING_METRICS = ("sensitivity", "specificity", "image_accuracy", "patient_verdict_accuracy")

FOLD_COLUMN = "fold"
"""The test fold (1..K) of a patient, in folds.csv and oof_predictions.csv."""
FOLDS_TABLE_COLUMNS = (PredictionColumn.PATIENT, PredictionColumn.LABEL, "images", FOLD_COLUMN)
"""folds.csv: patient key, majority label, image count, test fold."""


def is_experiment(path: str | Path) -> bool:
    """True when ``path`` is an experiment folder (it holds experiment.json)."""
    return ExperimentDir(path).is_experiment()


@dataclass
class Experiment:
    """One experiment folder, as read at one moment.

    Attributes:
        experiment_id: the folder name.
        path: the experiment folder (its parent is the runs folder).
        info: experiment.json.
        status: queued, running, done, failed, cancelled, interrupted (running, process gone).
        state: state.json.
        metrics: cv_metrics.json, or None before all folds are done.
        deployed: deployed.json, or None.
        error: why it failed or was interrupted.
    """

    experiment_id: str
    path: Path
    info: dict
    status: RunStatus
    state: dict = field(default_factory=dict)
    metrics: dict | None = None
    deployed: dict | None = None
    error: str | None = None

    @property
    def root(self) -> Path:
        return self.path.parent

    @property
    def n_folds(self) -> int:
        return int(self.info["n_folds"])

    @property
    def config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.info["config"])

    @property
    def run_ids(self) -> list[str]:
        """Fold run ids (fold 1 first), then the final run's when there is one."""
        return list(self.info["runs"]) + ([self.info["final_run"]] if self.info.get("final_run") else [])

    def role(self, run_id: str) -> str:
        """What a run of this experiment is: "fold k of K" or "final model (all patients)"."""
        if run_id == self.info.get("final_run"):
            return "final model retrained on all patients"
        return f"fold {self.info['runs'].index(run_id) + 1} of {self.n_folds}"

    def runs(self):
        """The experiment's runs that exist (``registry.Run``), in :attr:`run_ids` order."""

        found = []
        for run_id in self.run_ids:
            try:
                found.append(load_run(self.root / run_id))
            except RunNotFoundError:
                continue
        return found

    def headline(self) -> dict:
        """A flat row for tables: pooled out-of-fold accuracies of the finetuned model (else frozen)."""
        pooled = (self.metrics or {}).get("pooled") or {}
        stage = next((s for s in reversed(STAGES) if s in pooled), None)
        overall = pooled[stage]["overall"] if stage else {}
        source = (self.info.get("data") or {}).get("source") or self.info["config"].get("data", "")
        return {
            "experiment": self.experiment_id,
            "status": self.status,
            "date": str(self.info.get("created", ""))[:16].replace("T", " "),
            "data": Path(source).name if source else None,
            "magnification": self.info["config"].get("magnification"),
            "split": f"{self.n_folds}-fold CV by {self.info.get('group_by')}",
            "model": stage,
            "patient_recognition_rate": (overall.get("patient_recognition_rate") or {}).get("value"),
            "image_accuracy": (overall.get("image_accuracy") or {}).get("value"),
            "roc_auc": (overall.get("roc_auc") or {}).get("value"),
            "deployed": f"{self.deployed['run_id']}:{self.deployed['stage']}" if self.deployed else None,
        }


def _read_experiment(path: Path) -> Experiment:

    folder = ExperimentDir(path)
    info = read_json(folder.info_file)
    if not isinstance(info, dict) or "n_folds" not in info:
        raise RunNotFoundError(f"experiment.json is unreadable. Received: {path}")
    state = read_json(folder.state_file, {}) or {}
    status, error = live_status(path, state)
    return Experiment(path.name, path, info, status, state, read_json(folder.metrics_file),
                      read_json(folder.deployed_file), error)


def list_experiments(root: str | Path | None = None) -> list[Experiment]:
    """Every readable experiment under the runs folder ``root``, newest first."""

    root = runs_dir(root)
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        if not entry.name.startswith(".") and entry.is_dir() and is_experiment(entry):
            try:
                found.append(_read_experiment(entry))
            except RunNotFoundError:
                continue
    return sorted(found, key=lambda e: (str(e.info.get("created", "")), e.experiment_id), reverse=True)


def load_experiment(ref: str | Path, root: str | Path | None = None) -> Experiment:
    """An experiment by id (a folder of ``root``) or by its folder's path.

    Raises:
        RunNotFoundError: when no experiment folder matches.
    """

    candidates = [Path(ref).expanduser()] if Path(ref).is_absolute() else [runs_dir(root) / str(ref), Path(ref)]
    for candidate in candidates:
        if is_experiment(candidate):
            return _read_experiment(candidate.resolve())
    raise RunNotFoundError(f"no such experiment. Received: experiment={ref}")


def experiment_of(run) -> Experiment | None:
    """The experiment a ``registry.Run`` belongs to (run.json "experiment"), or None."""
    experiment_id = run.info.get("experiment")
    if not experiment_id or not is_experiment(run.path.parent / experiment_id):
        return None
    try:
        return _read_experiment(run.path.parent / experiment_id)
    except RunNotFoundError:
        return None


# ----------------------------------------------------------------------------- preparing


def _new_experiment_id(config: TrainConfig, root: Path) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    mag = "all" if config.magnification == "all" else f"{config.magnification}x"
    return unique_name(root, f"{stamp}-{mag}-cv{config.cv_folds}")


def prepare_experiment(config: TrainConfig, runs_root: str | Path, final_model: bool = False) -> Path:
    """Create an experiment for ``config`` (``split="cv"``, ``cv_folds`` = K): folds, and K queued fold runs.

    The data are scanned once; the folds are made and saved (folds.csv); every fold run is prepared
    (``run_setup.prepare_run``) before anything trains, so bad data fail at once.

    Args:
        config: the base configuration; ``split`` must be "cv" (``fold`` is set per fold run).
        runs_root: the runs folder.
        final_model: also prepare a run on all patients (validation carved patient-wise, no test split).

    Returns:
        The experiment folder (status "queued").

    Raises:
        ConfigError: for a config that is not ``split="cv"`` or asks for the multi-worker strategy.
        SplitError: when the patients are too few for K folds.
    """
    from breakhis_core.data.splits import assign_folds
    from breakhis_core.data.records import filter_magnification, scan
    from breakhis_core.task import task_named
    from breakhis_core.models.backbones import get_backbone
    from breakhis_core.training.setup import describe_weights, prepare_run

    if config.split != "cv":
        raise ConfigError(f"a cross-validation experiment needs split=cv. Received: split={config.split}")
    if config.strategy == "multiworker":
        raise ConfigError("cross-validation trains its folds in one process; the multiworker strategy is not "
                          "supported. Received: strategy=multiworker")
    config = dataclasses.replace(config, fold=1).validate()
    describe_weights(config.weights, get_backbone(config.backbone))
    scanned = scan(config.data)
    records = filter_magnification(scanned.records, config.magnification_filter)
    folds = assign_folds(records, config.cv_folds, config.seed, config.group_by, task_named(config.task))
    root = Path(runs_root)
    root.mkdir(parents=True, exist_ok=True)
    experiment_id = _new_experiment_id(config, root)
    exp_dir = root / experiment_id
    exp_dir.mkdir()
    _write_folds(ExperimentDir(exp_dir).folds_file, records, folds, config.group_by)
    info = {
        "experiment_id": experiment_id,
        "created": now_iso(),
        "n_folds": config.cv_folds,
        "group_by": config.group_by,
        "seed": config.seed,
        "config": config.to_dict(),
        "runs": [],
        "final_run": None,
        "data": {**scanned.summary(), "images_used": len(records)},
        "patients": len(folds),
    }
    info["data"].pop("rejected", None)
    write_json_atomic(ExperimentDir(exp_dir).state_file, {"status": RunStatus.QUEUED, "created": now_iso(), "updated": now_iso()})
    for fold in range(1, config.cv_folds + 1):
        run_dir = prepare_run(dataclasses.replace(config, fold=fold), root, scanned=scanned, experiment=experiment_id)
        info["runs"].append(run_dir.name)
        write_json_atomic(ExperimentDir(exp_dir).info_file, info)
    if final_model:
        everyone = dataclasses.replace(config, split="patient", fold=1, train_fraction=1 - config.val_fraction,
                                       test_fraction=0.0)
        info["final_run"] = prepare_run(everyone, root, scanned=scanned, experiment=experiment_id).name
    write_json_atomic(ExperimentDir(exp_dir).info_file, info)
    return exp_dir


def _write_folds(path: Path, records, folds: dict[str, int], group_by: str) -> None:
    """folds.csv: ``FOLDS_TABLE_COLUMNS``, one row per patient (its majority label and image count), by fold."""
    images = Counter(r.group(group_by) for r in records)
    labels = defaultdict(Counter)
    for record in records:
        labels[record.group(group_by)][record.label] += 1
    lines = [",".join(FOLDS_TABLE_COLUMNS)]
    for patient in sorted(folds, key=lambda p: (folds[p], p)):
        lines.append(f"{patient},{labels[patient].most_common(1)[0][0]},{images[patient]},{folds[patient]}")
    write_text_atomic(path, "\n".join(lines) + "\n")


def read_folds(exp_dir: str | Path) -> dict[str, int]:
    """The saved fold assignment: patient → fold (1..K)."""
    with open(ExperimentDir(exp_dir).folds_file, newline="", encoding="utf-8") as handle:
        return {row[PredictionColumn.PATIENT]: int(row[FOLD_COLUMN]) for row in csv.DictReader(handle)}


# ----------------------------------------------------------------------------- training


def _set_state(exp_dir: Path, status: RunStatus, **fields) -> None:
    state_file = ExperimentDir(exp_dir).state_file
    current = read_json(state_file, {}) or {}
    current.update(fields, status=status, updated=now_iso())
    write_json_atomic(state_file, current)


class _CancelRelay:
    """Copies the experiment's cancel request to the fold run training now (checked every ``interval_s``)."""

    def __init__(self, exp_dir: Path, interval_s: float = 0.5):
        self.exp_dir, self.interval_s = exp_dir, interval_s
        self.run_dir: Path | None = None
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self.stopped.wait(self.interval_s):
            if self.run_dir is not None and ExperimentDir(self.exp_dir).cancel_file.exists():
                RunDir(self.run_dir).request_cancel()

    def __enter__(self) -> "_CancelRelay":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join()


def run_experiment(exp_dir: str | Path, listener=None) -> RunStatus:
    """Train (or resume) every fold run of an experiment in turn, then pool the results.

    Runs already done are skipped; an interrupted fold resumes from its last epoch checkpoint.
    A ``cancel`` file in the experiment folder (or SIGTERM) stops the fold training now at the
    next batch and leaves the experiment "cancelled".

    Args:
        exp_dir: a folder made by :func:`prepare_experiment`.
        listener: optional ``f(event: dict)`` for each progress event; messages start "fold k/K: ".

    Returns:
        "done" or "cancelled". Failures set status "failed" and re-raise.

    Raises:
        JobError: when another process is training this experiment.
    """
    import keras
    from breakhis_core.training.train import run_training

    exp_dir = Path(exp_dir)
    experiment = load_experiment(exp_dir)
    folder = ExperimentDir(exp_dir)
    lock = try_lock(folder.lock_file)
    if lock is None:
        raise JobError(f"this experiment is being trained by another process (pid {experiment.state.get('pid')}). "
                       f"Received: experiment={experiment.experiment_id}")
    previous_handler = signal.signal(signal.SIGTERM, lambda *_: folder.cancel_file.touch())
    try:
        remove_temp_files(exp_dir)
        if experiment.state.get("status") != RunStatus.QUEUED:
            folder.cancel_file.unlink(missing_ok=True)  # an old request
        _set_state(exp_dir, RunStatus.RUNNING, pid=os.getpid(), started=now_iso(), error=None)
        with _CancelRelay(exp_dir) as relay:
            for index, run_id in enumerate(experiment.run_ids, start=1):
                run = load_run(exp_dir.parent / run_id)
                if run.status == RunStatus.DONE:
                    continue
                if folder.cancel_file.exists():
                    return _cancelled(exp_dir)
                role = experiment.role(run_id)
                if run_id == experiment.info.get("final_run"):
                    set_final_epochs(experiment, read_folds(exp_dir))
                _set_state(exp_dir, RunStatus.RUNNING, fold=index, current_run=run_id)
                relay.run_dir = run.path
                prefix = f"fold {index}/{experiment.n_folds}: " if index <= experiment.n_folds else "final model: "
                relay_listener = None if listener is None else (
                    lambda event, p=prefix: listener({**event, "message": p + str(event.get("message", ""))}))
                try:
                    status = run_training(run.path, listener=relay_listener)
                except BaseException as exc:
                    _set_state(exp_dir, RunStatus.FAILED, ended=now_iso(), error=f"{role}: {type(exc).__name__}: {exc}")
                    raise
                finally:
                    relay.run_dir = None
                keras.backend.clear_session()  # free the fold's graphs before the next one
                if status != RunStatus.DONE:
                    return _cancelled(exp_dir)
        evaluate_experiment(exp_dir)
        folder.cancel_file.unlink(missing_ok=True)
        _set_state(exp_dir, RunStatus.DONE, ended=now_iso(), fold=None, current_run=None)
        return RunStatus.DONE
    except BaseException as exc:
        if (read_json(folder.state_file, {}) or {}).get("status") == RunStatus.RUNNING:
            _set_state(exp_dir, RunStatus.FAILED, ended=now_iso(), error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        unlock(lock)


def _cancelled(exp_dir: Path) -> RunStatus:
    ExperimentDir(exp_dir).cancel_file.unlink(missing_ok=True)
    _set_state(exp_dir, RunStatus.CANCELLED, ended=now_iso())
    return RunStatus.CANCELLED


# ----------------------------------------------------------------------------- results


def evaluate_experiment(exp_dir: str | Path, n_bootstrap: int = 1000) -> dict:
    """Choose every fold's kept epochs (:func:`keep_pooled_epochs`) and operating points (:func:`pool_calibrations`)
    on pooled inner validation, then pool the fold runs' test predictions and write ``oof_predictions.csv`` and
    ``cv_metrics.json``.

    Returns (and writes) ``{"experiment_id", "protocol", "leaky": False, "n_folds", "group_by",
    "patients": {"in_folds", "predicted", "each_once"}, "kept_epoch": (:func:`keep_pooled_epochs`),
    "pooled": {stage: M}, "pooled_operating_point":
    {stage: {metric: {"value", "ci"}}}, "pooled_calibration": {stage: summary}, "folds": [{"fold",
    "run_id", "models": {stage: M}, "calibration": {stage: {"temperature", "threshold", "rule"}}}],
    "across_folds": {stage: {metric: {"mean", "sd", "n"}}}}`` where M is ``evaluate.compute_metrics``'s
    (threshold 0.5 on the raw softmax, patient-resampled CIs over all pooled patients), the operating
    point applies each fold's calibration and threshold to its own patients, and ``across_folds`` is
    the mean and sample standard deviation of each fold's metric values.

    Raises:
        ConfigError: when a fold run has no test predictions yet, or a patient is predicted twice.
    """
    from breakhis_core.evaluation.calibration import apply_temperature, calibration_summary, load_calibration

    experiment = load_experiment(exp_dir)
    folds = read_folds(experiment.path)
    kept_epoch = keep_pooled_epochs(experiment, folds)
    pool_calibrations(experiment, folds)
    rows, per_fold, calibrations = [], [], {}
    for fold, run_id in enumerate(experiment.info["runs"], start=1):
        run = load_run(experiment.root / run_id)
        predictions = RunDir(run.path).test_predictions_file
        if not predictions.is_file() or not run.metrics:
            raise ConfigError(f"fold {fold} has no test predictions yet (status {run.status}); finish training first. "
                              f"Received: run={run_id}")
        with open(predictions, newline="", encoding="utf-8") as handle:
            fold_rows = [{**row, FOLD_COLUMN: fold} for row in csv.DictReader(handle)]
        rows += fold_rows
        calibrations[fold] = {stage: load_calibration(run.path, stage) for stage in STAGES}
        per_fold.append({
            "fold": fold, "run_id": run_id, "models": run.metrics.get("models") or {},
            "calibration": {stage: dataclasses.asdict(c) for stage, c in calibrations[fold].items()},
        })
    patients_by_fold = defaultdict(set)
    for row in rows:
        patients_by_fold[row[PredictionColumn.PATIENT]].add(row[FOLD_COLUMN])
    twice = sorted(p for p, f in patients_by_fold.items() if len(f) > 1)
    if twice:
        raise ConfigError(f"patients predicted in several folds: {twice[:5]}. Received: experiment={experiment.experiment_id}")
    stages = [s for s in STAGES if all(row.get(stage_column(s)) for row in rows)]
    _write_oof(ExperimentDir(experiment.path).oof_file, rows, stages)
    labels = np.array([int(r[PredictionColumn.LABEL]) for r in rows])
    patients = np.array([r[PredictionColumn.PATIENT] for r in rows])
    mags = [r.get(PredictionColumn.MAGNIFICATION) or None for r in rows]
    fold_of = np.array([r[FOLD_COLUMN] for r in rows])
    seed = int(experiment.info.get("seed", 0))
    result = {
        "experiment_id": experiment.experiment_id,
        "protocol": f"cv{experiment.n_folds}",
        "leaky": False,
        "n_folds": experiment.n_folds,
        "group_by": experiment.info.get("group_by"),
        "patients": {"in_folds": len(folds), "predicted": len(patients_by_fold),
                     "each_once": not twice and set(patients_by_fold) == set(folds)},
        "kept_epoch": kept_epoch,
        "pooled": {}, "pooled_operating_point": {}, "pooled_calibration": {}, "folds": per_fold, "across_folds": {},
    }
    for stage in stages:
        raw = np.array([float(r[stage_column(stage)]) for r in rows])
        result["pooled"][stage] = compute_metrics(labels, raw, patients, mags if any(mags) else None,
                                                  n_bootstrap=n_bootstrap, seed=seed)
        calibrated, shifted = np.empty_like(raw), np.empty_like(raw)
        for fold, by_stage in calibrations.items():
            mine = fold_of == fold
            calibrated[mine] = apply_temperature(raw[mine], by_stage[stage].temperature)
            # Shifting each fold's scores by DEFAULT_THRESHOLD - its threshold makes one threshold apply every fold's own;
            # only threshold metrics are taken (a patient's images all lie in one fold, so its verdict is exact).
            shifted[mine] = calibrated[mine] - by_stage[stage].threshold + DEFAULT_THRESHOLD
        overall = compute_metrics(labels, shifted, patients, n_bootstrap=n_bootstrap, seed=seed)["overall"]
        result["pooled_operating_point"][stage] = {name: overall[name] for name in OPERATING_METRICS}
        summary = calibration_summary(labels, raw, 1.0)
        after = calibration_summary(labels, calibrated, 1.0)
        summary.update(ece_after=after["ece_before"], brier_after=after["brier_before"],
                       reliability_after=after["reliability_before"])
        result["pooled_calibration"][stage] = summary
        result["across_folds"][stage] = {
            name: _mean_sd([(f["models"].get(stage) or {}).get("overall", {}).get(name, {}).get("value")
                            for f in per_fold])
            for name in METRIC_NAMES
        }
    write_json_atomic(ExperimentDir(experiment.path).metrics_file, result)
    _rewrite_cards(experiment)
    return result


POOLED_RULE = "pooled inner validation of the other folds"
"""How a cross-validation fold's kept epochs are chosen (run.json "kept_epoch" "rule")."""
PER_FOLD_RULE = "each fold's own validation split"
"""The rule of experiments trained before epochs were recorded, and of ``keep_epoch=last``."""


@dataclass(frozen=True)
class PooledEpoch:
    """A stage's kept epoch chosen on pooled inner validation, for one fold (or the final model).

    Attributes:
        epoch: the chosen epoch, the same index in every fold model (1-based; stage 2's 0 is its starting point, the
            fold's stage-1 model).
        metric: "val_loss" (mean cross-entropy of the recorded P(malignant), nats per image) or "val_accuracy"
            (share of images called right at P(malignant) >= 0.5), as ``TrainConfig.keep_epoch`` names it.
        value: the pooled metric at ``epoch``.
        candidates: every epoch all fold models recorded → its pooled metric.
        n_images: pooled validation images.
        n_patients: pooled validation patients.
        pool: what was pooled, for people.
    """

    epoch: int
    metric: str
    value: float
    candidates: dict[int, float]
    n_images: int
    n_patients: int
    pool: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def pooled_metric(scores: LabelledScores, metric: str) -> float:
    """``metric`` of pooled validation predictions: "val_loss", the mean cross-entropy in nats per image (P(malignant)
    clipped to float64's epsilon from 0 and 1), or "val_accuracy", the share of images called right at 0.5."""
    if metric == "val_accuracy":
        return float(np.mean((scores.p_malignant >= 0.5) == (scores.labels == 1)))
    eps = np.finfo(np.float64).eps
    p = np.clip(scores.p_malignant.astype(np.float64), eps, 1 - eps)
    return float(-np.mean(np.where(scores.labels == 1, np.log(p), np.log1p(-p))))


def read_epoch_tables(run_dir: Path, stage: str) -> dict[int, LabelledScores]:
    """Epoch → the validation predictions a fold run recorded for it (``callbacks.record_epoch``): the epochs of the
    stage's history, and its starting point (0) when recorded; {} for a run that recorded none."""
    run = RunDir(run_dir)
    ran = {int(r["epoch"]) for r in run.read_history(stage)} | {0}
    tables = {}
    for epoch in run.recorded_epochs(stage):
        table = read_prediction_table(run.epoch_predictions_file(stage, epoch), stage) if epoch in ran else None
        if table is not None:
            tables[epoch] = table
    return tables


def choose_pooled_epoch(per_fold: list[dict[int, LabelledScores]], folds: dict[str, int], fold: int | None,
                        keep_epoch: str, pool: str) -> PooledEpoch | None:
    """The epoch whose pooled validation metric is best for test fold ``fold``.

    Args:
        per_fold: each fold run's :func:`read_epoch_tables` of one stage, fold 1 first.
        folds: patient → fold.
        fold: the test fold whose patients are left out of the pool (None: the final model, every patient pooled).
        keep_epoch: ``TrainConfig.keep_epoch``, one of ``callbacks.KEEP_MONITORS``.
        pool: what is pooled, for people.

    Returns:
        The epoch among those every fold model recorded whose pooled metric (:func:`pooled_metric` over
        :func:`pooled_validation`) is lowest (val_loss) or highest (val_accuracy), the earliest on a tie; None when
        no epoch is common to every fold or the pool is empty.
    """
    metric, mode = KEEP_MONITORS[keep_epoch]
    common = set.intersection(*(set(tables) for tables in per_fold)) if per_fold else set()
    candidates, best, size = {}, None, (0, 0)
    for epoch in sorted(common):
        scores = pooled_validation([{STAGES[0]: tables[epoch]} for tables in per_fold], folds, fold).get(STAGES[0])
        if scores is None or not len(scores.labels):
            return None
        value = candidates[epoch] = pooled_metric(scores, metric)
        size = (len(scores.labels), len(set(scores.patients.tolist())))
        better = best is None or (value < candidates[best] if mode == "min" else value > candidates[best])
        if np.isfinite(value) and better:
            best = epoch
    if best is None:
        return None
    return PooledEpoch(best, metric, candidates[best], candidates, size[0], size[1], pool)


def _pool_description(experiment: Experiment, fold: int | None) -> str:
    return f"the validation predictions of the {experiment.n_folds} folds' models" + (
        f" except those of fold {fold}'s test patients" if fold else "")


def _epoch_tables(experiment: Experiment) -> dict[str, list[dict[int, LabelledScores]]]:
    """Stage → each fold run's recorded epochs (:func:`read_epoch_tables`), for the stages every fold recorded."""
    tables = {stage: [read_epoch_tables(experiment.root / run_id, stage) for run_id in experiment.info["runs"]]
              for stage in STAGES}
    return {stage: per_fold for stage, per_fold in tables.items() if per_fold and all(per_fold)}


def keep_pooled_epochs(experiment: Experiment, folds: dict[str, int]) -> dict:
    """Choose every fold's kept epoch of each stage on pooled inner validation and make it the fold's model.

    With the fold's own validation split (a fifth of its training patients) the kept epoch follows a handful of
    patients. Every fold run recorded each candidate epoch's validation predictions and trained weights
    (``callbacks.record_epoch``); fold k keeps, per stage, the epoch (the same index for every fold model; stage 2's
    0 is its starting point, the fold's own stage-1 model) whose ``keep_epoch`` metric over :func:`pooled_validation`
    (every fold model's validation predictions at that epoch, except those of fold k's test patients) is best.

    Cheapest honest way: nothing is trained again and no image passes through a model during the choice; only the
    layers a stage trains are kept per epoch (the head in stage 1, block5 and the head in stage 2), so a fold whose
    pooled choice differs from its own gets that epoch's weights written into its ``<stage>.keras`` and is evaluated
    once more (``run_evaluation.reevaluate_run``: test predictions, metrics, learning check, validation predictions),
    so its out-of-fold predictions are that epoch's. The per-epoch weights are deleted once every fold holds its
    choice; the per-epoch predictions stay, so the choice can be recomputed. Each fold's run.json records the rule
    ("kept_epoch") and its "kept_epochs" the chosen epoch; the fold's model is written before its run.json, so an
    interrupted choice is made again from the start.

    Experiments trained before epochs were recorded (no ``epochs/`` in some fold) and ``keep_epoch=last`` keep each
    fold's own choice, and the rule says so.

    Returns:
        cv_metrics.json's "kept_epoch": ``{"rule", "metric", "stages": {stage: {"rule", "epochs": [per fold],
        "own_epochs": [per fold]}}}``.
    """
    from breakhis_core.models.loading import load_model
    from breakhis_core.evaluation.run_evaluation import reevaluate_run

    keep_epoch = experiment.config.keep_epoch
    tables = _epoch_tables(experiment) if keep_epoch in KEEP_MONITORS else {}
    summary = {"rule": POOLED_RULE if tables else PER_FOLD_RULE,
               "metric": KEEP_MONITORS[keep_epoch][0] if keep_epoch in KEEP_MONITORS else None, "stages": {}}
    for stage in STAGES:
        summary["stages"][stage] = {"rule": POOLED_RULE if stage in tables else PER_FOLD_RULE, "epochs": [],
                                    "own_epochs": []}
    for fold, run_id in enumerate(experiment.info["runs"], start=1):
        run = RunDir(experiment.root / run_id)
        info = run.read_info()
        recorded = (info.get("kept_epoch") or {}).get("stages") or {}  # a choice applied before: the fold's own kept
        own = {stage: (recorded.get(stage) or {}).get("own_epoch", ((info.get("kept_epochs") or {}).get(stage) or {})
                                                      .get("epoch")) for stage in STAGES}
        pool = _pool_description(experiment, fold)
        chosen = {stage: choice for stage in tables
                  if (choice := choose_pooled_epoch(tables[stage], folds, fold, keep_epoch, pool)) is not None}
        changed = False
        for stage, choice in chosen.items():
            if ((info.get("kept_epochs") or {}).get(stage) or {}).get("epoch") != choice.epoch:
                model = load_model(run.model_file(stage))  # checked, uncompiled: only its weights change
                load_stage_weights(model, run.epoch_weights_file(stage, choice.epoch))
                save_model_atomic(model, run.model_file(stage))
                changed = True
        if changed:
            reevaluate_run(run.path)
            info = run.read_info()  # the learning check was rewritten
        stages = {}
        for stage in STAGES:
            choice = chosen.get(stage)
            previous = (info.get("kept_epochs") or {}).get(stage) or {}
            if choice is None:
                stages[stage] = {"rule": PER_FOLD_RULE, "epoch": previous.get("epoch"), "own_epoch": own[stage]}
            else:
                stages[stage] = {"rule": POOLED_RULE, "own_epoch": own[stage], **choice.to_dict()}
                info.setdefault("kept_epochs", {})[stage] = KeptEpoch(
                    choice.epoch, previous.get("epochs_run", max(choice.candidates)), choice.metric, choice.value,
                    _pooled_reason(choice), choice.candidates.get(0)).to_dict()
            summary["stages"][stage]["epochs"].append(stages[stage]["epoch"])
            summary["stages"][stage]["own_epochs"].append(own[stage])
        info["kept_epoch"] = {"rule": POOLED_RULE if chosen else PER_FOLD_RULE,
                              "pool": pool if chosen else None, "stages": stages,
                              "note": None if chosen else _per_fold_note(keep_epoch)}
        run.write_info(info)
    if tables:
        for run_id in experiment.info["runs"]:
            for path in RunDir(experiment.root / run_id).epochs.glob("*.weights.npz"):
                path.unlink(missing_ok=True)
    return summary


def _pooled_reason(choice: PooledEpoch) -> str:
    """The kept epoch's sentence (run.json "kept_epochs" "reason", the card) for a pooled choice."""
    what = "the starting point (the fold's stage-1 model)" if choice.epoch == 0 else f"epoch {choice.epoch}"
    direction = "lowest" if choice.metric == "val_loss" else "highest"
    return (f"{what} has the {direction} {choice.metric} ({choice.value:.4f}) on pooled inner validation: "
            f"{choice.n_images} images of {choice.n_patients} patients, {choice.pool}")


def _per_fold_note(keep_epoch: str) -> str:
    if keep_epoch not in KEEP_MONITORS:
        return f"keep_epoch={keep_epoch}: each fold keeps its last epoch"
    return ("this experiment's folds recorded no per-epoch validation predictions (trained before they were "
            "recorded): each fold keeps the epoch its own validation split chose")


def set_final_epochs(experiment: Experiment, folds: dict[str, int]) -> dict | None:
    """Let the final model (trained on all patients) train exactly the epochs the folds chose, before it trains.

    The final model has no test split; its epochs are chosen on every fold model's validation predictions pooled
    (:func:`choose_pooled_epoch` with no patient left out): its config.json gets ``epochs_frozen`` and
    ``epochs_finetune`` set to them (stage 2's 0: no fine-tuning, the fine-tuned model is stage 1's) and
    ``keep_epoch="last"``, and run.json "kept_epoch" states the rule. A final run that has started training, or an
    experiment whose folds recorded no epochs, is left as it is (its own validation split chooses; run.json says so).

    Returns:
        The final run's run.json "kept_epoch", or None without a final run.
    """
    final_id = experiment.info.get("final_run")
    if not final_id:
        return None
    run = RunDir(experiment.root / final_id)
    info = run.read_info()
    if info.get("kept_epoch") or RunStatus.read(run.read_status().get("status")) is not RunStatus.QUEUED or any(
            run.history_file(stage).exists() for stage in STAGES) or run.checkpoints.exists():
        return info.get("kept_epoch")
    config = run.load_config()
    first, second = STAGES
    configured = {first: config.epochs_frozen, second: config.epochs_finetune}
    tables = _epoch_tables(experiment) if config.keep_epoch in KEEP_MONITORS else {}
    pool = _pool_description(experiment, None)
    chosen = {stage: choose_pooled_epoch(tables[stage], folds, None, config.keep_epoch, pool) for stage in tables}
    epochs = {stage: chosen[stage].epoch if chosen.get(stage) else 0 if configured[stage] == 0 else None
              for stage in STAGES}  # a stage of 0 epochs records nothing and stays at 0
    if not chosen or None in epochs.values():
        record = {"rule": PER_FOLD_RULE, "pool": None, "stages": {},
                  "note": (f"keep_epoch={config.keep_epoch}: the final model keeps its last epoch"
                           if config.keep_epoch not in KEEP_MONITORS else
                           "the folds recorded no per-epoch validation predictions: the final model keeps the epoch "
                           "its own validation split chooses")}
    else:
        run.save_config(dataclasses.replace(config, epochs_frozen=epochs[first], epochs_finetune=epochs[second],
                                            keep_epoch="last"))
        record = {"rule": "epochs chosen on pooled inner validation of all folds", "pool": pool,
                  "stages": {stage: chosen[stage].to_dict() if chosen.get(stage) else {"epoch": 0} for stage in STAGES},
                  "note": "the final model trains exactly the chosen epochs of each stage and keeps its last"}
    info["kept_epoch"] = record
    run.write_info(info)
    return record


def pool_calibrations(experiment: Experiment, folds: dict[str, int]) -> None:
    """Fit every fold's (and the final model's) temperature and threshold on pooled inner validation.

    One fold's validation split holds a few patients (about a fifth of the other folds'), too few to fit an
    operating point on (``calibration.MIN_FIT_PATIENTS``). Every fold's model predicted its own validation
    patients with its kept epoch (``val_predictions.csv``, written again where :func:`keep_pooled_epochs` changed
    the epoch); fold k is calibrated on :func:`pooled_validation`, all those predictions
    except the ones of fold k's own test patients (so no test patient's label chooses its operating point), about
    ``K - 1`` times a fold's validation patients. The final model (no test split) pools them all.
    """
    from breakhis_core.evaluation.calibration import refit_calibration
    from breakhis_core.evaluation.metrics import read_class_table, read_prediction_table
    from breakhis_core.task import task_named

    task = task_named(experiment.config.task)
    tables = [{stage: read_prediction_table(RunDir(experiment.root / run_id).val_predictions_file, stage)
               for stage in STAGES} for run_id in experiment.info["runs"]]
    class_tables = None if task.is_binary else [
        {stage: read_class_table(RunDir(experiment.root / run_id).val_predictions_file, stage, task.codes)
         for stage in STAGES} for run_id in experiment.info["runs"]]
    targets = [(run_id, fold) for fold, run_id in enumerate(experiment.info["runs"], start=1)]
    if experiment.info.get("final_run"):
        targets.append((experiment.info["final_run"], None))
    for run_id, fold in targets:
        refit_calibration(experiment.root / run_id, experiment.config, pooled_validation(tables, folds, fold),
                          _pool_description(experiment, fold),
                          None if class_tables is None else pooled_validation(class_tables, folds, fold))


def pooled_validation(tables: list[dict], folds: dict[str, int], fold: int | None) -> dict:
    """Stage → ``evaluate.LabelledScores`` (or ``ClassScores``): the fold runs' validation predictions (``tables``, one
    ``{stage: LabelledScores | ClassScores | None}`` per fold run) concatenated without the patients of test fold
    ``fold`` (``folds``: patient → fold; None keeps every patient). Stages some fold lacks are left out."""
    pooled = {}
    for stage in STAGES:
        parts = [table.get(stage) for table in tables]
        if not parts or any(part is None for part in parts):
            continue
        masks = [np.array([folds.get(str(p)) != fold for p in part.patients], dtype=bool) for part in parts]
        pooled[stage] = type(parts[0])(*(np.concatenate([getattr(part, f.name)[mask] for part, mask in zip(parts, masks)])
                                         for f in dataclasses.fields(parts[0])))
    return pooled


def _mean_sd(values) -> dict:
    defined = np.array([v for v in values if v is not None], dtype=np.float64)
    return {"mean": float(defined.mean()) if len(defined) else None,
            "sd": float(defined.std(ddof=1)) if len(defined) > 1 else None, "n": int(len(defined))}


def _write_oof(path: Path, rows: list[dict], stages: list[str]) -> None:
    """oof_predictions.csv: the prediction table's leading columns, the fold, then each stage's P(malignant)."""
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    columns = [*PREDICTION_TABLE_COLUMNS, FOLD_COLUMN]
    writer.writerow(columns + [stage_column(s) for s in stages])
    for row in rows:
        writer.writerow([row.get(column, "") for column in columns] + [row[stage_column(s)] for s in stages])
    write_text_atomic(path, table.getvalue())


def _rewrite_cards(experiment: Experiment) -> None:
    """Rewrite the model cards of the experiment's finished runs (they quote the experiment's figures)."""

    for run in experiment.runs():
        if run.status == RunStatus.DONE:
            write_card(run, card_section(run))


def choose_deployable(experiment: Experiment, run_id: str, stage: str) -> dict:
    """Make one of the experiment's models (a fold's, or the final model's) the active model.

    Sets ``default.json`` (``registry.set_default``), writes ``deployed.json`` and rewrites the
    experiment's model cards, which then say which model was deployed.

    Raises:
        RunNotFoundError: when ``run_id`` is not a run of this experiment or has no such model.
    """
    if run_id not in experiment.run_ids:
        raise RunNotFoundError(f"not a run of experiment {experiment.experiment_id}. Received: run={run_id}")
    set_default(run_id, stage, experiment.root)
    chosen = {"run_id": run_id, "stage": stage, "role": experiment.role(run_id), "chosen": now_iso()}
    write_json_atomic(ExperimentDir(experiment.path).deployed_file, chosen)
    _rewrite_cards(load_experiment(experiment.path))
    return chosen


def card_section(run) -> dict | None:
    """The model card's "experiment" entry of a run that belongs to an experiment, else None.

    ``{"experiment_id", "role", "deployed", "deployed_model", "estimate", "n_folds", "kept_epoch"}``: ``deployed``
    tells whether this run's model is the one the user chose to deploy from the experiment; ``estimate`` holds the
    pooled out-of-fold figures (the estimate of a final model, which has no test split of its own); ``kept_epoch``
    the rule and every fold's kept epochs (cv_metrics.json "kept_epoch", :func:`keep_pooled_epochs`).
    """
    experiment = experiment_of(run)
    if experiment is None:
        return None
    pooled = (experiment.metrics or {}).get("pooled") or {}
    return {
        "experiment_id": experiment.experiment_id,
        "role": experiment.role(run.run_id) if run.run_id in experiment.run_ids else "unknown",
        "deployed": (experiment.deployed or {}).get("stage") if (experiment.deployed or {}).get("run_id") == run.run_id
        else None,
        "deployed_model": (f"{experiment.deployed['run_id']}:{experiment.deployed['stage']}"
                           if experiment.deployed else None),
        "estimate": {stage: {name: m["overall"][name] for name in METRIC_NAMES} | {
            "n_images": m["overall"]["n_images"], "n_patients": m["overall"]["n_patients"]}
            for stage, m in pooled.items()} or None,
        "n_folds": experiment.n_folds,
        "kept_epoch": (experiment.metrics or {}).get("kept_epoch"),
    }
