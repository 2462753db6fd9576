"""breakhis_core.evaluation.metrics: hand-checkable metric values, bootstrap CIs, the predictions CSV."""

from __future__ import annotations

import time

import numpy as np
import pytest

from breakhis_core.config import STAGES
from breakhis_core.errors import DatasetLayoutError
from breakhis_core.data.records import ImageRecord
from breakhis_core.evaluation.metrics import (
    METRIC_NAMES,
    compute_metrics,
    evaluate_predictions_csv,
    patients_per_class,
    read_prediction_table,
    roc_curve,
    write_prediction_table,
)
from breakhis_core.task import SUBTYPE


def values(summary: dict) -> dict:
    return {name: summary[name]["value"] for name in METRIC_NAMES}


def test_perfect_classifier():
    labels = [0, 0, 1, 1, 1]
    summary = compute_metrics(labels, [0.1, 0.2, 0.9, 0.8, 0.7], ["a", "a", "b", "b", "c"], n_bootstrap=0)["overall"]
    assert values(summary) == {name: 1.0 for name in METRIC_NAMES}
    assert summary["confusion_matrix"] == [[2, 0], [0, 3]]
    assert summary["n_images"] == 5 and summary["n_patients"] == 3
    assert all(summary[name]["ci"] is None for name in METRIC_NAMES)  # no resamples asked for


def test_all_wrong():
    summary = compute_metrics([0, 0, 1, 1], [0.9, 0.6, 0.1, 0.4], ["a", "a", "b", "b"], n_bootstrap=0)["overall"]
    assert values(summary) == {
        "image_accuracy": 0.0,
        "patient_recognition_rate": 0.0,
        "patient_verdict_accuracy": 0.0,
        "sensitivity": 0.0,
        "specificity": 0.0,
        "precision": 0.0,
        "f1": 0.0,
        "roc_auc": 0.0,
        "patient_auc": 0.0,
    }
    assert summary["confusion_matrix"] == [[0, 2], [2, 0]]


def test_patient_auc_ranks_patients_by_their_mean_probability_across_magnifications():
    """Patient AUC against scikit-learn's ROC AUC of the patients' mean scores, and its CI against a resample by hand."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    patients = np.repeat([f"p{i}" for i in range(12)], 5)
    patient_label = {f"p{i}": int(i % 3 == 0) for i in range(12)}
    labels = np.array([patient_label[p] for p in patients])
    scores = np.clip(0.4 + 0.15 * labels + rng.normal(0, 0.3, len(labels)), 0, 1)
    magnifications = np.tile([40, 100, 200, 400, 40], 12)
    result = compute_metrics(labels, scores, patients, magnifications, n_bootstrap=400, seed=1)
    ids = sorted(patient_label)
    means = [scores[patients == p].mean() for p in ids]
    expected = roc_auc_score([patient_label[p] for p in ids], means)
    assert result["overall"]["patient_auc"]["value"] == pytest.approx(expected)
    assert result["overall"]["patient_auc"]["value"] != pytest.approx(result["overall"]["roc_auc"]["value"])
    low, high = result["overall"]["patient_auc"]["ci"]
    assert low < expected < high and high - low > 0.05
    draw = np.random.default_rng(7).choice(ids, len(ids))
    counts = {p: int((draw == p).sum()) for p in ids}
    pairs = [(counts[i] * counts[j], float(means[ids.index(i)] > means[ids.index(j)]))
             for i in ids for j in ids if patient_label[i] and not patient_label[j]]
    by_hand = sum(w * win for w, win in pairs) / sum(w for w, _ in pairs)
    weights = np.array([[counts[p] for p in ids]], dtype=np.float64)
    from breakhis_core.evaluation.metrics import _PatientTable

    table = _PatientTable(labels, scores, np.unique(patients, return_inverse=True)[1], len(ids), 0.5)
    assert table.metrics(weights)["patient_auc"][0] == pytest.approx(by_hand)


def test_auc_by_hand_with_ties():
    # malignant scores {0.5, 0.9}, benign {0.5, 0.2}: pairs 0.5 (tie) + 1 + 1 + 1 → 3.5 / 4
    summary = compute_metrics([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9], ["a", "b", "c", "d"], n_bootstrap=0)["overall"]
    assert summary["roc_auc"]["value"] == pytest.approx(0.875)
    # classic example: malignant {0.35, 0.8}, benign {0.1, 0.4}: 3 of 4 pairs ordered
    summary = compute_metrics([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], ["a", "b", "c", "d"], n_bootstrap=0)["overall"]
    assert summary["roc_auc"]["value"] == pytest.approx(0.75)
    # threshold 0.5: tp 1 (0.8), fn 1 (0.35), tn 2 → sensitivity 0.5, specificity 1, precision 1, f1 2/3
    assert summary["sensitivity"]["value"] == 0.5 and summary["specificity"]["value"] == 1.0
    assert summary["precision"]["value"] == 1.0 and summary["f1"]["value"] == pytest.approx(2 / 3)


def test_patient_recognition_rate_differs_from_image_accuracy():
    # patient a: 8 images, all right; patient b: 2 images, both wrong.
    labels = [1] * 8 + [0] * 2
    scores = [0.9] * 8 + [0.8] * 2
    summary = compute_metrics(labels, scores, ["a"] * 8 + ["b"] * 2, n_bootstrap=0)["overall"]
    assert summary["image_accuracy"]["value"] == pytest.approx(0.8)  # 8 / 10
    assert summary["patient_recognition_rate"]["value"] == pytest.approx(0.5)  # (1 + 0) / 2
    assert summary["patient_verdict_accuracy"]["value"] == pytest.approx(0.5)


def test_patient_verdict_uses_mean_probability():
    # one malignant patient, images 0.9, 0.45, 0.45: 1/3 images right, but mean 0.6 → verdict right
    summary = compute_metrics([1, 1, 1], [0.9, 0.45, 0.45], ["a"] * 3, n_bootstrap=0)["overall"]
    assert summary["image_accuracy"]["value"] == pytest.approx(1 / 3)
    assert summary["patient_verdict_accuracy"]["value"] == 1.0


def test_threshold_moves_predictions():
    summary = compute_metrics([0, 1], [0.3, 0.6], ["a", "b"], threshold=0.7, n_bootstrap=0)["overall"]
    assert summary["confusion_matrix"] == [[1, 0], [1, 0]]
    assert summary["precision"]["value"] is None  # nothing predicted malignant


def test_undefined_metrics_are_none():
    summary = compute_metrics([1, 1, 1, 1], [0.9, 0.8, 0.2, 0.7], ["a", "a", "b", "b"], n_bootstrap=200)["overall"]
    assert summary["roc_auc"] == {"value": None, "ci": None}  # one class only
    assert summary["specificity"] == {"value": None, "ci": None}  # no benign image
    assert summary["sensitivity"]["value"] == pytest.approx(0.75)
    assert summary["sensitivity"]["ci"] is not None
    benign_only = compute_metrics([0, 0], [0.1, 0.2], ["a", "b"], n_bootstrap=0)["overall"]
    assert benign_only["sensitivity"]["value"] is None and benign_only["f1"]["value"] is None


def test_single_patient_has_no_ci():
    summary = compute_metrics([0, 1], [0.2, 0.7], ["a", "a"], n_bootstrap=100)["overall"]
    assert summary["roc_auc"]["value"] == 1.0 and summary["roc_auc"]["ci"] is None


def noisy_patients(n_patients: int, images_each: int = 20, seed: int = 0):
    """Patients alternating benign/malignant; each patient's images share a random difficulty."""
    rng = np.random.default_rng(seed)
    patients = np.repeat([f"p{i}" for i in range(n_patients)], images_each)
    labels = np.repeat(np.arange(n_patients) % 2, images_each)
    shift = np.repeat(rng.normal(0, 0.15, n_patients), images_each)
    scores = np.clip(0.5 + (labels - 0.5) * 0.3 + shift + rng.normal(0, 0.1, len(labels)), 0, 1)
    return labels, scores, patients


def test_ci_contains_value_and_narrows_with_more_patients():
    few = compute_metrics(*noisy_patients(10), n_bootstrap=500)["overall"]
    many = compute_metrics(*noisy_patients(100), n_bootstrap=500)["overall"]
    for name in ("image_accuracy", "patient_recognition_rate", "roc_auc"):
        for summary in (few, many):
            low, high = summary[name]["ci"]
            assert low <= summary[name]["value"] <= high
        assert np.diff(many[name]["ci"])[0] < np.diff(few[name]["ci"])[0]


def test_bootstrap_is_seeded():
    data = noisy_patients(10)
    first = compute_metrics(*data, n_bootstrap=100, seed=3)
    assert compute_metrics(*data, n_bootstrap=100, seed=3) == first
    assert compute_metrics(*data, n_bootstrap=100, seed=4) != first


def test_bootstrap_is_fast():
    labels, scores, patients = noisy_patients(10, images_each=160)
    magnifications = np.tile([40, 100, 200, 400], 400)
    start = time.perf_counter()
    compute_metrics(labels, scores, patients, magnifications, n_bootstrap=1000)
    assert time.perf_counter() - start < 1.0


def test_by_magnification_keys():
    metrics = compute_metrics(
        [0, 1, 0, 1, 1], [0.1, 0.9, 0.2, 0.3, 0.8], ["a", "b", "a", "b", "c"], [40, 40, 400, 400, None], n_bootstrap=0
    )
    assert list(metrics["by_magnification"]) == ["40", "400"]
    assert metrics["by_magnification"]["40"]["n_images"] == 2
    assert metrics["by_magnification"]["400"]["image_accuracy"]["value"] == 0.5
    assert metrics["overall"]["n_images"] == 5
    assert compute_metrics([0, 1], [0.1, 0.9], ["a", "b"], n_bootstrap=0)["by_magnification"] == {}


@pytest.mark.parametrize(
    "args",
    [
        ([], [], []),
        ([0, 1], [0.1], ["a", "b"]),
        ([0, 2], [0.1, 0.2], ["a", "b"]),
        ([0, 1], [0.1, np.nan], ["a", "b"]),
    ],
)
def test_bad_inputs_raise(args):
    with pytest.raises(ValueError, match="Received"):
        compute_metrics(*args)


def test_roc_curve_points():
    fpr, tpr, thresholds = roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
    np.testing.assert_allclose(thresholds, [np.inf, 0.8, 0.4, 0.35, 0.1])
    fpr, tpr, thresholds = roc_curve([0, 1, 1], [0.5, 0.5, 0.9])  # tied scores share one point
    np.testing.assert_allclose(fpr, [0, 0, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 1])
    assert np.isnan(roc_curve([1, 1], [0.2, 0.3])[0]).all()


def test_evaluate_predictions_csv(tmp_path):
    csv_path = tmp_path / "test_predictions.csv"
    csv_path.write_text(
        "path,label,patient,magnification,p_malignant_frozen,p_malignant_finetuned\n"
        "a1.png,0,a,40,0.2,0.1\n"
        "b1.png,1,b,40,0.4,0.9\n"
        "c1.png,1,c,100,0.7,0.8\n"
    )
    metrics = evaluate_predictions_csv(csv_path, n_bootstrap=0)
    assert set(metrics) == {"frozen", "finetuned"}
    assert metrics["frozen"]["overall"]["image_accuracy"]["value"] == pytest.approx(2 / 3)
    assert metrics["finetuned"]["overall"]["image_accuracy"]["value"] == 1.0
    assert list(metrics["finetuned"]["by_magnification"]) == ["40", "100"]


def test_evaluate_predictions_csv_partial_columns(tmp_path):
    csv_path = tmp_path / "test_predictions.csv"
    csv_path.write_text("path,label,patient,magnification,p_malignant_frozen,p_malignant_finetuned\nx.png,1,a,,0.7,\n")
    metrics = evaluate_predictions_csv(csv_path, n_bootstrap=0)
    assert list(metrics) == ["frozen"] and metrics["frozen"]["by_magnification"] == {}


@pytest.mark.parametrize(
    "text",
    [None, "", "path,label,patient\nx.png,1,a\n", "path,label,patient,p_malignant_frozen\nx.png,benign,a,0.3\n"],
)
def test_evaluate_predictions_csv_refuses_bad_files(tmp_path, text):
    csv_path = tmp_path / "test_predictions.csv"
    if text is not None:
        csv_path.write_text(text)
    with pytest.raises(DatasetLayoutError, match="Received"):
        evaluate_predictions_csv(csv_path)


# ----------------------------------------------------------------------------- scikit-learn as the oracle


def _check_against_sklearn(labels, scores, patients, threshold=0.5):
    from sklearn import metrics as sk

    labels, scores = np.asarray(labels), np.asarray(scores)
    predicted = (scores >= threshold).astype(int)
    summary = compute_metrics(labels, scores, patients, threshold=threshold, n_bootstrap=0)["overall"]
    assert summary["image_accuracy"]["value"] == pytest.approx(sk.accuracy_score(labels, predicted))
    assert summary["sensitivity"]["value"] == pytest.approx(sk.recall_score(labels, predicted, pos_label=1))
    assert summary["specificity"]["value"] == pytest.approx(sk.recall_score(labels, predicted, pos_label=0))
    if predicted.any():
        assert summary["precision"]["value"] == pytest.approx(sk.precision_score(labels, predicted))
    else:  # no malignant call: precision is undefined here (scikit-learn warns and reports 0)
        assert summary["precision"]["value"] is None
    assert summary["f1"]["value"] == pytest.approx(sk.f1_score(labels, predicted))
    assert summary["roc_auc"]["value"] == pytest.approx(sk.roc_auc_score(labels, scores))
    assert summary["confusion_matrix"] == sk.confusion_matrix(labels, predicted, labels=[0, 1]).tolist()
    fpr, tpr, thresholds = roc_curve(labels, scores)
    sk_fpr, sk_tpr, sk_thresholds = sk.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_allclose(thresholds[1:], sk_thresholds[1:])  # the first point: inf here, max + 1 there (by version)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_scikit_learn_on_random_predictions(seed):
    rng = np.random.default_rng(seed)
    n = 400
    labels = rng.integers(0, 2, n)
    scores = np.round(np.clip(0.25 * labels + rng.random(n) * 0.75, 0, 1), 2)  # rounded: many ties
    patients = np.array([f"p{i}" for i in rng.integers(0, 40, n)])
    for threshold in (0.5, 0.3, 0.71):
        _check_against_sklearn(labels, scores, patients, threshold)


def test_metrics_match_scikit_learn_on_real_predictions(tiny_run):
    import csv

    with open(tiny_run / "test_predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    labels = [int(r["label"]) for r in rows]
    assert set(labels) == {0, 1}, "the tiny run's test split should hold both classes"
    for stage in ("frozen", "finetuned"):
        scores = [float(r[f"p_malignant_{stage}"]) for r in rows]
        _check_against_sklearn(labels, scores, [r["patient"] for r in rows])
        _check_against_sklearn(labels, scores, [r["patient"] for r in rows], threshold=float(np.median(scores)))


def test_prediction_table_reads_back_one_stage(tmp_path):
    records = [ImageRecord(f"/data/{i}.png", i % 2, f"P{i // 2}", 40) for i in range(4)]
    probabilities = {"frozen": np.array([0.1, 0.8, 0.3, 0.6]), "finetuned": np.array([0.2, 0.9, 0.4, 0.7])}
    path = tmp_path / "test_predictions.csv"
    write_prediction_table(path, records, np.array([r.patient for r in records]), probabilities)
    table = read_prediction_table(path, "finetuned")
    np.testing.assert_array_equal(table.labels, [0, 1, 0, 1])
    np.testing.assert_allclose(table.p_malignant, probabilities["finetuned"])
    assert list(table.patients) == ["P0", "P0", "P1", "P1"]
    assert read_prediction_table(path, "scratch") is None and read_prediction_table(tmp_path / "absent.csv", "frozen") is None


def test_the_prediction_table_header_is_the_one_runs_have_on_disk(tmp_path):
    """Tables written by earlier versions must keep reading: the named columns write the same header."""
    from breakhis_core.evaluation.metrics import PREDICTION_TABLE_COLUMNS, read_class_table, stage_column

    assert ",".join([*PREDICTION_TABLE_COLUMNS, *map(stage_column, STAGES)]) == (
        "path,label,patient,magnification,p_malignant_frozen,p_malignant_finetuned")
    records = [ImageRecord(f"/data/{i}.png", int(i >= 2), f"P{i}", 40, tumour_type=code)
               for i, code in enumerate(("A", "F", "DC", "PC"))]
    probabilities = np.eye(8)[[0, 1, 4, 7]] * 0.9 + 0.1 / 8
    path = tmp_path / "test_predictions.csv"
    write_prediction_table(path, records, np.array([r.patient for r in records]), {STAGES[-1]: probabilities[:, 4:].sum(1)},
                           {STAGES[-1]: probabilities}, SUBTYPE.codes)
    header = path.read_text().splitlines()[0]
    assert header.startswith(f"path,label,patient,magnification,tumour_type,p_malignant_{STAGES[-1]},p_A_{STAGES[-1]},")
    table = read_class_table(path, STAGES[-1], SUBTYPE.codes)
    np.testing.assert_array_equal(table.labels, [0, 1, 4, 7])
    np.testing.assert_allclose(table.probabilities, probabilities, atol=1e-6)


def test_patients_per_class_counts_each_patient_once_by_its_majority_label():
    labels = np.array([0, 0, 1, 1, 1, 0, 1, 1])
    patients = np.array(["a", "a", "b", "b", "c", "d", "d", "e"])  # d: one benign, one malignant image → a tie
    assert patients_per_class(labels, patients) == (1, 4)  # a benign; b, c, e malignant; d's tie counts malignant
    assert patients_per_class(np.zeros(0, int), np.zeros(0, str)) == (0, 0)
