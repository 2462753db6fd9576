"""A model on the lab's reviewed cases that it never trained on: the reviewers' final labels as the truth.

The cases a run trained on are in its ``run.json`` "cases" (``dataset``); every reviewed case none of whose images
is among them is evaluated with ``evaluate.compute_metrics`` (patients = patient references, so the confidence
intervals resample patients) at the model's own decision threshold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from breakhis_core import CLASS_NAMES
from breakhis_core.errors import CaseError
from breakhis_core.evaluation.metrics import compute_metrics
from breakhis_core.data.images import read_image
from breakhis_core.cases.dataset import dataset_rows, unseen_cases
from breakhis_core.cases.records import CaseImageRecord, CaseRecord


@dataclass(frozen=True)
class CaseEvaluation:
    """A model's metrics on unseen reviewed cases: ``metrics`` is ``compute_metrics``' ``M``; ``left_out`` counts the
    reviewed cases skipped because the model trained on them; ``threshold`` is the decision threshold used."""

    model_id: str
    n_cases: int
    n_images: int
    left_out: int
    threshold: float
    metrics: dict


def evaluate_on_cases(predictor, model_id: str, cases: list[CaseRecord], trained_on: list[dict] | None,
                      image_path: Callable[[CaseImageRecord], Path], n_bootstrap: int = 1000) -> CaseEvaluation:
    """Predict every image of the reviewed ``cases`` the model did not train on and score it.

    Args:
        predictor: a ``predict.Predictor`` (``predict(images, names, magnifications)``) of the model.
        cases: ``CaseService.reviewed_cases``.
        trained_on: the run's ``run.json`` "cases" (None: it trained on no case).
        image_path: ``CaseService.image_path``.

    Raises:
        CaseError: when no reviewed case is left to evaluate on.
    """
    unseen = unseen_cases(cases, trained_on)
    rows = dataset_rows(unseen, image_path)
    if not rows:
        raise CaseError(f"no reviewed case that model {model_id} did not train on; review more cases first. "
                        f"Received: {len(cases)} reviewed case(s), {len(cases) - len(unseen)} used in its training")
    predictions = []
    batch = int(getattr(predictor, "batch_size", 16) or 16)
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        predictions += predictor.predict([read_image(row["path"]) for row in chunk], [row["sha256"] for row in chunk],
                                         [row["magnification"] or None for row in chunk])
    threshold = float(predictions[0].threshold)
    metrics = compute_metrics(np.array([CLASS_NAMES.index(row["label"]) for row in rows]),
                              np.array([p.p_malignant for p in predictions], dtype=float),
                              np.array([row["patient"] for row in rows]),
                              np.array([row["magnification"] or 0 for row in rows]),
                              threshold=threshold, n_bootstrap=n_bootstrap)
    return CaseEvaluation(model_id, len({row["case_id"] for row in rows}), len(rows), len(cases) - len(unseen),
                          threshold, metrics)
