"""Did a trained model learn? The check that keeps a collapsed model from being served silently.

A model "did not learn" when, on its validation or test split, either

- every image gets the same class at the decision threshold (``p_malignant >= 0.5`` is
  malignant): it calls every image malignant (sensitivity 1, specificity 0) or every image
  benign, whatever its ranking; or
- its ROC AUC (malignant positive, threshold-free) is ``<= MIN_AUC`` (0.55): it ranks no
  better than chance.

Training records one :class:`LearningCheck` per stage in ``run.json`` as
``"learning_check": {stage: {"ok", "reasons", "splits": {split: SplitCheck}}}``; the registry
never makes such a model the active one by itself, and the pages say "did not learn: …".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from . import CLASS_NAMES
from .evaluate import roc_curve

MIN_AUC = 0.55
"""ROC AUC at or below which a model is taken to rank no better than chance."""
THRESHOLD = 0.5
"""Decision threshold on ``p_malignant`` (the class the softmax argmax picks)."""
SPLIT_NAMES = {"val": "validation", "test": "test"}


@dataclass
class SplitCheck:
    """The check on one split.

    Attributes:
        split: "val" or "test".
        n_images: images predicted.
        malignant_fraction: share predicted malignant at ``THRESHOLD``, in [0, 1].
        roc_auc: ROC AUC in [0, 1], or None when the split holds one class only.
        reasons: why this split says the model did not learn (empty: it did).
    """

    split: str
    n_images: int
    malignant_fraction: float
    roc_auc: float | None
    reasons: list[str] = field(default_factory=list)


@dataclass
class LearningCheck:
    """The check of one model over its splits: ``ok`` is False with one reason per failed split check."""

    ok: bool
    reasons: list[str]
    splits: dict[str, SplitCheck]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def roc_auc(labels, p_malignant) -> float | None:
    """ROC AUC (malignant positive, ties counting one half), or None when a class is absent."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0 or labels.min() == labels.max():
        return None
    fpr, tpr, _ = roc_curve(labels, p_malignant)
    return float(np.trapezoid(tpr, fpr))


def check_split(split: str, labels, p_malignant, threshold: float = THRESHOLD, min_auc: float = MIN_AUC) -> SplitCheck:
    """Check one split's predictions.

    Args:
        split: "val" or "test" (named in the reasons).
        labels: ``(N,)`` int, 0 benign / 1 malignant.
        p_malignant: ``(N,)`` float probabilities of malignant.
    """
    labels = np.asarray(labels, dtype=np.int64)
    scores = np.asarray(p_malignant, dtype=np.float64)
    predicted = scores >= threshold
    fraction = float(predicted.mean()) if len(scores) else 0.0
    auc = roc_auc(labels, scores)
    name, reasons = SPLIT_NAMES.get(split, split), []
    if len(scores) and (predicted.all() or not predicted.any()):
        verdict = CLASS_NAMES[1] if predicted.all() else CLASS_NAMES[0]
        reasons.append(f"every {name} image is predicted {verdict} at p_malignant {threshold:g}")
    if auc is not None and auc <= min_auc:
        reasons.append(f"{name} ROC AUC {auc:.3f} <= {min_auc:g} (chance level)")
    return SplitCheck(split, int(len(scores)), round(fraction, 4), None if auc is None else round(auc, 4), reasons)


def check_learning(predictions: dict[str, tuple[np.ndarray, np.ndarray]], threshold: float = THRESHOLD,
                   min_auc: float = MIN_AUC) -> LearningCheck:
    """Check one model on each split of ``predictions`` (``{split: (labels, p_malignant)}``; empty splits skipped)."""
    splits = {name: check_split(name, labels, scores, threshold, min_auc)
              for name, (labels, scores) in predictions.items() if len(labels)}
    reasons = [reason for check in splits.values() for reason in check.reasons]
    return LearningCheck(not reasons, reasons, splits)
