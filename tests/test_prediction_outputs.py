"""prediction_outputs: the prediction table and the reports that the CLI and the app's pages hand over."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from breakhis_core.data.images import read_image
from breakhis_core.evaluation.learning_check import DID_NOT_LEARN, LearningStatus
from breakhis_core.inference.predict import ONE_CASE, Prediction, group_cases
from breakhis_core.inference.outputs import (
    PREDICTION_COLUMNS,
    comparison_report,
    heatmap_overlays,
    prediction_report,
    prediction_table,
    report_items,
    run_summary,
    served_summary,
)


def prediction(name: str, p_malignant: float, model_id: str = "run:finetuned", heatmap: np.ndarray | None = None,
               **overrides) -> Prediction:
    verdict = "malignant" if p_malignant >= 0.5 else "benign"
    fields = dict(name=name, magnification=40, magnification_source="filename", p_benign=1 - p_malignant,
                  p_malignant=p_malignant, verdict=verdict, confidence=max(p_malignant, 1 - p_malignant),
                  low_confidence=False, low_confidence_reason="", model_id=model_id, route=f"40X model {model_id}",
                  image_size=(460, 700), input_rule="whole image resized to 32×32", heatmap=heatmap)
    return Prediction(**{**fields, **overrides})


@pytest.fixture
def no_lab_profile(monkeypatch, tmp_path):
    monkeypatch.setenv("BREAKHIS_LAB_CONFIG", str(tmp_path / "absent.toml"))


@pytest.fixture(scope="module")
def images(sample_files) -> list[np.ndarray]:
    return [read_image(path) for path in sample_files[:2]]


def test_the_table_has_the_columns_in_order_and_one_row_per_prediction():
    predictions = [prediction("SOB_B_A-14-22549AB-40-001.png", 0.2),
                   prediction("b.png", 0.7, magnification=None, magnification_source="unknown", tta_std=0.03)]
    rows = list(csv.reader(io.StringIO(prediction_table(predictions))))
    assert tuple(rows[0]) == PREDICTION_COLUMNS
    assert len(rows) == 3
    first, second = (dict(zip(rows[0], row)) for row in rows[1:])
    assert first["name"] == "SOB_B_A-14-22549AB-40-001.png" and first["verdict"] == "benign"
    assert float(first["p_benign"]) == pytest.approx(0.8) and first["tta_std"] == "" and first["low_confidence"] == "False"
    assert second["magnification"] == "" and second["magnification_source"] == "unknown" and float(second["tta_std"]) == 0.03
    assert first["image_size"] == "700x460" and first["threshold"] == "0.5" and first["case"] == ""
    assert prediction_table([]) == ",".join(PREDICTION_COLUMNS) + "\n"


def test_the_table_names_each_image_and_its_case():
    predictions = [prediction("SOB_B_A-14-22549AB-40-001.png", 0.2, threshold=0.31, temperature=1.7),
                   prediction("b.png", 0.7, magnification=None, magnification_source="unknown")]
    cases = group_cases(predictions)
    rows = list(csv.DictReader(io.StringIO(prediction_table(predictions, cases, ["scan.zip › a.png", "b.png"]))))
    assert [row["learning_check"] for row in rows] == ["not checked"] * 2
    assert [row["name"] for row in rows] == ["scan.zip › a.png", "b.png"]
    assert [row["case"] for row in rows] == ["14-22549AB", ONE_CASE]
    assert (float(rows[0]["threshold"]), float(rows[0]["temperature"])) == (0.31, 1.7)


def test_overlays_only_where_there_is_a_heat_map(images):
    with_map = prediction("a.png", 0.7, heatmap=np.full(images[0].shape[:2], 0.5, np.float32))
    overlays = heatmap_overlays(images, [with_map, prediction("b.png", 0.2)], alpha=0.4)
    assert overlays[0].shape == images[0].shape and overlays[0].dtype == np.uint8 and overlays[1] is None
    assert not np.array_equal(overlays[0], images[0])
    assert np.array_equal(heatmap_overlays(images[:1], [with_map], alpha=0.0)[0], images[0])


def test_report_items_take_the_shown_names(images):
    predictions = [prediction("a.png", 0.7), prediction("b.png", 0.2)]
    items = report_items(predictions, images, [None, None], ["batch.zip › a.png", "b.png"])
    assert [item.name for item in items] == ["batch.zip › a.png", "b.png"]
    assert [item.name for item in report_items(predictions, images, [None, None])] == ["a.png", "b.png"]
    assert items[0].verdict == "malignant" and "served by 40X model run:finetuned" in items[0].note


def test_prediction_report_shows_the_model_section_and_the_cases(images, no_lab_profile, tmp_path):
    from breakhis_core.runs.registry import Run

    overall = {"patient_recognition_rate": {"value": 0.8125, "ci": None}, "image_accuracy": {"value": 0.75, "ci": None}}
    run = Run("20261201-run", tmp_path, None, "done", "", metrics={"protocol": "patient", "leaky": True,
                                                                   "models": {"finetuned": {"overall": overall}}})
    summary = run_summary(run, "finetuned")
    not_checked = LearningStatus()
    assert summary == {"model_id": "20261201-run:finetuned", "split_protocol": "patient", "leaky": True,
                       "patient_accuracy": 0.8125, "image_accuracy": 0.75, "learning_check": "not checked",
                       "warnings": [not_checked.warning("20261201-run:finetuned")]}
    assert run_summary(Run("imported", tmp_path, None, "done", ""), "finetuned")["split_protocol"] == "unknown (imported model)"
    predictions = [prediction("SOB_M_DC-14-2523-40-010.png", 0.7, heatmap=np.full(images[0].shape[:2], 0.5, np.float32),
                              cam_method="gradcam", cam_class=1),
                   prediction("SOB_M_DC-14-2523-40-011.png", 0.6)]
    page = prediction_report(predictions, group_cases(predictions), images, heatmap_overlays(images, predictions),
                             summary, ["first.png", "second.png"])
    assert "20261201-run:finetuned" in page and "0.812" in page and "leaky" in page and "14-2523" in page
    assert "first.png" in page and "second.png" in page and page.count('alt="heat map of') == 1
    assert not_checked.warning("20261201-run:finetuned") in page and "Learning check" in page
    assert "gradcam: evidence for “malignant”" in page and 'alt="heat-map colour scale"' in page
    failed = LearningStatus(DID_NOT_LEARN, ("test ROC AUC 0.000: ranks reversed",))
    served = served_summary([prediction("a", 0.1, "b:frozen", learning=failed), prediction("c", 0.9, "a:frozen"),
                             prediction("d", 0.9, "a:frozen")])
    assert served == {"model_id": "a:frozen, b:frozen",
                      "learning_check": "a:frozen: not checked; b:frozen: did not learn: test ROC AUC 0.000: ranks reversed",
                      "warnings": [not_checked.warning("a:frozen"), failed.warning("b:frozen")]}


def test_comparison_report_shows_both_models_per_image(images, no_lab_profile):
    heatmap = np.full(images[0].shape[:2], 0.5, np.float32)
    results = {"frozen (stage 1)": [prediction("x", 0.2, "r:frozen", heatmap), prediction("x", 0.7, "r:frozen", heatmap)],
               "fine-tuned (stage 2)": [prediction("x", 0.1, "r:finetuned", heatmap),
                                        prediction("x", 0.4, "r:finetuned", heatmap)]}
    page = comparison_report(images, ["a.png", "b.png"], results, 0.4)
    assert "BreakHis model comparison" in page and "agree on 1 of 2 image(s)" in page
    for name in ("a.png · frozen (stage 1)", "b.png · fine-tuned (stage 2)"):
        assert name in page
    assert page.count('alt="heat map of') == 4 and "r:frozen" in page and "r:finetuned" in page
