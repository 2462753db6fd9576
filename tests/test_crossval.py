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
from breakhis_core.files import read_jsonl

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



# ----------------------------------------------------------------------------- kept epoch on pooled inner validation


@pytest.fixture(scope="module")
def pooled_experiment(tmp_path_factory) -> dict:
    """A finished 3-fold cross-validation of the in-repo IDC sample (200 patches, 5 patients; 32 px, weights none,
    2 + 2 epochs, plain path in float32 so that a saved model predicts what it predicted while training), with a
    final model. Before the experiment chose, each fold's own run.json "kept_epochs" are noted."""
    from breakhis_core.data import samples

    root = tmp_path_factory.mktemp("cv_pooled")
    config = tiny_config(samples.idc_manifest(), split="cv", cv_folds=3, epochs_frozen=2, epochs_finetune=2,
                         lr_frozen=0.02, cache="off", mixed_precision="off")
    exp_dir = crossval.prepare_experiment(config, root, final_model=True)
    own = {}
    original = crossval.keep_pooled_epochs

    def noting_own_choices(experiment, folds):
        for run_id in experiment.info["runs"]:
            own[run_id] = json.loads((root / run_id / "run.json").read_text())["kept_epochs"]
        return original(experiment, folds)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(crossval, "keep_pooled_epochs", noting_own_choices)
        assert crossval.run_experiment(exp_dir) == "done"
    return {"root": root, "exp_dir": exp_dir, "own": own}


def _recorded(run_dir, stage) -> dict[int, dict]:
    """Epoch → its recorded validation predictions (rows of epochs/<stage>-e<N>.val.csv), read with csv alone."""
    tables = {}
    for path in sorted((run_dir / "epochs").glob(f"{stage}-e*.val.csv")):
        with open(path, newline="") as handle:
            tables[int(path.name[len(stage) + 2:-len(".val.csv")])] = list(csv.DictReader(handle))
    return tables


def _oracle_epoch(experiment, folds, stage, left_out) -> tuple[int, dict[int, float]]:
    """The epoch with the lowest scikit-learn log loss over every fold's recorded validation predictions, without the
    patients of fold ``left_out`` (None: all), and each common epoch's loss."""
    from sklearn.metrics import log_loss

    per_fold = [_recorded(experiment.root / run_id, stage) for run_id in experiment.info["runs"]]
    losses = {}
    for epoch in sorted(set.intersection(*(set(t) for t in per_fold))):
        rows = [r for t in per_fold for r in t[epoch] if folds[r["patient"]] != left_out]
        losses[epoch] = log_loss([int(r["label"]) for r in rows], [float(r[f"p_malignant_{stage}"]) for r in rows],
                                 labels=[0, 1])
    return min(losses, key=lambda e: (losses[e], e)), losses


def _predict(model_path, parts, run_dir):
    from breakhis_core.config import TrainConfig
    from breakhis_core.data.arrays import load_arrays
    from breakhis_core.data.splits import Split
    from breakhis_core.models.classifier import predict_probabilities
    from breakhis_core.models.loading import load_model

    config = TrainConfig.load(run_dir / "config.json")
    split = Split.load_csv(run_dir / "split.csv", config.split, False, config.group_by)
    model = load_model(model_path)
    out = {}
    for part in parts:
        arrays = load_arrays(split.parts[part], config.input_size)
        out[part] = ([r.path for r in arrays.records], predict_probabilities(model, arrays.images)[:, 1])
    return out


def test_every_fold_keeps_the_epoch_with_the_lowest_pooled_validation_loss(pooled_experiment):
    """Fold k's kept epoch of each stage is the argmin of scikit-learn's log loss over every fold model's recorded
    validation predictions at that epoch, fold k's test patients left out; run.json, cv_metrics.json and the card
    state the rule; the per-epoch weights are gone once the folds hold their choice."""
    root, exp_dir = pooled_experiment["root"], pooled_experiment["exp_dir"]
    experiment = crossval.load_experiment(exp_dir)
    folds = crossval.read_folds(exp_dir)
    summary = experiment.metrics["kept_epoch"]
    assert summary["rule"] == crossval.POOLED_RULE and summary["metric"] == "val_loss"
    for stage in ("frozen", "finetuned"):
        for fold, run_id in enumerate(experiment.info["runs"], start=1):
            run_dir = root / run_id
            recorded = _recorded(run_dir, stage)
            assert sorted(recorded) == ([1, 2] if stage == "frozen" else [0, 1, 2])  # stage 2's 0: its start
            expected, losses = _oracle_epoch(experiment, folds, stage, fold)
            info = json.loads((run_dir / "run.json").read_text())
            kept = info["kept_epochs"][stage]
            assert kept["epoch"] == expected, (fold, stage, losses, kept)
            assert kept["value"] == pytest.approx(losses[expected], rel=1e-6) and kept["metric"] == "val_loss"
            assert "pooled inner validation" in kept["reason"]
            record = info["kept_epoch"]["stages"][stage]
            assert record["rule"] == crossval.POOLED_RULE and record["epoch"] == expected
            assert record["own_epoch"] == pooled_experiment["own"][run_id][stage]["epoch"]
            assert {int(e): v for e, v in record["candidates"].items()} == pytest.approx(losses, rel=1e-6)
            assert f"except those of fold {fold}'s test patients" in info["kept_epoch"]["pool"]
            assert summary["stages"][stage]["epochs"][fold - 1] == expected
            assert not list((run_dir / "epochs").glob("*.weights.npz"))
            card = (run_dir / "card.md").read_text()
            assert "Kept epochs chosen by pooled inner validation" in card
            epochs = ", ".join(str(e) for e in summary["stages"][stage]["epochs"])
            assert f"chosen by {crossval.POOLED_RULE}: " in card and f"{stage} {epochs} (own validation split" in card


def test_out_of_fold_predictions_are_those_of_the_pooled_epoch(pooled_experiment):
    """Each fold's deployed model is its pooled epoch: on the fold's validation images it predicts what that epoch
    recorded (and not what another epoch did), and the out-of-fold predictions are its predictions on the fold's test
    images; the fold's test metrics and validation predictions were made with it."""
    root, exp_dir = pooled_experiment["root"], pooled_experiment["exp_dir"]
    experiment = crossval.load_experiment(exp_dir)
    with open(ExperimentDir(exp_dir).oof_file, newline="") as handle:
        oof = list(csv.DictReader(handle))
    for fold, run_id in enumerate(experiment.info["runs"], start=1):
        run_dir = root / run_id
        info = json.loads((run_dir / "run.json").read_text())
        for stage in ("frozen", "finetuned"):
            epoch = info["kept_epochs"][stage]["epoch"]
            predicted = _predict(run_dir / f"{stage}.keras", ("val", "test"), run_dir)
            recorded = _recorded(run_dir, stage)
            val_paths, val_scores = predicted["val"]
            for other, rows in recorded.items():
                assert [r["path"] for r in rows] == val_paths
                gap = np.abs(np.array([float(r[f"p_malignant_{stage}"]) for r in rows]) - val_scores).max()
                if other == epoch:
                    assert gap < 2e-4, (fold, stage, epoch, gap)
                else:
                    assert gap > 2e-4 or all(r == recorded[epoch][i] for i, r in enumerate(rows)), (fold, stage, other)
            test_paths, test_scores = predicted["test"]
            mine = {r["path"]: float(r[f"p_malignant_{stage}"]) for r in oof if int(r["fold"]) == fold}
            assert sorted(mine) == sorted(test_paths)
            np.testing.assert_allclose([mine[p] for p in test_paths], test_scores, atol=2e-6)
            stored_val = read_prediction_table(run_dir / "val_predictions.csv", stage)
            np.testing.assert_allclose(stored_val.p_malignant, val_scores, atol=2e-6)


def test_evaluating_the_experiment_again_chooses_the_same_epochs_without_the_weights(pooled_experiment, capsys):
    """The per-epoch weights are gone, yet the experiment evaluates again (as an interrupted one resumes, or the CLI's
    evaluate): the same choice, the same models, the same out-of-fold predictions."""
    root, exp_dir = pooled_experiment["root"], pooled_experiment["exp_dir"]
    experiment = crossval.load_experiment(exp_dir)
    before = {run_id: json.loads((root / run_id / "run.json").read_text())["kept_epochs"]
              for run_id in experiment.info["runs"]}
    models = {run_id: (root / run_id / "finetuned.keras").stat().st_mtime_ns for run_id in experiment.info["runs"]}
    oof = (ExperimentDir(exp_dir).oof_file).read_text()
    assert cli.main(["evaluate", exp_dir.name, "--runs", str(root), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["kept_epoch"] == experiment.metrics["kept_epoch"]
    for run_id in experiment.info["runs"]:
        assert json.loads((root / run_id / "run.json").read_text())["kept_epochs"] == before[run_id]
        assert (root / run_id / "finetuned.keras").stat().st_mtime_ns == models[run_id]
    assert (ExperimentDir(exp_dir).oof_file).read_text() == oof


def test_the_final_model_trains_the_epochs_chosen_on_all_folds(pooled_experiment):
    root, exp_dir = pooled_experiment["root"], pooled_experiment["exp_dir"]
    experiment = crossval.load_experiment(exp_dir)
    folds = crossval.read_folds(exp_dir)
    final = root / experiment.info["final_run"]
    config = json.loads((final / "config.json").read_text())
    info = json.loads((final / "run.json").read_text())
    expected = {stage: _oracle_epoch(experiment, folds, stage, None)[0] for stage in ("frozen", "finetuned")}
    assert (config["epochs_frozen"], config["epochs_finetune"]) == (expected["frozen"], expected["finetuned"])
    assert config["keep_epoch"] == "last" and info["kept_epoch"]["rule"].startswith("epochs chosen on pooled")
    for stage in ("frozen", "finetuned"):
        assert len(read_jsonl(final / f"history_{stage}.jsonl")) == expected[stage]
        assert info["kept_epoch"]["stages"][stage]["epoch"] == expected[stage]
    assert not (final / "epochs").exists()  # only the folds record epochs
    assert "epochs chosen on pooled inner validation" in (final / "card.md").read_text()


def test_choose_pooled_epoch_pools_the_other_folds_and_can_overrule_a_fold():
    """Fold 1's own validation patient prefers epoch 1, the pool (its and fold 2's, fold 1's test patient out)
    epoch 2; accuracy picks the highest; epochs some fold lacks are no candidates."""
    from breakhis_core.evaluation.metrics import LabelledScores

    folds = {"a": 1, "b": 2, "c": 2, "d": 1}

    def scores(patients, labels, p):
        return LabelledScores(np.array(labels), np.array(p, dtype=float), np.array(patients))

    fold1 = {1: scores(["b"], [1], [0.9]), 2: scores(["b"], [1], [0.8]), 3: scores(["b"], [1], [0.1])}
    fold2 = {1: scores(["c", "a"], [0, 1], [0.9, 0.9]), 2: scores(["c", "a"], [0, 1], [0.2, 0.1])}
    own = crossval.choose_pooled_epoch([fold1], folds, 1, "best_val_loss", "own")
    pooled = crossval.choose_pooled_epoch([fold1, fold2], folds, 1, "best_val_loss", "pool")
    assert own.epoch == 1 and pooled.epoch == 2 and set(pooled.candidates) == {1, 2}
    assert pooled.value == pytest.approx(-(np.log(0.8) + np.log(0.8)) / 2)  # a (fold 1's test patient) left out
    assert (pooled.n_images, pooled.n_patients) == (2, 2)
    accuracy = crossval.choose_pooled_epoch([fold1, fold2], folds, None, "best_val_accuracy", "all")
    assert accuracy.epoch == 1 and accuracy.value == pytest.approx(2 / 3)  # 1: b, a; 2: b, c right: tie, earliest


def test_an_experiment_without_per_epoch_records_keeps_each_folds_choice_and_says_so(sample_dir, tmp_path):
    """Experiments trained before the epochs were recorded: nothing is loaded or changed, the rule says why."""
    from breakhis_core.runs.rundir import RunDir

    config = tiny_config(sample_dir, split="cv", cv_folds=2)
    runs = []
    for fold in (1, 2):
        run = RunDir(tmp_path / f"fold{fold}")
        run.path.mkdir()
        run.write_info({"kept_epochs": {"frozen": {"epoch": fold, "epochs_run": 2}, "finetuned": {"epoch": 0}}})
        runs.append(run.path.name)
    experiment = crossval.Experiment("old", tmp_path / "old", {"n_folds": 2, "runs": runs, "config": config.to_dict()},
                                     "done")
    summary = crossval.keep_pooled_epochs(experiment, {})
    assert summary["rule"] == crossval.PER_FOLD_RULE and summary["stages"]["frozen"]["epochs"] == [1, 2]
    info = json.loads((tmp_path / "fold2" / "run.json").read_text())
    assert info["kept_epochs"]["frozen"]["epoch"] == 2 and info["kept_epoch"]["rule"] == crossval.PER_FOLD_RULE
    assert "recorded no per-epoch validation predictions" in info["kept_epoch"]["note"]
