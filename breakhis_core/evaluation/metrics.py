"""Test-set metrics with patient-resampled (cluster) bootstrap confidence intervals.

Definitions, for N images of P patients, a prediction being ``p_malignant >= threshold``
and malignant the positive class:

- ``image_accuracy``: correctly classified images / all images (the paper's Nr / Na).
- ``patient_recognition_rate``: mean over patients of each patient's image accuracy
  (Spanhol et al., 2016); every patient counts once, whatever its number of images.
- ``patient_verdict_accuracy``: share of patients whose verdict (mean ``p_malignant`` over
  their images ``>= threshold``) equals their majority label (a tie counts as malignant).
- ``sensitivity`` tp / (tp + fn), ``specificity`` tn / (tn + fp), ``precision`` tp / (tp + fp),
  ``f1`` 2 tp / (2 tp + fp + fn).
- ``roc_auc``: probability that a malignant image scores higher than a benign one, ties
  counting one half (Mann-Whitney U / (n_malignant · n_benign)); threshold-free.
- ``patient_auc``: the same at patient level: probability that a malignant patient's mean
  ``p_malignant`` (over all its images, every magnification) exceeds a benign patient's, a patient's
  label being its majority label (as for ``patient_verdict_accuracy``); threshold-free.

Each metric is ``{"value": float | None, "ci": [lo, hi] | None}``. The value is None when
the metric is undefined (a zero denominator, e.g. AUC with one class). The 95 % CI is the
2.5–97.5 percentile interval over ``n_bootstrap`` resamples that draw *patients* with
replacement and keep all their images, since images of one patient are not independent.
Resamples where the metric is undefined are dropped; the CI is None when fewer than two
patients are present or the metric is undefined in more than half of the resamples.

A model of the subtype task (K = 8 tumour types, ``task.py``) is measured twice: on the malignancy figures above,
from P(malignant) = the sum of its malignant types' probabilities (so runs of both tasks compare on the same
binary figures), and on its classes by :func:`compute_class_metrics` (``CLASS_METRIC_NAMES``), a class being
predicted by the argmax of the softmax:

- ``balanced_accuracy``: mean recall over the classes present among the true labels (scikit-learn's
  ``balanced_accuracy_score``); ``macro_f1``: mean F1 over the classes present among the true or predicted labels
  (``f1_score(average="macro")``);
- ``macro_auc``: mean one-vs-rest ROC AUC (class k's probability ranking class k against the rest) over the classes
  whose AUC is defined (present, and not the only class); with every class present it is scikit-learn's
  ``roc_auc_score(multi_class="ovr", average="macro")``;
- ``patient_balanced_accuracy``, ``patient_macro_f1``: the same over patients, a patient's predicted class being
  the argmax of its images' mean probability vector and its true class the most frequent label of its images (a tie
  goes to the class first in the task's order);
- per class: ``recall``, ``precision``, ``f1``, ``auc``; and the K×K ``confusion_matrix`` (rows true, columns
  predicted) of images and of patients.

Their CIs come from the same patient resamples.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np

from breakhis_core.config import DEFAULT_THRESHOLD, STAGES
from breakhis_core.errors import DatasetLayoutError

class PredictionColumn(StrEnum):
    """The named columns of a prediction table (``test_predictions.csv``, ``val_predictions.csv``, a cross-validation's
    ``oof_predictions.csv``): the image's path, its label (0 benign / 1 malignant, whatever the task), its patient key,
    its magnification (40/100/200/400, empty when unknown) and, in a subtype run's tables, its tumour type (code)."""

    PATH = "path"
    LABEL = "label"
    PATIENT = "patient"
    MAGNIFICATION = "magnification"
    TUMOUR_TYPE = "tumour_type"


PREDICTION_TABLE_COLUMNS = (PredictionColumn.PATH, PredictionColumn.LABEL, PredictionColumn.PATIENT,
                            PredictionColumn.MAGNIFICATION)
"""The leading columns of every prediction table, in order; the probabilities follow (:func:`stage_column`,
:func:`class_stage_column`)."""


def stage_column(stage: str) -> str:
    """The prediction-table column of one stage's P(malignant) (in [0, 1]): ``p_malignant_<stage>``."""
    return f"p_malignant_{stage}"


def class_stage_column(code: str, stage: str) -> str:
    """The prediction-table column of one stage's probability of class ``code`` (a subtype model's):
    ``p_<code>_<stage>``."""
    return f"p_{code}_{stage}"


METRIC_NAMES = (
    "image_accuracy",
    "patient_recognition_rate",
    "patient_verdict_accuracy",
    "sensitivity",
    "specificity",
    "precision",
    "f1",
    "roc_auc",
    "patient_auc",
)
CI_LEVEL = 0.95
CLASS_METRIC_NAMES = ("balanced_accuracy", "macro_f1", "macro_auc", "patient_balanced_accuracy", "patient_macro_f1")
PER_CLASS_METRIC_NAMES = ("recall", "precision", "f1", "auc")
_BOOTSTRAP_CELLS = 2_000_000
"""Bound on (resamples × distinct scores) held at once by the bootstrap AUC (≈ 16 MB of float64)."""


def format_metric(metric: dict | None) -> str:
    """``{"value", "ci"}`` as "0.912 [0.871, 0.950]", or "n/a" when undefined."""
    if not metric or metric.get("value") is None:
        return "n/a"
    ci = metric.get("ci")
    return f"{metric['value']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def compute_metrics(
    labels,
    p_malignant,
    patients,
    magnifications=None,
    threshold: float = DEFAULT_THRESHOLD,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict:
    """Metrics of a binary classifier overall and per magnification, with patient-bootstrap CIs.

    Args:
        labels: ``(N,)`` int, 0 benign / 1 malignant.
        p_malignant: ``(N,)`` float probability of malignant in [0, 1].
        patients: ``(N,)`` patient ids (str).
        magnifications: ``(N,)`` int (40, 100, 200, 400; None, "" or 0 = unknown), or None.
        threshold: an image is predicted malignant when ``p_malignant >= threshold``.
        n_bootstrap: patient resamples for the CIs; 0 gives no CIs.
        seed: seed of the resampling.

    Returns:
        ``{"overall": S, "by_magnification": {"40": S, ...}}`` (only the magnifications present),
        where S maps each of ``METRIC_NAMES`` to ``{"value", "ci"}`` and also holds
        ``confusion_matrix`` ``[[tn, fp], [fn, tp]]``, ``n_images`` and ``n_patients``.

    Raises:
        ValueError: for empty or mismatched inputs, labels other than 0/1, non-finite
            probabilities, or a negative ``n_bootstrap``.
    """
    labels = np.asarray(labels)
    p_malignant = np.asarray(p_malignant, dtype=np.float64)
    patients = np.asarray(patients).astype(str)
    n = len(labels)
    lengths = {len(p_malignant), len(patients)} | ({len(magnifications)} if magnifications is not None else set())
    if n == 0 or lengths != {n} or labels.ndim != 1 or p_malignant.ndim != 1:
        raise ValueError(
            "labels, p_malignant, patients and magnifications must be 1-D of one length > 0. "
            f"Received: lengths {sorted(lengths | {n})}"
        )
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be 0 (benign) or 1 (malignant). Received: labels {sorted(set(labels.tolist()))[:5]}")
    if not np.isfinite(p_malignant).all():
        raise ValueError(f"p_malignant must be finite. Received: {int((~np.isfinite(p_malignant)).sum())} non-finite values")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0. Received: n_bootstrap={n_bootstrap}")
    labels = labels.astype(np.int64)
    result = {"overall": _summary(labels, p_malignant, patients, threshold, n_bootstrap, seed), "by_magnification": {}}
    if magnifications is not None:
        mags = np.array([_as_magnification(m) for m in magnifications], dtype=np.int64)
        for mag in sorted(set(mags.tolist()) - {0}):
            keep = mags == mag
            result["by_magnification"][str(mag)] = _summary(
                labels[keep], p_malignant[keep], patients[keep], threshold, n_bootstrap, seed
            )
    return result


def compute_class_metrics(labels, probabilities, patients, codes: tuple[str, ...], n_bootstrap: int = 1000,
                          seed: int = 0) -> dict:
    """Metrics of a K-class classifier over its classes (module docstring), with patient-bootstrap CIs.

    Args:
        labels: ``(N,)`` int class index in ``0 .. K-1``.
        probabilities: ``(N, K)`` float softmax probabilities.
        patients: ``(N,)`` patient ids.
        codes: the K class codes (``Task.codes``), naming the per-class entries.
        n_bootstrap: patient resamples for the CIs; 0 gives none.
        seed: seed of the resampling (the same draws as :func:`compute_metrics` with that seed).

    Returns:
        ``{name: {"value", "ci"} for CLASS_METRIC_NAMES} | {"per_class": {code: {name: {"value", "ci"} for
        PER_CLASS_METRIC_NAMES} | {"n_images"}}, "confusion_matrix": K×K, "patient_confusion_matrix": K×K,
        "classes": codes, "n_images", "n_patients"}``.

    Raises:
        ValueError: for empty or mismatched inputs, labels outside ``0 .. K-1`` or non-finite probabilities.
    """
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    patients = np.asarray(patients).astype(str)
    k = len(codes)
    if not len(labels) or labels.ndim != 1 or probabilities.shape != (len(labels), k) or len(patients) != len(labels):
        raise ValueError(f"labels (N,), probabilities (N, {k}) and patients (N,) must match, N > 0. Received: shapes "
                         f"{labels.shape}, {probabilities.shape}, {patients.shape}")
    if not np.isin(labels, np.arange(k)).all():
        raise ValueError(f"labels must be class indices 0..{k - 1}. Received: {sorted(set(labels.tolist()))[:5]}")
    if not np.isfinite(probabilities).all():
        raise ValueError("probabilities must be finite")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0. Received: n_bootstrap={n_bootstrap}")
    labels = labels.astype(np.int64)
    table = _ClassTable(labels, probabilities, patients, k)
    point = {name: float(v[0]) if np.isfinite(v[0]) else None
             for name, v in table.metrics(np.ones((1, table.n_patients))).items()}
    samples = table.bootstrap(n_bootstrap, seed) if n_bootstrap and table.n_patients > 1 else {}

    def metric(name: str) -> dict:
        return {"value": point[name], "ci": _percentile_ci(samples.get(name), point[name])}

    return {
        **{name: metric(name) for name in CLASS_METRIC_NAMES},
        "per_class": {code: {**{name: metric(f"{name}:{c}") for name in PER_CLASS_METRIC_NAMES},
                             "n_images": int((labels == c).sum())} for c, code in enumerate(codes)},
        "confusion_matrix": table.image_cells.sum(axis=0).reshape(k, k).astype(int).tolist(),
        "patient_confusion_matrix": table.patient_cells.sum(axis=0).reshape(k, k).astype(int).tolist(),
        "classes": list(codes),
        "n_images": int(len(labels)),
        "n_patients": int(table.n_patients),
    }


def patients_per_class(labels, patients) -> tuple[int, int]:
    """(benign, malignant) patient counts of a split, a patient's class being the majority label of its images
    (a tie counts as malignant).

    Args:
        labels: ``(N,)`` int, 0 benign / 1 malignant.
        patients: ``(N,)`` patient id of each image.
    """
    labels = np.asarray(labels, dtype=np.float64)
    if not len(labels):
        return 0, 0
    _, patient_of = np.unique(np.asarray(patients).astype(str), return_inverse=True)
    malignant = int((np.bincount(patient_of, labels) / np.bincount(patient_of) >= 0.5).sum())
    return int(patient_of.max()) + 1 - malignant, malignant


def roc_curve(labels, p_malignant) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve points, malignant positive.

    Args:
        labels: ``(N,)`` int, 0 benign / 1 malignant.
        p_malignant: ``(N,)`` float scores.

    Returns:
        ``(fpr, tpr, thresholds)``, each ``(K + 1,)`` float64 for K distinct scores: thresholds
        descending, starting at ``inf`` (the point (0, 0)); point k predicts malignant when
        ``p_malignant >= thresholds[k]``. A rate is all NaN when its class is absent.
    """
    labels = np.asarray(labels, dtype=np.int64)
    scores = np.asarray(p_malignant, dtype=np.float64)
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1] if len(scores) else np.zeros(0, np.int64)
    tps = np.cumsum(labels)[last_of_value].astype(np.float64)
    fps = (last_of_value + 1) - tps
    with np.errstate(divide="ignore", invalid="ignore"):
        tpr = np.r_[0.0, tps] / (tps[-1] if len(tps) and tps[-1] else np.nan)
        fpr = np.r_[0.0, fps] / (fps[-1] if len(fps) and fps[-1] else np.nan)
    return fpr, tpr, np.r_[np.inf, scores[last_of_value]]


def evaluate_predictions_csv(
    path: str | Path, threshold: float = DEFAULT_THRESHOLD, n_bootstrap: int = 1000, seed: int = 0
) -> dict:
    """Metrics of a run's ``test_predictions.csv``.

    Args:
        path: CSV with columns ``path,label,patient,magnification,p_malignant_frozen,p_malignant_finetuned``
            (magnification may be empty; a stage column may be absent or empty when that stage did not run).
        threshold, n_bootstrap, seed: as in :func:`compute_metrics`.

    Returns:
        ``{"frozen": M, "finetuned": M}`` with M from :func:`compute_metrics`, for the stages
        whose column is present and filled on every row.

    Raises:
        DatasetLayoutError: when the file is missing, unreadable, has no rows, lacks the
            label/patient columns or any stage column, or holds a bad value.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetLayoutError(f"cannot read test predictions ({exc}). Received: {path}") from None
    columns = set(rows[0]) if rows else set()
    stages = [s for s in STAGES if stage_column(s) in columns and all(r[stage_column(s)] for r in rows)]
    if not rows or not {PredictionColumn.LABEL, PredictionColumn.PATIENT} <= columns or not stages:
        raise DatasetLayoutError(
            f"test predictions need rows with {PredictionColumn.LABEL}, {PredictionColumn.PATIENT} and a filled "
            f"{' or '.join(stage_column(s) for s in STAGES)} column. "
            f"Received: {path} ({len(rows)} rows, columns {sorted(columns)})"
        )
    try:
        labels = np.array([int(r[PredictionColumn.LABEL]) for r in rows])
        patients = np.array([r[PredictionColumn.PATIENT] for r in rows])
        mags = [r.get(PredictionColumn.MAGNIFICATION) or None for r in rows]
        return {
            stage: compute_metrics(
                labels,
                np.array([float(r[stage_column(stage)]) for r in rows]),
                patients,
                mags if any(mags) else None,
                threshold,
                n_bootstrap,
                seed,
            )
            for stage in stages
        }
    except ValueError as exc:
        raise DatasetLayoutError(f"bad value in test predictions: {exc}. Received: {path}") from None


# ----------------------------------------------------------------------------- internals


def _as_magnification(value) -> int:
    """40/100/200/400 as int; None, "", NaN or 0 → 0 (unknown)."""
    if value is None or value == "" or (isinstance(value, float) and np.isnan(value)):
        return 0
    return int(str(value).rstrip("xX")) if isinstance(value, str) else int(value)


def _summary(labels: np.ndarray, scores: np.ndarray, patients: np.ndarray, threshold: float, n_bootstrap: int, seed: int) -> dict:
    """S for one group of images (see :func:`compute_metrics`)."""
    patient_ids, patient_of = np.unique(patients, return_inverse=True)
    n_patients = len(patient_ids)
    table = _PatientTable(labels, scores, patient_of, n_patients, threshold)
    point = {name: float(v[0]) if np.isfinite(v[0]) else None for name, v in table.metrics(np.ones((1, n_patients))).items()}
    samples = table.bootstrap(n_bootstrap, seed) if n_bootstrap and n_patients > 1 else {}
    summary = {name: {"value": point[name], "ci": _percentile_ci(samples.get(name), point[name])} for name in METRIC_NAMES}
    predicted = scores >= threshold
    tn, fp = int(((labels == 0) & ~predicted).sum()), int(((labels == 0) & predicted).sum())
    fn, tp = int(((labels == 1) & ~predicted).sum()), int(((labels == 1) & predicted).sum())
    summary.update(confusion_matrix=[[tn, fp], [fn, tp]], n_images=int(len(labels)), n_patients=int(n_patients))
    return summary


def _percentile_ci(samples: np.ndarray | None, value: float | None) -> list[float] | None:
    if samples is None or value is None:
        return None
    defined = samples[np.isfinite(samples)]
    if len(defined) * 2 < len(samples):
        return None
    tail = (1 - CI_LEVEL) / 2 * 100
    low, high = np.percentile(defined, [tail, 100 - tail])
    return [float(low), float(high)]


class _PatientTable:
    """Per-patient sufficient statistics, so any patient resample is a matrix product.

    A resample is a row of multiplicities ``w`` ``(P,)`` (how often each patient was drawn);
    every metric is then a ratio of ``w``-weighted per-patient sums.
    """

    def __init__(self, labels, scores, patient_of, n_patients: int, threshold: float):
        predicted = (scores >= threshold).astype(np.int64)
        cells = np.zeros((n_patients, 4))  # columns tp, fp, tn, fn
        np.add.at(cells, (patient_of, 2 * (1 - predicted) + (predicted != labels)), 1)
        self.tp, self.fp, self.tn, self.fn = cells.T
        images = cells.sum(axis=1)
        self.patient_accuracy = (self.tp + self.tn) / images
        mean_label = np.bincount(patient_of, labels, n_patients) / images
        mean_score = np.bincount(patient_of, scores, n_patients) / images
        self.verdict_correct = ((mean_score >= threshold) == (mean_label >= 0.5)).astype(np.float64)
        # Patient AUC: pair (i, j) counts 1 when malignant patient i outscores benign patient j, 1/2 on a tie.
        malignant_patient = mean_label >= 0.5
        self.malignant_patients, self.benign_patients = malignant_patient.astype(np.float64), (~malignant_patient).astype(np.float64)
        wins = (mean_score[:, None] > mean_score[None, :]) + 0.5 * (mean_score[:, None] == mean_score[None, :])
        self.patient_wins = wins * np.outer(malignant_patient, ~malignant_patient)
        # AUC: images counted per patient and distinct score, ascending, split by class.
        _, score_rank = np.unique(scores, return_inverse=True)
        n_distinct = int(score_rank.max()) + 1
        self.positives = np.zeros((n_patients, n_distinct))
        self.negatives = np.zeros((n_patients, n_distinct))
        np.add.at(self.positives, (patient_of[labels == 1], score_rank[labels == 1]), 1)
        np.add.at(self.negatives, (patient_of[labels == 0], score_rank[labels == 0]), 1)
        self.n_patients = n_patients

    def metrics(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """Each metric ``(B,)`` for patient multiplicities ``weights`` ``(B, P)``; NaN where undefined."""
        tp, fp, tn, fn = (weights @ c for c in (self.tp, self.fp, self.tn, self.fn))
        drawn = weights.sum(axis=1)
        positives, negatives = weights @ self.positives, weights @ self.negatives
        negatives_below = np.cumsum(negatives, axis=1) - negatives
        u_statistic = (positives * (negatives_below + 0.5 * negatives)).sum(axis=1)
        return {
            "image_accuracy": _ratio(tp + tn, tp + fp + tn + fn),
            "patient_recognition_rate": _ratio(weights @ self.patient_accuracy, drawn),
            "patient_verdict_accuracy": _ratio(weights @ self.verdict_correct, drawn),
            "sensitivity": _ratio(tp, tp + fn),
            "specificity": _ratio(tn, tn + fp),
            "precision": _ratio(tp, tp + fp),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn),
            "roc_auc": _ratio(u_statistic, positives.sum(axis=1) * negatives.sum(axis=1)),
            "patient_auc": _ratio(((weights @ self.patient_wins) * weights).sum(axis=1),
                                  (weights @ self.malignant_patients) * (weights @ self.benign_patients)),
        }

    def bootstrap(self, n_bootstrap: int, seed: int) -> dict[str, np.ndarray]:
        """Each metric ``(n_bootstrap,)`` over patient resamples (NaN where undefined)."""
        p = self.n_patients
        draws = np.random.default_rng(seed).integers(0, p, size=(n_bootstrap, p))
        weights = np.bincount((draws + p * np.arange(n_bootstrap)[:, None]).ravel(), minlength=n_bootstrap * p)
        weights = weights.reshape(n_bootstrap, p).astype(np.float64)
        chunk = max(1, _BOOTSTRAP_CELLS // self.positives.shape[1])
        parts = [self.metrics(weights[start : start + chunk]) for start in range(0, n_bootstrap, chunk)]
        return {name: np.concatenate([part[name] for part in parts]) for name in METRIC_NAMES}


class _ClassTable:
    """Per-patient confusion counts of a K-class classifier, so any patient resample is a matrix product (see
    :class:`_PatientTable`); the one-vs-rest AUCs reuse :class:`_PatientTable` on each class against the rest."""

    def __init__(self, labels: np.ndarray, probabilities: np.ndarray, patients: np.ndarray, k: int):
        _, patient_of = np.unique(patients, return_inverse=True)
        self.n_patients, self.k = int(patient_of.max()) + 1, k
        predicted = probabilities.argmax(axis=1)
        self.image_cells = np.zeros((self.n_patients, k * k))  # row-major (true, predicted)
        np.add.at(self.image_cells, (patient_of, labels * k + predicted), 1)
        label_counts = np.zeros((self.n_patients, k))
        np.add.at(label_counts, (patient_of, labels), 1)
        mean_probability = np.zeros((self.n_patients, k))
        np.add.at(mean_probability, patient_of, probabilities)
        patient_label, patient_predicted = label_counts.argmax(axis=1), mean_probability.argmax(axis=1)
        self.patient_cells = np.zeros((self.n_patients, k * k))
        self.patient_cells[np.arange(self.n_patients), patient_label * k + patient_predicted] = 1
        self.one_vs_rest = [_PatientTable((labels == c).astype(np.int64), probabilities[:, c], patient_of,
                                          self.n_patients, 0.5) for c in range(k)]

    def _per_class(self, cells: np.ndarray) -> dict[str, np.ndarray]:
        """Recall, precision and F1 ``(B, K)`` of confusion matrices ``(B, K*K)``; NaN where undefined."""
        matrix = cells.reshape(len(cells), self.k, self.k)
        tp, true, predicted = np.diagonal(matrix, axis1=1, axis2=2), matrix.sum(axis=2), matrix.sum(axis=1)
        return {"recall": _ratio(tp, true), "precision": _ratio(tp, predicted), "f1": _ratio(2 * tp, true + predicted)}

    def metrics(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """Each metric ``(B,)`` for patient multiplicities ``weights`` ``(B, P)``; per-class ones as "name:k"."""
        images, patients = self._per_class(weights @ self.image_cells), self._per_class(weights @ self.patient_cells)
        auc = np.stack([table.metrics(weights)["roc_auc"] for table in self.one_vs_rest], axis=1)
        result = {"balanced_accuracy": _nanmean(images["recall"]), "macro_f1": _nanmean(images["f1"]),
                  "macro_auc": _nanmean(auc), "patient_balanced_accuracy": _nanmean(patients["recall"]),
                  "patient_macro_f1": _nanmean(patients["f1"])}
        for name, values in {**images, "auc": auc}.items():
            result.update({f"{name}:{c}": values[:, c] for c in range(self.k)})
        return result

    def bootstrap(self, n_bootstrap: int, seed: int) -> dict[str, np.ndarray]:
        """Each metric ``(n_bootstrap,)`` over patient resamples drawn as :meth:`_PatientTable.bootstrap` draws them."""
        p = self.n_patients
        draws = np.random.default_rng(seed).integers(0, p, size=(n_bootstrap, p))
        weights = np.bincount((draws + p * np.arange(n_bootstrap)[:, None]).ravel(), minlength=n_bootstrap * p)
        weights = weights.reshape(n_bootstrap, p).astype(np.float64)
        chunk = max(1, _BOOTSTRAP_CELLS // max(table.positives.shape[1] for table in self.one_vs_rest))
        parts = [self.metrics(weights[start : start + chunk]) for start in range(0, n_bootstrap, chunk)]
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def _nanmean(values: np.ndarray) -> np.ndarray:
    """Row means ``(B,)`` of ``(B, K)`` over the defined (finite) entries; NaN for a row with none."""
    defined = np.isfinite(values)
    return _ratio(np.where(defined, values, 0.0).sum(axis=1), defined.sum(axis=1).astype(np.float64))


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, NaN where the denominator is 0."""
    out = np.full(np.shape(denominator), np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


@dataclass(frozen=True)
class LabelledScores:
    """Images of one split with a model's scores: ``(N,)`` arrays of 0/1 labels, P(malignant), patient ids."""

    labels: np.ndarray
    p_malignant: np.ndarray
    patients: np.ndarray


@dataclass(frozen=True)
class ClassScores:
    """Images of one split with a K-class model's softmax: ``(N,)`` class indices, ``(N, K)`` probabilities,
    ``(N,)`` patient ids."""

    labels: np.ndarray
    probabilities: np.ndarray
    patients: np.ndarray


def read_class_table(path: Path, stage: str, codes: tuple[str, ...]) -> ClassScores | None:
    """One stage's class probabilities (columns ``p_<code>_<stage>``) and the class index of each row's
    ``tumour_type`` from a table of :func:`write_prediction_table`; None when the file, a row or a column is missing."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError:
        return None
    columns = [class_stage_column(code, stage) for code in codes]
    if not rows or not all(c in rows[0] and all(r[c] for r in rows) for c in columns + [PredictionColumn.TUMOUR_TYPE]):
        return None
    return ClassScores(np.array([codes.index(r[PredictionColumn.TUMOUR_TYPE]) for r in rows], dtype=np.int64),
                       np.array([[float(r[c]) for c in columns] for r in rows]),
                       np.array([r[PredictionColumn.PATIENT] for r in rows]))


def read_prediction_table(path: Path, stage: str) -> LabelledScores | None:
    """One stage's column of a table of :func:`write_prediction_table` (``test_predictions.csv``,
    ``val_predictions.csv``); None when the file, a row or the stage's column is missing."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError:
        return None
    column = stage_column(stage)
    if not rows or column not in rows[0] or not all(r[column] for r in rows):
        return None
    return LabelledScores(np.array([int(r[PredictionColumn.LABEL]) for r in rows], dtype=np.int64),
                          np.array([float(r[column]) for r in rows]), np.array([r[PredictionColumn.PATIENT] for r in rows]))


def write_prediction_table(path: Path, records, patients, probabilities: dict,
                           class_probabilities: dict | None = None, codes: tuple[str, ...] = ()) -> None:
    """Write ``PREDICTION_TABLE_COLUMNS`` and each stage's P(malignant) (:func:`stage_column`) atomically, one row per
    record: ``path,label,patient,magnification,p_malignant_<stage>...``.

    A subtype model's table also holds ``tumour_type`` (after magnification) and, after the P(malignant)
    columns, ``p_<code>_<stage>`` for each class and stage (raw softmax); ``label`` stays 0 benign / 1 malignant.

    Args:
        path: the CSV (``test_predictions.csv``, ``val_predictions.csv``).
        records: the split's ``data.ImageRecord`` rows, in order.
        patients: ``(N,)`` patient key of each record.
        probabilities: stage -> ``(N,)`` P(malignant).
        class_probabilities: stage -> ``(N, K)`` class probabilities of a subtype model; None for malignancy.
        codes: the K class codes (``Task.codes``) with ``class_probabilities``.
    """
    from breakhis_core.files import write_text_atomic

    class_probabilities = class_probabilities or {}
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow([*PREDICTION_TABLE_COLUMNS] + ([PredictionColumn.TUMOUR_TYPE] if class_probabilities else [])
                    + [stage_column(s) for s in probabilities]
                    + [class_stage_column(code, s) for s in class_probabilities for code in codes])
    for i, record in enumerate(records):
        writer.writerow([record.path, record.label, patients[i], record.magnification or ""]
                        + ([record.tumour_type or ""] if class_probabilities else [])
                        + [f"{probabilities[s][i]:.6f}" for s in probabilities]
                        + [f"{class_probabilities[s][i, c]:.6f}" for s in class_probabilities for c in range(len(codes))])
    write_text_atomic(path, table.getvalue())
