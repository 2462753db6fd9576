"""Evaluation of a trained run on its held-out splits: what ``train.run_training`` does once both stages are saved.

- :func:`evaluate_run`: each stage's model on the test split → ``test_predictions.csv`` and ``metrics.json``
  (``evaluate.compute_metrics``); the CLI's ``evaluate`` re-runs it on a finished run.
- :func:`record_learning_check`: did each model learn (``learning_check.py``), from its validation predictions and
  the test predictions just written → run.json "learning_check".
- :func:`evaluate_saved_models`: both, then the calibration (``calibration.calibrate_run``), for the stage models
  saved in the run; :func:`reevaluate_run` does it again after a model file changed (a cross-validation fold whose
  kept epoch the experiment chose on pooled validation, ``crossval.keep_pooled_epochs``), its images read again
  (:func:`load_split_images`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from breakhis_core.config import STAGES, TrainConfig
from breakhis_core.data.arrays import ImageArrays, load_arrays
from breakhis_core.data.splits import Split
from breakhis_core.evaluation.metrics import read_class_table, read_prediction_table
from breakhis_core.files import write_json_atomic
from breakhis_core.runs.progress import TrainingProgress
from breakhis_core.runs.rundir import RunDir
from breakhis_core.task import task_named

if TYPE_CHECKING:
    import keras


def evaluate_run(run_dir: Path, config: TrainConfig, models: dict[str, keras.Model], test: ImageArrays) -> dict:
    """Predict the test split with each model, write test_predictions.csv and metrics.json; return metrics.

    Args:
        run_dir: the run directory.
        config: the run's configuration (``group_by`` for patients, ``seed`` for the bootstrap).
        models: stage → classifier.
        test: the test split's images ``(N, S, S, 3)`` uint8 RGB [0, 255] and their records.

    Returns:
        The metrics.json dict (``M`` per stage: see ``evaluate.compute_metrics``, on P(malignant)); a subtype run's also
        holds ``"task": "subtype"`` and ``"classes": {stage: evaluate.compute_class_metrics(...)}``.
    """
    from breakhis_core.evaluation.metrics import compute_class_metrics, compute_metrics, write_prediction_table
    from breakhis_core.models.classifier import predict_probabilities

    run = RunDir(run_dir)
    task = task_named(config.task)
    split_info = run.read_info().get("split", {})
    test_images, test_records = test.images, test.records
    labels = np.array([r.label for r in test_records], dtype=np.int32)
    patients = np.array([r.group(config.group_by) for r in test_records])
    mags = np.array([r.magnification or 0 for r in test_records])
    class_probabilities = {stage: predict_probabilities(m, test_images) for stage, m in models.items()}
    probabilities = {stage: task.malignancy_probability(p) for stage, p in class_probabilities.items()}
    write_prediction_table(run.test_predictions_file, test_records, patients, probabilities,
                           None if task.is_binary else class_probabilities, task.codes)
    metrics = {
        "protocol": split_info.get("protocol", config.split),
        "leaky": bool(split_info.get("leaky", config.split == "image")),
        "split": "test",
        "models": {
            stage: compute_metrics(labels, p, patients, mags if mags.any() else None, seed=config.seed)
            for stage, p in probabilities.items()
        },
    }
    if not task.is_binary:
        class_labels = task.labels_of(test_records)
        metrics["task"] = task.name
        metrics["classes"] = {stage: compute_class_metrics(class_labels, p, patients, task.codes, seed=config.seed)
                              for stage, p in class_probabilities.items()}
    write_json_atomic(run.metrics_file, metrics)
    return metrics


def record_learning_check(run_dir: Path, models: dict[str, keras.Model], validation: ImageArrays, info: dict) -> dict:
    """Check that each model learned (``learning_check.py``) and record it in run.json as "learning_check".

    Args:
        models: stage → model.
        validation: the validation split's images ``(N, S, S, 3)`` uint8 RGB [0, 255], labels ``(N,)`` (class indices
            of the run's task) and records
            (their patients, by the run's ``group_by``, are what the check's bootstrap resamples).
        info: the run.json dict (updated and written).

    Uses the validation predictions and, when the test split was evaluated, ``test_predictions.csv``.
    Returns stage → ``LearningCheck.to_dict()``.
    """
    from breakhis_core.evaluation.learning_check import check_learning, check_learning_classes
    from breakhis_core.models.classifier import predict_probabilities

    run = RunDir(run_dir)
    config = run.load_config()
    task = task_named(config.task)
    val_x, val_y = validation.images, validation.labels
    val_patients = np.array([r.group(config.group_by) for r in validation.records])
    checks = {}
    for stage, model in models.items():
        if not task.is_binary:  # the labels are tumour types: judged on the classes
            probabilities = predict_probabilities(model, val_x)
            splits = {"val": (val_y, probabilities, val_patients)}
            test = read_class_table(run.test_predictions_file, stage, task.codes)
            if test is not None:
                splits["test"] = (test.labels, test.probabilities, test.patients)
            checks[stage] = check_learning_classes(splits, task, seed=config.seed).to_dict()
            continue
        scores = predict_probabilities(model, val_x)[:, 1] if len(val_x) else np.zeros(0)
        splits = {"val": (val_y, scores, val_patients)}
        test = read_prediction_table(run.test_predictions_file, stage)
        if test is not None:
            splits["test"] = (test.labels, test.p_malignant, test.patients)
        checks[stage] = check_learning(splits, seed=config.seed).to_dict()
    info["learning_check"] = checks
    run.write_info(info)
    return checks


def load_split_images(run_dir: Path, config: TrainConfig, names: tuple[str, ...] = ("train", "val", "test")
                      ) -> dict[str, ImageArrays]:
    """The run's split (split.csv) parts ``names`` loaded at ``config.input_size``, stain-normalised as configured:
    split name → ``(N, S, S, 3)`` uint8 RGB [0, 255] images, labels and records (files that no longer decode are
    each part's ``rejected``)."""
    from breakhis_core.data.stain import get_normalizer

    run = RunDir(run_dir)
    split_info = run.read_info().get("split", {})
    split = Split.load_csv(run.split_file, split_info.get("protocol", config.split),
                           bool(split_info.get("leaky", False)), config.group_by)
    transform = get_normalizer(config.stain_norm)
    task = task_named(config.task)
    return {name: load_arrays(split.parts[name], config.input_size, transform, task=task) for name in names}


def evaluate_saved_models(run_dir: Path, config: TrainConfig, arrays: dict[str, ImageArrays], info: dict,
                          progress: TrainingProgress | None = None) -> None:
    """The saved stage models (``<stage>.keras``) on the run's held-out splits: test predictions and metrics
    (:func:`evaluate_run`, when the test split holds images), the learning check (:func:`record_learning_check`,
    ``info`` updated and written), then the validation predictions and calibration (``calibration.calibrate_run``).

    Args:
        arrays: split name → images; "val" and "test" are used.
        progress: the training's progress (stages "evaluating", then "calibrating"), or None.
    """
    from breakhis_core.evaluation.calibration import calibrate_run
    from breakhis_core.models.loading import load_model

    models = {stage: load_model(RunDir(run_dir).model_file(stage)) for stage in STAGES}
    if progress is not None:
        progress.update(force=True, stage="evaluating", message="evaluating both models on the test split")
    if len(arrays["test"].images):
        evaluate_run(run_dir, config, models, arrays["test"])
    record_learning_check(run_dir, models, arrays["val"], info)
    if progress is not None:
        progress.update(force=True, stage="calibrating",
                        message="fitting calibration and threshold on the validation split")
    calibrate_run(run_dir, config, models, arrays["val"].images, arrays["val"].records)  # after test_predictions.csv


def reevaluate_run(run_dir: Path) -> None:
    """:func:`evaluate_saved_models` for a finished run whose model files changed, its validation and test images
    read again."""
    run = RunDir(run_dir)
    config = run.load_config()
    evaluate_saved_models(run.path, config, load_split_images(run.path, config, ("val", "test")), run.read_info())
