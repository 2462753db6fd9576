"""Evaluation of a trained run on its held-out splits: what ``train.run_training`` does once both stages are saved.

- :func:`evaluate_run`: each stage's model on the test split → ``test_predictions.csv`` and ``metrics.json``
  (``evaluate.compute_metrics``); the CLI's ``evaluate`` re-runs it on a finished run.
- :func:`record_learning_check`: did each model learn (``learning_check.py``), from its validation predictions and
  the test predictions just written → run.json "learning_check".
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from breakhis_core.config import TrainConfig
from breakhis_core.data.arrays import ImageArrays
from breakhis_core.evaluation.metrics import read_class_table, read_prediction_table
from breakhis_core.files import write_json_atomic
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
