"""The learning check: a model that calls every image one class, or ranks at chance, is marked and never
made the active model automatically; the pages say so."""

from __future__ import annotations

import json

import numpy as np
import pytest

from breakhis_core import default_model, registry
from breakhis_core.learning_check import check_learning, check_split, roc_auc
from breakhis_core.run_setup import prepare_run
from breakhis_core.train import run_training
from conftest import tiny_config

LABELS = np.array([0, 0, 0, 1, 1, 1])


def test_one_class_predictions_fail_whatever_the_ranking():
    ranked_but_all_malignant = np.array([0.6, 0.61, 0.62, 0.9, 0.91, 0.92])  # AUC 1.0, every image >= 0.5
    check = check_split("test", LABELS, ranked_but_all_malignant)
    assert check.roc_auc == 1.0 and check.malignant_fraction == 1.0
    assert check.reasons == ["every test image is predicted malignant at p_malignant 0.5"]
    benign = check_split("val", LABELS, np.full(6, 0.2))
    assert benign.reasons[0] == "every validation image is predicted benign at p_malignant 0.5"


def test_chance_ranking_fails_and_a_learned_model_passes():
    inverted = check_split("val", LABELS, np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1]))
    assert inverted.roc_auc == 0.0 and inverted.reasons == ["validation ROC AUC 0.000 <= 0.55 (chance level)"]
    good = check_learning({"val": (LABELS, np.array([0.1, 0.3, 0.6, 0.4, 0.7, 0.9])), "test": (LABELS[:0], np.zeros(0))})
    assert good.ok and good.reasons == [] and set(good.splits) == {"val"}  # an empty split is skipped
    assert roc_auc(LABELS, np.array([0.1, 0.3, 0.6, 0.4, 0.7, 0.9])) == pytest.approx(8 / 9)
    assert roc_auc(np.ones(3), np.array([0.1, 0.2, 0.3])) is None  # one class: undefined, not a failure


@pytest.fixture(scope="module")
def collapsed_run(sample_dir, tmp_path_factory):
    """A run on the BreakHis sample whose models output the same probabilities for every image."""
    from breakhis_core import model

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
        assert check["ok"] is False and check["splits"]["val"]["malignant_fraction"] == 1.0
        assert "every validation image is predicted malignant at p_malignant 0.5" in check["reasons"]
    root = collapsed_run.parent
    run = registry.load_run(collapsed_run)
    assert run.status == "done" and run.best_stage == "finetuned" and run.learned_stage is None
    assert default_model.get_default(root) is None, "a model that did not learn became the active model"
    assert "finetuned: every validation image" in run.headline()["did_not_learn"]
    assert "**finetuned model did not learn:** every validation image is predicted malignant" in (collapsed_run / "card.md").read_text()
    default_model.set_default(run.run_id, "finetuned", root)  # a person may still choose it on purpose
    assert default_model.get_default(root)[0].run_id == run.run_id


def test_pages_say_did_not_learn(collapsed_run, monkeypatch, sample_dir):
    from test_app_pages import joined, open_page, texts

    root = collapsed_run.parent
    default_model.set_default(collapsed_run.name, "finetuned", root)
    monkeypatch.setenv("BREAKHIS_RUNS", str(root))
    monkeypatch.setenv("BREAKHIS_DATA_ROOTS", str(sample_dir))
    home = open_page("pages/home.py")
    assert any(e.startswith("This model did not learn: every validation image is predicted malignant") for e in texts(home, "warning"))
    diagnose = open_page("pages/diagnose.py")
    assert any("did not learn: every validation image" in e for e in texts(diagnose, "warning"))
    models = open_page("pages/models.py")
    assert models.dataframe[0].value["learned"].iloc[0].startswith("did not learn: frozen:")
    assert any(e.startswith("did not learn:") for e in texts(models, "warning"))
    assert "did not learn" in joined(models)
    compare = open_page("pages/compare.py")
    assert sum("did not learn: every validation image" in w for w in texts(compare, "warning")) == 2
    assert "Kept epoch of each stage" in joined(compare)
    kept = next(d.value for d in compare.dataframe if "kept epoch" in d.value.columns)
    assert kept["kept epoch"].tolist() == [1] and kept["why"].iloc[0].startswith("lowest val_loss (")
    assert kept["why"].iloc[0].endswith(" of 1 epoch")
