"""crossval.py and the cross-validation splits: patient-wise folds, an interrupted experiment resumed, pooled
out-of-fold metrics checked against scikit-learn, the deployable model and its card."""

from __future__ import annotations

import csv
import json
import time
from collections import defaultdict

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold

from breakhis_core import cli
from breakhis_core.training import crossval, jobs
from breakhis_core.runs import default_model, registry, rundir
from breakhis_core.runs.experimentdir import ExperimentDir
from breakhis_core.data.splits import assign_folds, split_by_cv
from breakhis_core.data.records import scan
from breakhis_core.errors import ConfigError, SplitError
from breakhis_core.evaluation.metrics import read_prediction_table

from conftest import tiny_config


@pytest.fixture(scope="module")
def records(sample_dir):
    return scan(sample_dir).records


@pytest.mark.parametrize("group_by", ["slide", "case"])
def test_folds_are_patient_wise_seeded_and_scikit_learns(records, group_by):
    folds = assign_folds(records, 3, seed=4, group_by=group_by)
    patients = {r.group(group_by) for r in records}
    assert set(folds) == patients and set(folds.values()) == {1, 2, 3}  # every patient in exactly one fold
    assert assign_folds(records, 3, seed=4, group_by=group_by) == folds
    assert assign_folds(records, 3, seed=5, group_by=group_by) != folds
    groups = np.array([r.group(group_by) for r in records])
    splitter = StratifiedGroupKFold(n_splits=3, shuffle=True, random_state=4)
    for number, (_, test) in enumerate(splitter.split(groups, [r.label for r in records], groups), start=1):
        assert {p for p, f in folds.items() if f == number} == set(groups[test])


@pytest.mark.parametrize("seed", [0, 1])
def test_folds_on_random_patients_match_scikit_learn(seed):
    from breakhis_core.data.records import ImageRecord

    rng = np.random.default_rng(seed)
    records = [ImageRecord(f"/x/{i}.png", int(rng.random() < 0.65), f"p{rng.integers(0, 50)}") for i in range(600)]
    folds = assign_folds(records, 5, seed=seed)
    groups = np.array([r.patient for r in records])
    labels = np.array([r.label for r in records])
    assert set(folds) == set(groups.tolist())
    splitter = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=seed)
    for number, (_, test) in enumerate(splitter.split(groups, labels, groups), start=1):
        mine = np.array([folds[p] == number for p in groups])
        assert (np.flatnonzero(mine) == test).all()
        assert abs(labels[mine].mean() - labels.mean()) < 0.15  # stratified: each fold near the overall class mix


def test_cv_split_carves_validation_from_the_other_folds(records):
    folds = assign_folds(records, 3, seed=0)
    split = split_by_cv(records, 3, 2, val_fraction=0.25, seed=0)
    by_part = {name: {r.patient for r in part} for name, part in split.parts.items()}
    assert by_part["test"] == {p for p, f in folds.items() if f == 2}
    assert not (by_part["train"] & by_part["val"]) and not (by_part["test"] & (by_part["train"] | by_part["val"]))
    assert by_part["train"] | by_part["val"] | by_part["test"] == set(folds) and by_part["val"]
    assert split.protocol == "cv3:2" and not split.leaky and not split.leakage()
    with pytest.raises(SplitError, match="at least 30 patients"):
        assign_folds(records, 30)


def test_experiment_refuses_a_non_cv_config(sample_dir, tmp_path):
    with pytest.raises(ConfigError, match="split=cv"):
        crossval.prepare_experiment(tiny_config(sample_dir), tmp_path)


def test_experiment_folder_is_skipped_by_the_registry_and_queued(sample_dir, tmp_path):
    config = tiny_config(sample_dir, split="cv", cv_folds=3)
    exp_dir = crossval.prepare_experiment(config, tmp_path, final_model=True)
    experiment = crossval.load_experiment(exp_dir)
    assert experiment.status == "queued" and len(experiment.info["runs"]) == 3 and experiment.info["final_run"]
    assert [e.experiment_id for e in crossval.list_experiments(tmp_path)] == [exp_dir.name]
    run_ids = {run.run_id for run in registry.list_runs(tmp_path)}
    assert exp_dir.name not in run_ids and set(experiment.run_ids) == run_ids  # the registry skips the folder
    final = registry.load_run(tmp_path / experiment.info["final_run"])
    assert final.info["split"]["counts"]["test"]["images"] == 0 and experiment.role(final.run_id).startswith("final")
    assert set(crossval.read_folds(exp_dir)) == {r.patient for r in scan(sample_dir).records}
    assert jobs.job_state(exp_dir).experiment.n_folds == 3


def test_interrupted_experiment_resumes_at_its_fold_and_pools_every_patient_once(tiny_experiment, sample_dir, capsys):
    root, exp_dir = tiny_experiment["root"], tiny_experiment["exp_dir"]
    assert tiny_experiment["interrupted_status"] == "interrupted"  # state running, process gone
    folds = crossval.read_folds(exp_dir)
    fold1, fold2 = (root / run_id for run_id in crossval.load_experiment(exp_dir).info["runs"])
    assert (fold1 / "finetuned.keras").stat().st_mtime_ns == tiny_experiment["fold1_mtime_ns"]  # not trained again
    experiment = crossval.load_experiment(exp_dir)
    assert experiment.status == "done" and registry.load_run(fold2).status == "done"
    assert jobs.job_state(exp_dir).status == "done"

    # Pooled out-of-fold predictions: every patient once, from the fold that held it out.
    with open(ExperimentDir(exp_dir).oof_file, newline="") as handle:
        oof = list(csv.DictReader(handle))
    seen = defaultdict(set)
    for row in oof:
        seen[row["patient"]].add(int(row["fold"]))
    assert {p: f.pop() for p, f in seen.items() if len(f) == 1} == folds
    metrics = experiment.metrics
    assert metrics["patients"]["each_once"] and metrics["patients"]["predicted"] == len(folds)
    labels = np.array([int(r["label"]) for r in oof])
    for stage in ("frozen", "finetuned"):
        scores = np.array([float(r[f"p_malignant_{stage}"]) for r in oof])
        pooled = metrics["pooled"][stage]["overall"]
        assert pooled["n_images"] == len(oof) == len(scan(sample_dir).records)
        assert pooled["image_accuracy"]["value"] == pytest.approx(accuracy_score(labels, scores >= 0.5))
        assert pooled["roc_auc"]["value"] == pytest.approx(roc_auc_score(labels, scores))
        lo, hi = pooled["image_accuracy"]["ci"]
        assert lo <= pooled["image_accuracy"]["value"] <= hi
        fold_values = [registry.load_run(root / f["run_id"]).metrics["models"][stage]["overall"]["image_accuracy"]["value"]
                       for f in metrics["folds"]]
        across = metrics["across_folds"][stage]["image_accuracy"]
        assert across["mean"] == pytest.approx(np.mean(fold_values))
        assert across["sd"] == pytest.approx(np.std(fold_values, ddof=1))
        calibration = json.loads((fold2 / "calibration.json").read_text())["stages"][stage]
        assert calibration["rule"] in ("youden", "fixed") and calibration["temperature"] > 0
        pooled_val = crossval.pooled_validation(
            [{s: read_prediction_table(root / run_id / "val_predictions.csv", s) for s in ("frozen", "finetuned")}
             for run_id in experiment.info["runs"]], folds, 2)[stage]
        n_pooled = len(set(pooled_val.patients.tolist()))
        assert (f"of {n_pooled} patients, pooled: " in calibration["fitted_on"]
                or calibration["fitted_on"].startswith(f"not fitted: {n_pooled} validation patients")), calibration

    capsys.readouterr()
    assert cli.main(["evaluate", exp_dir.name, "--runs", str(root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pooled"]["finetuned"]["overall"]["n_patients"] == len(folds)

    # The user deploys fold 2's model: it becomes the active model, and the cards say which.
    crossval.choose_deployable(experiment, fold2.name, "finetuned")
    active, stage = default_model.get_default(root)
    assert (active.run_id, stage) == (fold2.name, "finetuned")
    card2, card1 = (registry.build_card(registry.load_run(d)) for d in (fold2, fold1))
    assert card2["experiment"]["role"] == "fold 2 of 2" and card2["experiment"]["deployed"] == "finetuned"
    assert card1["experiment"]["deployed"] is None and card1["experiment"]["deployed_model"] == f"{fold2.name}:finetuned"
    markdown = (fold2 / "card.md").read_text()
    assert "## Cross-validation" in markdown and "is the one deployed" in markdown and "## Calibration" in markdown
    row = crossval.load_experiment(exp_dir).headline()
    assert row["deployed"] == f"{fold2.name}:finetuned" and row["image_accuracy"] is not None

    from breakhis_core.inference.predict import Predictor

    predictor = Predictor.from_run(registry.load_run(fold2), "finetuned")
    stored = json.loads((fold2 / "calibration.json").read_text())["stages"]["finetuned"]
    assert (predictor.temperature, predictor.threshold) == (stored["temperature"], stored["threshold"])


def test_cancel_before_a_fold_leaves_the_experiment_cancelled_and_resumable(sample_dir, tmp_path):
    exp_dir = crossval.prepare_experiment(tiny_config(sample_dir, split="cv", cv_folds=2), tmp_path)
    jobs.cancel_job(exp_dir)  # asked while queued: the request is kept for the job that starts
    assert jobs.job_state(exp_dir).cancel_requested
    assert crossval.run_experiment(exp_dir) == "cancelled"
    experiment = crossval.load_experiment(exp_dir)
    assert experiment.status == "cancelled" and not (exp_dir / rundir.CANCEL_FILE).exists()
    assert {run.status for run in experiment.runs()} == {"queued"}  # nothing was trained or lost
    with pytest.raises(ConfigError, match="no test predictions yet"):
        crossval.evaluate_experiment(exp_dir)


def test_cancel_relay_passes_the_request_to_the_fold_training_now(tmp_path):
    fold = tmp_path / "fold"
    fold.mkdir()
    with crossval._CancelRelay(tmp_path, interval_s=0.01) as relay:
        relay.run_dir = fold
        (tmp_path / rundir.CANCEL_FILE).touch()
        for _ in range(300):
            if (fold / rundir.CANCEL_FILE).exists():
                break
            time.sleep(0.01)
    assert (fold / rundir.CANCEL_FILE).exists()


def test_pooled_validation_leaves_out_the_test_fold_patients():
    """Fold k's operating point is fitted on every fold model's validation predictions except fold k's test patients."""
    from breakhis_core.evaluation.metrics import LabelledScores

    folds = {"a": 1, "b": 1, "c": 2, "d": 2, "e": 3, "f": 3}
    tables = [
        {"frozen": LabelledScores(np.array([0, 1]), np.array([0.1, 0.9]), np.array(["c", "e"])), "finetuned": None},
        {"frozen": LabelledScores(np.array([1, 0, 1]), np.array([0.8, 0.3, 0.6]), np.array(["a", "f", "e"])),
         "finetuned": None},
        {"frozen": LabelledScores(np.array([0]), np.array([0.2]), np.array(["b"])), "finetuned": None},
    ]
    for fold, expected in ((1, ["c", "e", "f", "e"]), (3, ["c", "a", "b"]), (None, ["c", "e", "a", "f", "e", "b"])):
        pooled = crossval.pooled_validation(tables, folds, fold)
        assert set(pooled) == {"frozen"}  # a stage some fold lacks is left out
        assert pooled["frozen"].patients.tolist() == expected
    fold3 = crossval.pooled_validation(tables, folds, 3)["frozen"]
    assert fold3.p_malignant.tolist() == [0.1, 0.8, 0.2] and fold3.labels.tolist() == [0, 1, 0]

