"""Calibrated probabilities and the decision threshold, both fitted on a run's validation patients.

After training, each stage's model predicts the validation split (patients it never trained on)
and two things are fitted on those predictions:

- **Temperature scaling** (Guo et al., 2017): one scalar ``T > 0`` per stage, the calibrated
  probability being ``sigmoid(logit(p) / T)`` with ``logit(p) = log(p / (1 - p))`` of the model's
  softmax P(malignant) (for two classes this is the softmax of the logits divided by ``T``).
  ``T`` minimises the validation negative log-likelihood; ``T > 1`` softens an over-confident
  model. The ranking of images is unchanged, so AUC is unchanged and ``p = 0.5`` stays at 0.5.
- **The operating point**: the threshold on the calibrated P(malignant) above which an image is
  called malignant, by the rule of ``TrainConfig.threshold_rule``: ``"fixed"`` 0.5 (the paper's),
  ``"youden"`` the threshold maximising sensitivity + specificity - 1 on validation, or
  ``"sensitivity"`` the highest threshold whose validation sensitivity is at least
  ``target_sensitivity`` (screening).

Both are fitted only on at least ``MIN_FIT_PATIENTS`` (10) validation patients with both classes among
them; with fewer, a fit follows a handful of images (a temperature of 20 fitted on 4 images squeezes every
probability towards 0.5), so the stage keeps ``T = 1`` and the fixed 0.5 threshold and ``fitted_on`` says
why. ``T`` is bounded to [0.25, 5]: convolutional networks need about 1–3, and a fit at a bound is an
artefact of the data, not a calibration.

Both are stored in the run's ``calibration.json`` with the expected calibration error and Brier
score before and after scaling and reliability curves, on validation and on the test split, and
the sensitivity/specificity the threshold gives on the test patients (patient-resampled CIs).
``Predictor.from_run`` applies them; a run without the file predicts with ``T = 1`` and 0.5.

A subtype model (``task.py``: 8 tumour types) is scaled on all its classes: its calibrated probabilities are
``softmax(log(q) / T)`` of its softmax ``q`` (:func:`scale_probabilities`; the log of the softmax is its logits up
to a constant), ``T`` minimising the validation negative log-likelihood of the tumour types
(:func:`fit_class_temperature`); its P(malignant), the sum of the malignant types' calibrated probabilities, is what
the threshold, ECE, Brier score and operating point above are computed on. The rule on ``MIN_FIT_PATIENTS`` and the
bounds on ``T`` are the same.

Definitions (malignant positive, ``p`` = P(malignant), N images):

- ``brier``: mean of ``(p - y)^2``.
- ``ece``: expected calibration error over ``n_bins`` equal-width bins of ``p`` in [0, 1]:
  ``sum_b (n_b / N) |mean(y in b) - mean(p in b)|`` (the reliability diagram's gaps, weighted).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from breakhis_core.config import DEFAULT_THRESHOLD, STAGES, TrainConfig
from breakhis_core.evaluation.metrics import (
    ClassScores,
    LabelledScores,
    compute_metrics,
    patients_per_class,
    read_class_table,
    read_prediction_table,
    roc_curve,
    write_prediction_table,
)
from breakhis_core.files import read_json, write_json_atomic
from breakhis_core.runs.rundir import RunDir
from breakhis_core.task import MALIGNANCY, Task, task_named

N_BINS = 10
_EPS = 1e-7
T_BOUNDS = (0.25, 5.0)
"""Range of a fitted temperature."""
MIN_FIT_PATIENTS = 10
"""Fewest validation patients (both classes among them) that temperature and threshold are fitted on."""


@dataclass(frozen=True)
class StageCalibration:
    """How a stage's model turns its softmax into a verdict.

    Attributes:
        temperature: ``T`` of ``sigmoid(logit(p) / T)``; 1.0 = unchanged.
        threshold: an image is malignant when its calibrated P(malignant) >= threshold.
        rule: the threshold rule that chose it ("fixed", "youden", "sensitivity").
        fitted: False when nothing was fitted (no calibration, or too few validation patients: the identity).
    """

    temperature: float = 1.0
    threshold: float = DEFAULT_THRESHOLD
    rule: str = "fixed"
    fitted: bool = False


IDENTITY = StageCalibration()


def logit(p_malignant) -> np.ndarray:
    """``log(p / (1 - p))`` of probabilities clipped to [1e-7, 1 - 1e-7]."""
    p = np.clip(np.asarray(p_malignant, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def apply_temperature(p_malignant, temperature: float) -> np.ndarray:
    """Calibrated P(malignant) ``sigmoid(logit(p) / T)``, same shape as ``p_malignant`` (float64)."""
    if temperature == 1.0:
        return np.asarray(p_malignant, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-logit(p_malignant) / temperature))


def fit_temperature(labels, p_malignant) -> float:
    """The ``T`` in ``T_BOUNDS`` ([0.25, 5]) minimising the negative log-likelihood of ``labels`` under the scaled probabilities.

    Returns 1.0 when the labels hold one class only (the likelihood then has no finite optimum).
    """
    from scipy.optimize import minimize_scalar

    labels = np.asarray(labels, dtype=np.float64)
    if len(labels) == 0 or labels.min() == labels.max():
        return 1.0
    z = logit(p_malignant)

    def nll(log_t: float) -> float:
        scaled = z / np.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, scaled) - labels * scaled))  # -log-likelihood of sigmoid(scaled)

    result = minimize_scalar(nll, bounds=tuple(np.log(T_BOUNDS)), method="bounded", options={"xatol": 1e-5})
    return float(np.exp(result.x))


def scale_probabilities(probabilities, temperature: float) -> np.ndarray:
    """Calibrated class probabilities ``softmax(log(q) / T)`` ``(N, K)`` float64 of a softmax ``q`` ``(N, K)``
    (clipped to >= 1e-7 before the log); T = 1 returns ``q`` unchanged."""
    q = np.asarray(probabilities, dtype=np.float64)
    if temperature == 1.0:
        return q
    scaled = np.log(np.clip(q, _EPS, 1.0)) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    return np.exp(scaled) / np.exp(scaled).sum(axis=1, keepdims=True)


def fit_class_temperature(labels, probabilities) -> float:
    """The ``T`` in ``T_BOUNDS`` minimising the negative log-likelihood of class indices ``labels`` ``(N,)`` under
    ``scale_probabilities(probabilities, T)``; 1.0 when the labels hold one class only."""
    from scipy.optimize import minimize_scalar
    from scipy.special import logsumexp

    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0 or labels.min() == labels.max():
        return 1.0
    z = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), _EPS, 1.0))

    def nll(log_t: float) -> float:
        scaled = z / np.exp(log_t)
        return float(np.mean(logsumexp(scaled, axis=1) - scaled[np.arange(len(labels)), labels]))

    result = minimize_scalar(nll, bounds=tuple(np.log(T_BOUNDS)), method="bounded", options={"xatol": 1e-5})
    return float(np.exp(result.x))


def brier_score(labels, p_malignant) -> float:
    """Mean squared difference between P(malignant) and the 0/1 label."""
    return float(np.mean((np.asarray(p_malignant, dtype=np.float64) - np.asarray(labels, dtype=np.float64)) ** 2))


@dataclass(frozen=True)
class Reliability:
    """A reliability diagram: per non-empty bin of P(malignant), ``(B,)`` arrays.

    Attributes:
        mean_predicted: mean P(malignant) of the bin's images.
        observed: fraction of malignant images in the bin.
        count: images in the bin.
        bin_edges: ``(n_bins + 1,)`` edges in [0, 1] (all bins, empty ones included).
    """

    mean_predicted: np.ndarray
    observed: np.ndarray
    count: np.ndarray
    bin_edges: np.ndarray

    def to_dict(self) -> dict:
        return {"mean_predicted": self.mean_predicted.tolist(), "observed": self.observed.tolist(),
                "count": self.count.tolist(), "bin_edges": self.bin_edges.tolist()}


def reliability(labels, p_malignant, n_bins: int = N_BINS) -> Reliability:
    """Reliability diagram of ``n_bins`` equal-width bins ``[0, 1/n]``, ``(1/n, 2/n]``, … ``((n-1)/n, 1]``."""
    labels = np.asarray(labels, dtype=np.float64)
    p = np.asarray(p_malignant, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.searchsorted(edges[1:-1], p)  # a probability on an inner edge belongs to the lower bin
    count = np.bincount(which, minlength=n_bins)
    keep = count > 0
    mean_predicted = np.bincount(which, p, n_bins)[keep] / count[keep]
    observed = np.bincount(which, labels, n_bins)[keep] / count[keep]
    return Reliability(mean_predicted, observed, count[keep], edges)


def expected_calibration_error(labels, p_malignant, n_bins: int = N_BINS) -> float:
    """ECE: the image-weighted mean gap between observed and predicted malignancy over the bins."""
    curve = reliability(labels, p_malignant, n_bins)
    return float(np.sum(curve.count * np.abs(curve.observed - curve.mean_predicted)) / np.sum(curve.count))


def choose_threshold(labels, p_malignant, rule: str, target_sensitivity: float = 0.95) -> float:
    """The decision threshold on P(malignant) by ``rule`` (see the module docstring).

    "youden" and "sensitivity" need both classes in ``labels``; with one class they fall back
    to 0.5. Ties of Youden's J take the threshold nearest 0.5.

    Raises:
        ValueError: for an unknown rule.
    """
    if rule == "fixed":
        return DEFAULT_THRESHOLD
    if rule not in ("youden", "sensitivity"):
        raise ValueError(f"rule must be fixed, youden or sensitivity. Received: rule={rule}")
    labels = np.asarray(labels)
    if len(labels) == 0 or labels.min() == labels.max():
        return DEFAULT_THRESHOLD
    fpr, tpr, thresholds = roc_curve(labels, p_malignant)
    finite = np.isfinite(thresholds)
    fpr, tpr, thresholds = fpr[finite], tpr[finite], thresholds[finite]
    if rule == "youden":
        j = tpr - fpr
        best = np.flatnonzero(np.isclose(j, j.max()))
        return float(thresholds[best[np.argmin(np.abs(thresholds[best] - DEFAULT_THRESHOLD))]])
    reaching = np.flatnonzero(tpr >= target_sensitivity - 1e-12)
    return float(thresholds[reaching[0]])  # thresholds descend: the first reaching the target is the highest


def load_calibration(run_dir: str | Path, stage: str) -> StageCalibration:
    """The stored calibration of a run's stage; :data:`IDENTITY` when the run has none."""
    stored = ((read_json(RunDir(run_dir).calibration_file, {}) or {}).get("stages") or {}).get(stage)
    if not isinstance(stored, dict):
        return IDENTITY
    fitted = stored.get("fitted", not str(stored.get("fitted_on", "")).startswith("not fitted"))  # older files: no flag
    return StageCalibration(float(stored.get("temperature", 1.0)), float(stored.get("threshold", DEFAULT_THRESHOLD)),
                            str(stored.get("rule", "fixed")), bool(fitted))


def calibration_summary(labels, p_raw, temperature: float, n_bins: int = N_BINS, p_calibrated=None) -> dict:
    """ECE, Brier score and reliability curve of raw and temperature-scaled P(malignant) (``p_calibrated``, default
    ``apply_temperature(p_raw, temperature)``: a subtype model's comes from :func:`scale_probabilities`)."""
    p_calibrated = apply_temperature(p_raw, temperature) if p_calibrated is None else p_calibrated
    return {
        "n_images": int(len(labels)),
        "ece_before": expected_calibration_error(labels, p_raw, n_bins),
        "ece_after": expected_calibration_error(labels, p_calibrated, n_bins),
        "brier_before": brier_score(labels, p_raw),
        "brier_after": brier_score(labels, p_calibrated),
        "reliability_before": reliability(labels, p_raw, n_bins).to_dict(),
        "reliability_after": reliability(labels, p_calibrated, n_bins).to_dict(),
    }


def fit_refusal(val: LabelledScores) -> str | None:
    """Why calibration and threshold cannot be fitted on ``val`` (too few patients or a class missing), or None."""
    benign, malignant = patients_per_class(val.labels, val.patients)
    if benign + malignant >= MIN_FIT_PATIENTS and benign and malignant:
        return None
    return (f"not fitted: {benign + malignant} validation patients ({benign} benign, {malignant} malignant); at least "
            f"{MIN_FIT_PATIENTS} with both classes are needed, so T = 1 and the fixed {DEFAULT_THRESHOLD:g} threshold")


def fit_stage(config: TrainConfig, val: LabelledScores, test: LabelledScores | None, seed: int = 0,
              task: Task = MALIGNANCY, val_classes: ClassScores | None = None,
              test_classes: ClassScores | None = None) -> dict:
    """Calibration of one stage: ``T`` and threshold fitted on ``val`` (when :func:`fit_refusal` allows), checked on
    ``test`` (when given). A subtype model (``task``) also needs its class probabilities ``val_classes`` (and
    ``test_classes`` with ``test``): ``T`` is then fitted on them (:func:`fit_class_temperature`) and the calibrated
    P(malignant) is the sum of the malignant types' scaled probabilities.

    Returns:
        ``{"temperature", "threshold", "rule", "target_sensitivity", "fitted", "fitted_on", "validation": summary,
        "test": summary + "operating_point"}`` where ``fitted`` is False when ``val`` had too few patients (then
        ``T = 1``, threshold 0.5, rule "fixed", and ``fitted_on`` says why), and the operating point holds the test
        split's ``sensitivity``, ``specificity``, ``image_accuracy`` and ``patient_verdict_accuracy``
        (``{"value", "ci"}`` from :func:`evaluate.compute_metrics`) at the chosen threshold.
    """
    refusal = fit_refusal(val)
    fitted = refusal is None

    def calibrated_of(scores: LabelledScores, classes: ClassScores | None, temperature: float) -> np.ndarray:
        if task.is_binary:
            return apply_temperature(scores.p_malignant, temperature)
        return task.malignancy_probability(scale_probabilities(classes.probabilities, temperature))

    if not fitted:
        temperature = 1.0
    elif task.is_binary:
        temperature = fit_temperature(val.labels, val.p_malignant)
    else:
        temperature = fit_class_temperature(val_classes.labels, val_classes.probabilities)
    calibrated = calibrated_of(val, val_classes, temperature)
    threshold = choose_threshold(val.labels, calibrated, config.threshold_rule, config.target_sensitivity) if fitted \
        else DEFAULT_THRESHOLD
    result = {
        "temperature": temperature,
        "threshold": threshold,
        "rule": config.threshold_rule if fitted else "fixed",
        "target_sensitivity": config.target_sensitivity if fitted and config.threshold_rule == "sensitivity" else None,
        "fitted": fitted,
        "fitted_on": f"{len(val.labels)} validation images of {len(set(val.patients.tolist()))} patients" if fitted else refusal,
        "validation": calibration_summary(val.labels, val.p_malignant, temperature, p_calibrated=calibrated)
        if len(val.labels) else None,
        "test": None,
    }
    if test is not None and len(test.labels):
        test_calibrated = calibrated_of(test, test_classes, temperature)
        overall = compute_metrics(test.labels, test_calibrated, test.patients, threshold=threshold, seed=seed)["overall"]
        result["test"] = {
            **calibration_summary(test.labels, test.p_malignant, temperature, p_calibrated=test_calibrated),
            "operating_point": {name: overall[name] for name in
                                ("sensitivity", "specificity", "image_accuracy", "patient_verdict_accuracy")},
        }
    return result


def calibrate_run(run_dir: str | Path, config: TrainConfig, models: dict, val_images: np.ndarray, val_records) -> dict:
    """Predict the validation split with each stage's model, fit calibration and threshold, write ``calibration.json``.

    Writes ``val_predictions.csv`` (``path,label,patient,magnification,p_malignant_<stage>``, raw softmax; a
    subtype run's with its class columns too, ``evaluate.write_prediction_table``) and reads the test split's raw
    probabilities from ``test_predictions.csv`` when it exists.

    Args:
        run_dir: the run folder.
        config: its TrainConfig (threshold rule, patient key, seed).
        models: stage → loaded model.
        val_images: ``(N, S, S, 3)`` uint8 RGB of the validation split (may be empty).
        val_records: their ImageRecords.

    Returns:
        The calibration.json content ``{"split": "val", "stages": {stage: fit_stage(...)}}``.
    """
    from breakhis_core.models.classifier import predict_probabilities

    run = RunDir(run_dir)
    task = task_named(config.task)
    labels = np.array([r.label for r in val_records], dtype=np.int64)
    patients = np.array([r.group(config.group_by) for r in val_records])
    class_scores = {stage: predict_probabilities(m, val_images) for stage, m in models.items()}
    scores = {stage: task.malignancy_probability(p) for stage, p in class_scores.items()}
    write_prediction_table(run.val_predictions_file, val_records, patients, scores,
                           None if task.is_binary else class_scores, task.codes)
    result = {"split": "val", "n_bins": N_BINS, "stages": {}}
    for stage in (s for s in STAGES if s in scores):
        val = LabelledScores(labels, scores[stage], patients)
        val_classes = None if task.is_binary else ClassScores(task.labels_of(val_records), class_scores[stage], patients)
        test_classes = None if task.is_binary else read_class_table(run.test_predictions_file, stage, task.codes)
        result["stages"][stage] = fit_stage(config, val, read_prediction_table(run.test_predictions_file, stage),
                                            config.seed, task, val_classes, test_classes)
    write_json_atomic(run.calibration_file, result)
    return result


def refit_calibration(run_dir: str | Path, config: TrainConfig, pooled_val: dict[str, LabelledScores],
                      pool: str, pooled_classes: dict[str, ClassScores] | None = None) -> dict:
    """Refit each stage's temperature and threshold of a run on validation predictions pooled from several runs
    (a cross-validation's folds) and rewrite its ``calibration.json``; the run's test split checks it as before.

    Args:
        run_dir: the run folder (its ``test_predictions.csv`` is read).
        config: its TrainConfig (threshold rule, seed).
        pooled_val: stage → the pooled validation predictions (no patient of this run's test split among them).
        pool: what was pooled, for ``fitted_on`` (e.g. "validation predictions of the 5 folds' models").
        pooled_classes: a subtype run's pooled class probabilities, stage → ``ClassScores`` (the same rows).

    Returns:
        The calibration.json content.
    """
    run = RunDir(run_dir)
    task = task_named(config.task)
    result = {"split": "val", "n_bins": N_BINS, "stages": {}}
    for stage, val in pooled_val.items():
        classes = {} if task.is_binary else {
            "val_classes": (pooled_classes or {})[stage],
            "test_classes": read_class_table(run.test_predictions_file, stage, task.codes)}
        fit = fit_stage(config, val, read_prediction_table(run.test_predictions_file, stage), config.seed, task,
                        **classes)
        if fit["fitted_on"].startswith(f"{len(val.labels)} validation images"):
            fit["fitted_on"] = f"{fit['fitted_on']}, pooled: {pool}"
        result["stages"][stage] = fit
    write_json_atomic(run.calibration_file, result)
    return result

