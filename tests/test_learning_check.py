"""The learning check: a model that calls every image one class, or whose patient-resampled AUC interval lies at
chance or below, did not learn; a split too small to tell is undetermined; neither is made the active model
automatically, and the pages say so."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from breakhis_core.runs import default_model, registry
from breakhis_core.evaluation.metrics import compute_metrics
from breakhis_core.evaluation.learning_check import (
    DID_NOT_LEARN,
    LEGACY_NOTE,
    MAX_AUC_NOT_LEARNED,
    MIN_PATIENTS,
    NOT_CHECKED,
    OK,
    UNDETERMINED,
    LearningStatus,
    check_learning,
    check_split,
    roc_auc,
)
from breakhis_core.training.setup import prepare_run
from breakhis_core.training.train import run_training
from conftest import tiny_config

LABELS = np.array([0, 0, 0, 1, 1, 1])
SIX = np.array(["a", "b", "c", "d", "e", "f"])  # one image per patient


def _split(n_patients: int, separation: float, seed: int = 0, images: int = 5):
    """Labels, scores and patients of ``n_patients`` (half benign, half malignant, ``images`` each); malignant
    scores shifted up by ``separation`` (0: chance; negative: reversed)."""
    rng = np.random.default_rng(seed)
    patients = np.repeat([f"p{i}" for i in range(n_patients)], images)
    labels = np.repeat(np.arange(n_patients) % 2, images)
    scores = np.clip(0.5 + separation * (labels - 0.5) + rng.normal(0, 0.15, len(labels)), 0.001, 0.999)
    return labels, scores, patients


def test_one_class_predictions_did_not_learn_whatever_the_ranking():
    ranked_but_all_malignant = np.array([0.6, 0.61, 0.62, 0.9, 0.91, 0.92])  # AUC 1.0, every image >= 0.5
    check = check_split("test", LABELS, ranked_but_all_malignant, SIX)
    assert check.roc_auc == 1.0 and check.malignant_fraction == 1.0 and check.state == DID_NOT_LEARN
    assert check.reasons == ["every test image is predicted malignant at p_malignant 0.5"]
    benign = check_split("val", LABELS, np.full(6, 0.2), SIX)
    assert benign.state == DID_NOT_LEARN
    assert benign.reasons[0] == "every validation image is predicted benign at p_malignant 0.5"
    few = check_split("val", LABELS[2:4], np.full(2, 0.2), SIX[2:4])  # 2 patients: too few to tell on their own
    assert few.state == UNDETERMINED and few.reasons[1] == "every validation image is predicted benign at p_malignant 0.5"
    together = check_learning({"val": (LABELS[2:4], np.full(2, 0.2), SIX[2:4]),
                               "test": (np.array([0, 1, 1]), np.full(3, 0.3), np.array(["g", "h", "i"]))})
    assert [check.state for check in together.splits.values()] == [UNDETERMINED, UNDETERMINED]  # 2 and 3 patients
    assert together.state == DID_NOT_LEARN and together.reasons == [
        "every validation and test image is predicted benign at p_malignant 0.5 (2 benign and 3 malignant patients)"]
    malignant_patients_only = check_learning({"val": (np.ones(3, int), np.full(3, 0.7), SIX[:3]),
                                              "test": (np.ones(3, int), np.full(3, 0.8), SIX[3:])})
    assert malignant_patients_only.state == UNDETERMINED  # all malignant is right for malignant patients


def test_the_auc_and_its_ci_are_the_patient_bootstrap_of_evaluate():
    labels, scores, patients = _split(12, 0.3)
    check = check_split("val", labels, scores, patients, seed=3)
    auc = compute_metrics(labels, scores, patients, seed=3)["overall"]["roc_auc"]
    assert check.roc_auc == pytest.approx(roc_auc_score(labels, scores), abs=1e-4)
    assert check.roc_auc_ci == pytest.approx(auc["ci"], abs=1e-4) and check.n_patients == 12
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    assert roc_auc(np.ones(3), np.array([0.1, 0.2, 0.3])) is None  # one class: undefined


def test_a_reversed_ranking_did_not_learn_and_is_not_called_chance():
    inverted = check_split("val", LABELS, np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1]), SIX)
    assert inverted.roc_auc == 0.0 and inverted.state == DID_NOT_LEARN
    assert "ranks reversed" in inverted.reasons[0] and "chance" not in inverted.reasons[0]
    labels, scores, patients = _split(20, 0.0, seed=1, images=20)  # many patients, no signal: a narrow CI at 0.5
    chance = check_split("test", labels, scores, patients)
    assert chance.roc_auc_ci[1] <= MAX_AUC_NOT_LEARNED and chance.state == DID_NOT_LEARN
    assert "ranks at chance level" in chance.reasons[0]


def test_a_small_or_one_class_split_is_undetermined_not_did_not_learn():
    labels, scores, patients = _split(4, -0.8)  # reversed, but only 4 patients
    few = check_split("val", labels, scores, patients)
    assert few.state == UNDETERMINED and few.n_patients == 4
    assert few.reasons[0] == ("too few validation patients (2 benign, 2 malignant; at least "
                              f"{MIN_PATIENTS} with both classes needed)")
    assert "ranks reversed" in few.reasons[1]
    labels, scores, patients = _split(12, 0.0)  # malignant patients' scores on both sides of 0.5
    malignant_only = labels == 1
    one_class = check_split("val", labels[malignant_only], scores[malignant_only], patients[malignant_only])
    assert one_class.state == UNDETERMINED and "(0 benign, 6 malignant" in one_class.reasons[0]


def test_a_wide_ci_is_undetermined_and_a_clear_one_learned():
    labels, scores, patients = _split(6, 0.05, seed=2)  # enough patients, weak signal: the CI reaches chance
    wide = check_split("val", labels, scores, patients)
    assert wide.roc_auc_ci[0] <= 0.5 < wide.roc_auc_ci[1] and wide.state == UNDETERMINED
    assert "too wide to say with 6 patients" in wide.reasons[0]
    labels, scores, patients = _split(12, 0.6)
    good = check_split("val", labels, scores, patients)
    assert good.roc_auc_ci[0] > 0.5 and good.state == OK and good.reasons == []


def test_the_model_state_over_its_splits():
    learned, few, reversed_ = _split(12, 0.6), _split(4, 0.6), _split(12, -0.8)
    assert check_learning({"val": few, "test": learned}).state == OK  # the test patients show it learned
    undetermined = check_learning({"val": few, "test": (LABELS[:0], np.zeros(0), SIX[:0])})
    assert undetermined.state == UNDETERMINED and set(undetermined.splits) == {"val"}  # an empty split is skipped
    assert undetermined.reasons[0].startswith("too few validation patients")
    failed = check_learning({"val": learned, "test": reversed_})
    assert failed.state == DID_NOT_LEARN and failed.reasons[0].startswith("test ROC AUC")
    record = failed.to_dict()
    assert record["ok"] is False and record["state"] == DID_NOT_LEARN and record["splits"]["test"]["state"] == DID_NOT_LEARN
    assert LearningStatus.from_record(record) == LearningStatus(DID_NOT_LEARN, tuple(failed.reasons))
    assert check_learning({"val": learned}).to_dict()["ok"] is True


def test_older_records_stay_readable_in_todays_words():
    old = {"ok": False, "reasons": ["validation ROC AUC 0.000 <= 0.55 (chance level)"],
           "splits": {"val": {"split": "val", "n_images": 6, "malignant_fraction": 0.5, "roc_auc": 0.0,
                              "reasons": ["validation ROC AUC 0.000 <= 0.55 (chance level)"]}}}
    status = LearningStatus.from_record(old)
    assert status.state == DID_NOT_LEARN and status.needs_confirmation
    assert status.reasons[0] == "validation ROC AUC 0.000: ranks reversed, malignant images score lower than benign ones"
    assert status.reasons[-1] == LEGACY_NOTE and "chance" not in status.text
    assert LearningStatus.from_record({"ok": True, "reasons": [], "splits": {}}).state == OK
    missing = LearningStatus.from_record(None)
    assert missing.state == NOT_CHECKED and not missing.needs_confirmation and "no learning check" in missing.warning("m")
    assert LearningStatus(UNDETERMINED, ("too few validation patients",)).warning("r:finetuned").startswith(
        "Model r:finetuned: learning undetermined — too few validation patients.")


@pytest.fixture(scope="module")
def collapsed_run(sample_dir, tmp_path_factory):
    """A run on the BreakHis sample whose models output the same probabilities for every image."""
    from breakhis_core.models import classifier as model

    runs = tmp_path_factory.mktemp("collapsed_runs")
    run_dir = prepare_run(tiny_config(sample_dir, epochs_finetune=0), runs)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model, "predict_probabilities",
                      lambda m, images, batch_size=16: np.tile(np.float32([0.3, 0.7]), (len(images), 1)))
        assert run_training(run_dir) == "done"
    return run_dir


def test_a_collapsed_run_is_marked_and_never_activated(collapsed_run):
    info = json.loads((collapsed_run / "run.json").read_text())
    for stage in ("frozen", "finetuned"):
        check = info["learning_check"][stage]
        assert check["ok"] is False and check["state"] == DID_NOT_LEARN and check["splits"]["val"]["malignant_fraction"] == 1.0
        assert check["splits"]["val"]["state"] == UNDETERMINED  # 4 validation patients alone cannot tell
        counts = re.fullmatch(r"every validation and test image is predicted malignant at p_malignant 0\.5 "
                              r"\((\d+) benign and (\d+) malignant patients\)", check["reasons"][0])
        assert counts and len(check["reasons"]) == 1
        assert sum(map(int, counts.groups())) == check["splits"]["val"]["n_patients"] + check["splits"]["test"]["n_patients"]
    root = collapsed_run.parent
    run = registry.load_run(collapsed_run)
    assert run.status == "done" and run.best_stage == "finetuned" and run.learned_stage is None
    assert default_model.get_default(root) is None, "a model that did not learn became the active model"
    assert run.headline()["learning_check"] == "finetuned: did not learn; frozen: did not learn"
    assert ("- Learning check, finetuned model: **did not learn** — every validation and test image is predicted "
            "malignant" in (collapsed_run / "card.md").read_text())
    default_model.set_default(run.run_id, "finetuned", root)  # a person may still choose it on purpose
    assert default_model.get_default(root)[0].run_id == run.run_id
    (root / default_model.DEFAULT_FILE).unlink()


def test_activation_needs_a_ticked_confirmation(collapsed_run, monkeypatch, sample_dir):
    from test_app_pages import open_page

    root = collapsed_run.parent
    monkeypatch.setenv("BREAKHIS_RUNS", str(root))
    monkeypatch.setenv("BREAKHIS_DATA_ROOTS", str(sample_dir))
    home = open_page("pages/home.py")
    assert any(w.startswith("No model is active: the learning check of each finished model says it did not learn")
               for w in (str(e.value) for e in home.warning))
    assert "the newest finished model is the active one" not in " ".join(str(m.value) for m in home.markdown)
    models = open_page("pages/models.py")
    button = models.button(key="models_set_active")
    assert button.disabled, "one click made a model that did not learn the active model"
    models.checkbox(key=f"models_confirm_active_{collapsed_run.name}_finetuned").check().run()
    assert not models.button(key="models_set_active").disabled
    models.button(key="models_set_active").click().run()
    assert not models.exception and default_model.read_default(root) == {"run_id": collapsed_run.name, "stage": "finetuned"}
    (root / default_model.DEFAULT_FILE).unlink()


def test_pages_say_did_not_learn(collapsed_run, monkeypatch, sample_dir):
    from test_app_pages import joined, open_page, texts

    root = collapsed_run.parent
    default_model.set_default(collapsed_run.name, "finetuned", root)
    monkeypatch.setenv("BREAKHIS_RUNS", str(root))
    monkeypatch.setenv("BREAKHIS_DATA_ROOTS", str(sample_dir))
    model = f"{collapsed_run.name}:finetuned"
    warning = f"Model {model} did not learn: every validation and test image is predicted malignant"
    home = open_page("pages/home.py")
    assert any(e.startswith(warning) for e in texts(home, "warning"))
    diagnose = open_page("pages/diagnose.py")
    assert any(e.startswith(warning) for e in texts(diagnose, "warning"))
    slides = open_page("pages/slides.py")
    assert any(e.startswith(warning) for e in texts(slides, "warning"))
    models = open_page("pages/models.py")
    assert models.dataframe[0].value["learned"].iloc[0] == "finetuned: did not learn; frozen: did not learn"
    assert "Learning check: **did not learn** (the model card says why)." in texts(models, "warning")
    compare = open_page("pages/compare.py")  # the test metrics tab and the "On your images" tab, both models each
    assert sum("did not learn: every validation and test image" in w for w in texts(compare, "warning")) == 4
    assert "Kept epoch of each stage" in joined(compare)
    kept = next(d.value for d in compare.dataframe if "kept epoch" in d.value.columns)
    assert kept["kept epoch"].tolist() == [1] and kept["why"].iloc[0].startswith("lowest val_loss (")
    assert kept["why"].iloc[0].endswith(" of 1 epoch")
