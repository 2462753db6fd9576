"""The task definition (breakhis_core/task.py) and the subtype task through the stack: labels, splits, metrics
(scikit-learn as the oracle), calibration, learning check, bad input, and a subtype run end to end."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from sklearn.metrics import (
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from breakhis_core.data.records import ImageRecord, scan
from breakhis_core.errors import ConfigError, DatasetLayoutError, ModelFileError, SplitError
from breakhis_core.evaluation.calibration import (
    apply_temperature,
    fit_class_temperature,
    scale_probabilities,
)
from breakhis_core.evaluation.learning_check import DID_NOT_LEARN, OK, UNDETERMINED, check_learning_classes
from breakhis_core.evaluation.metrics import compute_class_metrics
from breakhis_core.task import MALIGNANCY, SUBTYPE, TUMOUR_TYPES, task_for_outputs, task_named

from conftest import tiny_config


def _noisy_classes(n_patients: int, per_patient: int, k: int, seed: int, skill: float = 1.5):
    """Labels (one class per patient), softmax probabilities that favour the true class by ``skill``, patients."""
    rng = np.random.default_rng(seed)
    patient_labels = rng.integers(0, k, n_patients)
    labels = np.repeat(patient_labels, per_patient)
    logits = rng.normal(size=(len(labels), k))
    logits[np.arange(len(labels)), labels] += skill
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probabilities, np.repeat([f"p{i}" for i in range(n_patients)], per_patient)


def test_tasks_are_named_and_unknown_names_list_the_known_ones():
    assert task_named(None) is MALIGNANCY  # a config.json written before tasks
    assert task_named("subtype") is SUBTYPE
    with pytest.raises(ConfigError, match="malignancy, subtype. Received: task=grade"):
        task_named("grade")
    assert SUBTYPE.codes == tuple(TUMOUR_TYPES) and SUBTYPE.n_classes == 8
    assert [c for c, m in zip(SUBTYPE.codes, SUBTYPE.malignant) if m] == ["DC", "LC", "MC", "PC"]
    assert MALIGNANCY.probability_columns == ("p_benign", "p_malignant")


def test_an_output_size_fitting_no_task_is_refused_with_the_sizes_that_fit():
    assert task_for_outputs(2) is MALIGNANCY and task_for_outputs(8) is SUBTYPE
    with pytest.raises(ModelFileError, match=r"must be 2 class probabilities \(malignancy.*or 8 \(subtype.*Received: output shape \(None, 3\)"):
        task_for_outputs(3)


def test_malignancy_probability_sums_the_malignant_types_and_keeps_the_binary_column():
    binary = np.array([[0.3, 0.7], [0.9, 0.1]], dtype=np.float32)
    np.testing.assert_array_equal(MALIGNANCY.malignancy_probability(binary), binary[:, 1])
    types = np.full((2, 8), 1 / 8)
    types[0] = [0.1, 0.1, 0.05, 0.05, 0.4, 0.1, 0.1, 0.1]  # benign types 0.3, malignant types 0.7
    np.testing.assert_allclose(SUBTYPE.malignancy_probability(types), [0.7, 0.5])
    assert list(SUBTYPE.malignant_labels([0, 4, 7])) == [0, 1, 1]
    with pytest.raises(ValueError, match="8"):
        SUBTYPE.malignancy_probability(binary)


def test_class_metrics_agree_with_scikit_learn():
    labels, probabilities, patients = _noisy_classes(30, 4, 4, seed=3)
    codes = ("a", "b", "c", "d")
    metrics = compute_class_metrics(labels, probabilities, patients, codes, n_bootstrap=200, seed=1)
    predicted = probabilities.argmax(axis=1)
    assert metrics["balanced_accuracy"]["value"] == pytest.approx(balanced_accuracy_score(labels, predicted))
    assert metrics["macro_f1"]["value"] == pytest.approx(f1_score(labels, predicted, average="macro"))
    assert metrics["macro_auc"]["value"] == pytest.approx(roc_auc_score(labels, probabilities, multi_class="ovr"))
    assert metrics["confusion_matrix"] == confusion_matrix(labels, predicted, labels=range(4)).tolist()
    recalls = recall_score(labels, predicted, average=None, labels=range(4))
    precisions = precision_score(labels, predicted, average=None, labels=range(4), zero_division=np.nan)
    for c, code in enumerate(codes):
        assert metrics["per_class"][code]["recall"]["value"] == pytest.approx(recalls[c])
        assert metrics["per_class"][code]["precision"]["value"] == pytest.approx(precisions[c], nan_ok=True)
        assert metrics["per_class"][code]["auc"]["value"] == pytest.approx(roc_auc_score(labels == c, probabilities[:, c]))
    low, high = metrics["balanced_accuracy"]["ci"]
    assert low <= metrics["balanced_accuracy"]["value"] <= high and low < high
    # Patient level: each patient's mean probability vector against its label.
    ids = np.unique(patients)
    patient_label = np.array([labels[patients == p][0] for p in ids])
    patient_predicted = np.array([probabilities[patients == p].mean(axis=0).argmax() for p in ids])
    assert metrics["patient_balanced_accuracy"]["value"] == pytest.approx(
        balanced_accuracy_score(patient_label, patient_predicted))
    assert metrics["patient_macro_f1"]["value"] == pytest.approx(f1_score(patient_label, patient_predicted, average="macro"))
    assert metrics["patient_confusion_matrix"] == confusion_matrix(patient_label, patient_predicted, labels=range(4)).tolist()
    assert metrics["n_patients"] == 30 and metrics["n_images"] == 120


def test_class_metrics_with_an_absent_class_average_over_the_defined_ones():
    labels, probabilities, patients = _noisy_classes(20, 3, 4, seed=5)
    keep = labels != 2
    labels, probabilities, patients = labels[keep], probabilities[keep], patients[keep]
    metrics = compute_class_metrics(labels, probabilities, patients, ("a", "b", "c", "d"), n_bootstrap=0)
    present = [0, 1, 3]
    assert metrics["per_class"]["c"]["recall"]["value"] is None and metrics["per_class"]["c"]["auc"]["value"] is None
    assert metrics["macro_auc"]["value"] == pytest.approx(np.mean([roc_auc_score(labels == c, probabilities[:, c])
                                                                   for c in present]))
    assert metrics["balanced_accuracy"]["value"] == pytest.approx(balanced_accuracy_score(labels, probabilities.argmax(1)))


def test_class_temperature_recovers_an_over_confident_softmax_and_matches_the_binary_scaling():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=2.0, size=(4000, 8))
    truth = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(8, p=row) for row in truth])
    over_confident = scale_probabilities(truth, 0.5)  # softmax(2 × logits)
    assert fit_class_temperature(labels, over_confident) == pytest.approx(2.0, rel=0.1)
    mild = truth[:, :3] ** 0.2 / (truth[:, :3] ** 0.2).sum(axis=1, keepdims=True)  # far from the 1e-7 clip
    np.testing.assert_allclose(scale_probabilities(scale_probabilities(mild, 0.5), 2.0), mild, atol=1e-9)
    p = np.array([0.1, 0.4, 0.93])
    np.testing.assert_allclose(scale_probabilities(np.stack([1 - p, p], axis=1), 1.7)[:, 1], apply_temperature(p, 1.7))


def test_the_subtype_learning_check_reads_the_macro_auc_and_one_type_predictions():
    labels, probabilities, patients = _noisy_classes(40, 3, 8, seed=2, skill=4.0)
    learned = check_learning_classes({"val": (labels, probabilities, patients)}, SUBTYPE, n_bootstrap=200)
    assert learned.state == OK and learned.splits["val"].balanced_accuracy > 0.5
    one_type = np.zeros_like(probabilities)
    one_type[:, 3] = 1.0
    stuck = check_learning_classes({"val": (labels, one_type, patients)}, SUBTYPE, n_bootstrap=200)
    assert stuck.state == DID_NOT_LEARN and "predicted tubular adenoma (TA)" in stuck.reasons[0]
    few = check_learning_classes({"val": (labels[:6], probabilities[:6], patients[:6])}, SUBTYPE, n_bootstrap=200)
    assert few.state == UNDETERMINED and "too few validation patients" in few.reasons[0]


def _manifest(tmp_path, sample_files, columns, rows_of):
    path = tmp_path / "manifest.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for index, file in enumerate(sample_files):
            copy = tmp_path / f"image{index}.png"  # a name that is not BreakHis': the type must come from the column
            shutil.copy(file, copy)
            writer.writerow(rows_of(copy.name, file.name))
    return path


def test_subtype_on_a_manifest_without_types_names_the_column_it_needs(tmp_path, sample_files):
    from breakhis_core.training.setup import prepare_run

    label = lambda name: "malignant" if "_M_" in name else "benign"  # noqa: E731
    manifest = _manifest(tmp_path, sample_files, ["path", "label"], lambda path, name: [path, label(name)])
    with pytest.raises(DatasetLayoutError, match=r"subtype task needs each image's tumour type.*tumour_type \(or type\) column"):
        prepare_run(tiny_config(manifest, task="subtype", split="image"), tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_a_manifest_type_column_gives_the_type_and_must_agree_with_the_label(tmp_path, sample_files):
    code = lambda name: name.split("_")[2].split("-")[0]  # noqa: E731
    label = lambda name: "malignant" if "_M_" in name else "benign"  # noqa: E731
    manifest = _manifest(tmp_path, sample_files, ["path", "label", "type"],
                         lambda path, name: [path, label(name), code(name)])
    records = scan(manifest).records
    assert sorted({r.tumour_type for r in records}) == sorted({code(f.name) for f in sample_files})
    wrong = _manifest(tmp_path, sample_files[:1], ["path", "label", "tumour_type"],
                      lambda path, name: [path, "benign" if label(name) == "malignant" else "malignant", code(name)])
    with pytest.raises(DatasetLayoutError, match="contradicts label"):
        scan(wrong)


def test_a_type_without_a_training_image_is_named(tmp_path):
    from breakhis_core.data.samples import breakhis_sample
    from breakhis_core.training.setup import prepare_run

    breakhis_dir = breakhis_sample()
    # The in-repo sample holds one slide of each type: a patient-wise split cannot put a type in every split.
    with pytest.raises(SplitError, match=r"tumour type\(s\) 1 adenosis \(A\).*1 papillary carcinoma \(PC\).*split image"):
        prepare_run(tiny_config(breakhis_dir, task="subtype"), tmp_path / "runs")
    # Data lacking a type altogether: its output would never be trained.
    records = [r for r in scan(breakhis_dir).records if r.tumour_type != "PT"]
    data = tmp_path / "no_pt"
    for record in records:
        shutil.copy(record.path, data.mkdir(exist_ok=True) or data)
    with pytest.raises(ConfigError, match=r"no image of phyllodes tumour \(PT\)"):
        prepare_run(tiny_config(data, task="subtype", split="image"), tmp_path / "runs")


def test_subtype_folds_are_stratified_by_type_and_grouped_by_patient(sample_dir):
    from breakhis_core.data.splits import assign_folds

    records = scan(sample_dir).records
    folds = assign_folds(records, 2, seed=0, task=SUBTYPE)
    assert set(folds) == {r.patient for r in records}
    for code in ("A", "F", "PC"):  # types of several slides: spread over both folds
        assert {folds[r.patient] for r in records if r.tumour_type == code} == {1, 2}


def test_importing_a_model_whose_output_fits_no_task_is_refused(tmp_path):
    import keras

    from breakhis_core.models.classifier import build_model
    from breakhis_core.runs.transfer import import_model

    path = tmp_path / "three.keras"
    build_model(32, "none", num_classes=3, seed=0).save(path)
    with pytest.raises(ModelFileError, match=r"three.keras: model output must be 2 .* or 8 .*Received: output shape \(None, 3\)"):
        import_model(path, tmp_path / "runs")
    assert not any((tmp_path / "runs").glob("*imported*"))
    eight = tmp_path / "eight.keras"
    build_model(32, "none", num_classes=8, seed=0).save(eight)
    run = import_model(eight, tmp_path / "runs")
    assert run.task is SUBTYPE and run.info["imported"]["task"] == "subtype"
    assert isinstance(keras.saving.load_model(eight, compile=False), keras.Model)


def test_a_subtype_run_records_type_and_malignancy_metrics(subtype_run):
    config = json.loads((subtype_run / "config.json").read_text())
    metrics = json.loads((subtype_run / "metrics.json").read_text())
    assert config["task"] == "subtype" and metrics["task"] == "subtype"
    for stage in ("frozen", "finetuned"):
        assert metrics["classes"][stage]["classes"] == list(SUBTYPE.codes)
        assert len(metrics["classes"][stage]["confusion_matrix"]) == 8
        assert "roc_auc" in metrics["models"][stage]["overall"]  # the derived malignancy figures
    with open(subtype_run / "test_predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    row = rows[0]
    types = sum(float(row[f"p_{code}_finetuned"]) for code in SUBTYPE.codes)
    malignant = sum(float(row[f"p_{code}_finetuned"]) for code in ("DC", "LC", "MC", "PC"))
    assert types == pytest.approx(1, abs=1e-4) and float(row["p_malignant_finetuned"]) == pytest.approx(malignant, abs=1e-5)
    learning = json.loads((subtype_run / "run.json").read_text())["learning_check"]["finetuned"]
    assert learning["splits"]["val"]["measure"] == "macro one-vs-rest ROC AUC"
    card = (subtype_run / "card.md").read_text()
    assert "- Task: subtype" in card and "## Tumour types" in card and "| DC |" in card


def test_cli_predict_with_a_subtype_model_writes_type_columns(subtype_run, sample_files, tmp_path, capsys):
    from breakhis_core import cli

    out = tmp_path / "out"
    files = [str(f) for f in sample_files[:2]]
    assert cli.main(["predict", "--runs", str(subtype_run.parent), "--model", "subtype:finetuned", *files,
                     "--cam", "gradcam", "--out", str(out), "--quiet"]) == 0
    with open(out / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    header = list(rows[0])
    assert header[header.index("p_malignant") + 1:][:3] == ["top_type", "p_top_type", "p_A"]
    for row in rows:
        probabilities = [float(row[f"p_{code}"]) for code in SUBTYPE.codes]
        assert sum(probabilities) == pytest.approx(1, abs=1e-4)
        assert row["top_type"] == SUBTYPE.codes[int(np.argmax(probabilities))]
        assert float(row["p_malignant"]) == pytest.approx(sum(probabilities[4:]), abs=1e-5)
        assert row["cam_type"] in ("DC", "LC", "MC", "PC")  # the heat map explains the most probable malignant type
    result = json.loads((out / "predictions.json").read_text())
    assert result["predictions"][0]["task"] == "subtype"
    assert set(result["predictions"][0]["class_probabilities"]) == set(SUBTYPE.codes)
    report = (out / "report.html").read_text()
    assert "Tumour type" in report


def test_a_subtype_run_record_keeps_the_label_binary(subtype_run):
    # split.csv and the prediction tables keep label 0/1 (every malignancy view reads them); the type is its own column.
    with open(subtype_run / "split.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["label"] for row in rows} == {"0", "1"} and {row["tumour_type"] for row in rows} == set(SUBTYPE.codes)
    assert ImageRecord("x", 1, "p", tumour_type="LC") and SUBTYPE.label_of(ImageRecord("x", 1, "p", tumour_type="LC")) == 5
