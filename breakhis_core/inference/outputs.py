"""A prediction batch handed over: the prediction table (CSV) and the report (HTML, from ``report.py``).

One definition serves every place that hands predictions over: ``breakhis predict`` (``predictions.csv``,
the overlay PNGs and ``report.html``) and the app's Diagnose and Compare downloads. The table's columns are
``PREDICTION_COLUMNS``, read from ``predict.Prediction.to_dict``; the report's images carry their heat-map
overlays (``explain.overlay``) and its model section comes from the registry (:func:`run_summary`) or from
the models that served the images (:func:`served_summary`).
"""

from __future__ import annotations

import csv
import io
from dataclasses import replace
from typing import Mapping, Sequence

import numpy as np

from breakhis_core.runs import registry
from breakhis_core.inference.explain import LEGEND_TEXT, colour_bar, overlay
from breakhis_core.evaluation.learning_check import report_fields
from breakhis_core.inference.predict import Case, Prediction
from breakhis_core.inference.report import ReportCase, ReportItem, html_report
from breakhis_core.task import SUBTYPE, TOP_TYPE_COLUMN

PREDICTION_COLUMNS = (
    "name", "magnification", "magnification_source", "p_benign", "p_malignant", "verdict", "confidence",
    "low_confidence", "low_confidence_reason", "tta_std", "model_id", "route", "input_rule",
    "case", "threshold", "temperature", "image_size", "cam_method", "cam_class", "learning_check",
)
"""Columns of the prediction table, one row per image: ``Prediction`` fields of the same names, ``case`` (the
case the image was grouped into, empty without cases) and ``image_size`` as ``WIDTHxHEIGHT`` in pixels;
``learning_check`` is the serving model's learning-check state (``learning_check.LearningStatus.text``).
A batch served by a subtype model has ``SUBTYPE_COLUMNS`` after ``p_malignant`` (see :func:`prediction_columns`)."""
SUBTYPE_COLUMNS = (TOP_TYPE_COLUMN, "p_top_type", *SUBTYPE.probability_columns, "cam_type")
"""A subtype model's columns: its most probable tumour type (code) and probability, each type's probability
(``p_A`` … ``p_PC``, calibrated) and the type its heat map explains; empty on rows of a malignancy model."""
OVERLAY_ALPHA = 0.4
"""Default heat-map opacity of the overlays, 0 (image only) … 1 (heat map only)."""


def prediction_columns(predictions: Sequence[Prediction]) -> tuple[str, ...]:
    """``PREDICTION_COLUMNS``, with ``SUBTYPE_COLUMNS`` after ``p_malignant`` when a subtype model served any of
    ``predictions``."""
    if all(p.class_probabilities is None for p in predictions):
        return PREDICTION_COLUMNS
    at = PREDICTION_COLUMNS.index("p_malignant") + 1
    return PREDICTION_COLUMNS[:at] + SUBTYPE_COLUMNS + PREDICTION_COLUMNS[at:]


def prediction_table(predictions: Sequence[Prediction], cases: Sequence[Case] = (),
                     names: Sequence[str] | None = None) -> str:
    """The predictions as CSV text: a header of :func:`prediction_columns`, then one row per prediction in order
    (None as an empty field, booleans as True/False, probabilities in [0, 1]).

    Args:
        predictions: one per image.
        cases: the cases the predictions were grouped into (``predict.group_cases``), for the ``case`` column.
        names: what the table calls each image (e.g. a zip member as ``archive.zip › member``); default each
            prediction's ``name``.
    """
    case_of = {id(p): case.case_id for case in cases for p in case.predictions}
    table = io.StringIO()
    writer = csv.DictWriter(table, prediction_columns(predictions), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for index, prediction in enumerate(predictions):
        height, width = prediction.image_size
        types = {f"p_{code}": p for code, p in (prediction.class_probabilities or {}).items()}
        writer.writerow({**prediction.to_dict(), **types, "name": prediction.name if names is None else names[index],
                         "case": case_of.get(id(prediction)), "image_size": f"{width}x{height}"})
    return table.getvalue()


def heatmap_overlays(images: Sequence[np.ndarray], predictions: Sequence[Prediction],
                     alpha: float = OVERLAY_ALPHA) -> list[np.ndarray | None]:
    """Each prediction's heat map over its image: ``(H, W, 3)`` uint8 RGB at the image's size, or None for a
    prediction without a heat map.

    Args:
        images: the ``(H, W, 3)`` uint8 RGB images, in the order of ``predictions``; not modified.
        predictions: one per image.
        alpha: heat-map opacity in [0, 1].
    """
    return [overlay(image, p.heatmap, alpha) if p.heatmap is not None else None for image, p in zip(images, predictions)]


def report_items(predictions: Sequence[Prediction], images: Sequence[np.ndarray],
                 overlays: Sequence[np.ndarray | None], names: Sequence[str] | None = None) -> list[ReportItem]:
    """The report's images.

    Args:
        predictions: one per image.
        images: ``(H, W, 3)`` uint8 RGB, in the same order.
        overlays: from :func:`heatmap_overlays` (None entries: no heat map).
        names: what the report calls each image (e.g. a zip member as ``archive.zip › member``);
            default each prediction's ``name``.
    """
    items = [ReportItem.from_prediction(p, image, layer) for p, image, layer in zip(predictions, images, overlays)]
    return items if names is None else [replace(item, name=name) for item, name in zip(items, names)]


def run_summary(run: registry.Run, stage: str) -> dict:
    """The report's model section for a registry model: ``{"model_id", "learning_check", "split_protocol", "leaky",
    "patient_accuracy", "image_accuracy", "warnings"}`` (test-split accuracies in [0, 1], None when not evaluated;
    ``warnings``: the learning-check warning when the model was not seen to learn); see ``report.html_report``."""
    overall = ((((run.metrics or {}).get("models") or {}).get(stage) or {}).get("overall")) or {}
    return {
        **report_fields({registry.model_id(run, stage): run.learning(stage)}),
        "split_protocol": run.protocol or "unknown (imported model)",
        "leaky": bool(run.leaky),
        "patient_accuracy": (overall.get("patient_recognition_rate") or {}).get("value"),
        "image_accuracy": (overall.get("image_accuracy") or {}).get("value"),
    }


def served_summary(predictions: Sequence[Prediction]) -> dict:
    """The report's model section when several models may have served a batch: ``{"model_id": "a, b",
    "learning_check": "a: learned; b: did not learn: …", "warnings": [...]}`` (as :func:`run_summary`)."""
    return report_fields({p.model_id: p.learning for p in predictions})


def prediction_report(predictions: Sequence[Prediction], cases: Sequence[Case], images: Sequence[np.ndarray],
                      overlays: Sequence[np.ndarray | None], model_summary: Mapping,
                      names: Sequence[str] | None = None) -> str:
    """The self-contained HTML report of a prediction batch (``report.html_report``).

    Args:
        predictions, images, overlays, names: as for :func:`report_items`.
        cases: ``predict.group_cases`` of the predictions.
        model_summary: :func:`run_summary` or :func:`served_summary`.
    """
    return html_report(report_items(predictions, images, overlays, names), [ReportCase.from_case(c) for c in cases],
                       model_summary, legend=(colour_bar(), LEGEND_TEXT))


def comparison_report(images: Sequence[np.ndarray], names: Sequence[str], results: Mapping[str, Sequence[Prediction]],
                      alpha: float = OVERLAY_ALPHA) -> str:
    """The HTML report of two models on the same images: each image once per model, and how often they agree.

    Args:
        images: the ``(H, W, 3)`` uint8 RGB images.
        names: what the report calls each image.
        results: model label → one prediction per image (in the order of ``images``), for the two models.
        alpha: heat-map opacity of the overlays.
    """
    labels = list(results)
    items = []
    for index, (image, name) in enumerate(zip(images, names)):
        served = [results[label][index] for label in labels]
        same = [image] * len(labels)
        items += report_items(served, same, heatmap_overlays(same, served, alpha), [f"{name} · {label}" for label in labels])
    agree = sum(results[labels[0]][i].verdict == results[labels[-1]][i].verdict for i in range(len(images)))
    summary = {**report_fields({p.model_id: p.learning for label in labels for p in results[label][:1]}),
               "model_id": " vs ".join(f"{label} ({results[label][0].model_id})" if results[label] else label
                                       for label in labels),
               "agreement": f"the two models agree on {agree} of {len(images)} image(s)"}
    return html_report(items, [], summary, title="BreakHis model comparison", legend=(colour_bar(), LEGEND_TEXT))
