"""Each stage deploys its best-validation epoch (both training paths, across a resume), and on real IDC
patches with random initial weights the deployed fine-tuned model learned."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from breakhis_core.config import TrainConfig
from breakhis_core.data.splits import Split
from breakhis_core.data.arrays import load_arrays
from breakhis_core.files import read_jsonl
from breakhis_core.evaluation.learning_check import roc_auc
from breakhis_core.models.classifier import predict_probabilities
from breakhis_core.models.loading import load_model
from breakhis_core.training.setup import prepare_run
from breakhis_core.training.train import run_training
from conftest import tiny_config


def _val_split(run_dir):
    config = TrainConfig.load(run_dir / "config.json")
    split = Split.load_csv(run_dir / "split.csv", config.split, False, config.group_by)
    val = load_arrays(split.parts["val"], config.input_size)
    return val.images, val.labels


def _val_loss(model, images, labels) -> float:
    """Mean sparse categorical cross-entropy, as Keras reports val_loss (no class weights on validation)."""
    p = np.clip(predict_probabilities(model, images), 1e-7, 1 - 1e-7)
    return float(-np.log(p[np.arange(len(labels)), labels]).mean())


def _assert_best_epoch_deployed(run_dir, stage):
    """The deployed model is the candidate with the lowest val_loss: an epoch of the stage or, for stage 2, its
    starting point (epoch 0, stage 1's kept model, whose val_loss run.json records as "start_value")."""
    history = read_jsonl(run_dir / f"history_{stage}.jsonl")
    kept = json.loads((run_dir / "run.json").read_text())["kept_epochs"][stage]
    if stage == "finetuned":
        assert kept["start_value"] is not None
        history = [{"epoch": 0, "val_loss": kept["start_value"]}, *history]
    losses = [r["val_loss"] for r in history]
    best = int(np.argmin(losses))
    assert kept["epoch"] == history[best]["epoch"] and kept["epochs_run"] == history[-1]["epoch"]
    assert kept["metric"] == "val_loss" and kept["value"] == pytest.approx(losses[best])
    images, labels = _val_split(run_dir)
    deployed = _val_loss(load_model(run_dir / f"{stage}.keras"), images, labels)
    assert deployed == pytest.approx(losses[best], rel=2e-2, abs=2e-3), f"{stage}.keras is not epoch {kept['epoch']}: {losses}"
    if abs(losses[-1] - losses[best]) > 0.1:
        assert abs(deployed - losses[best]) < abs(deployed - losses[-1])
    return kept, losses


@pytest.mark.parametrize("cache", ["on", "off"])
def test_each_stage_deploys_its_lowest_val_loss_epoch(sample_dir, tmp_path, cache):
    config = tiny_config(sample_dir, epochs_frozen=3, epochs_finetune=2, lr_frozen=0.05, cache=cache, cache_views=2)
    run_dir = prepare_run(config, tmp_path)
    assert run_training(run_dir) == "done"
    info = json.loads((run_dir / "run.json").read_text())
    assert info["training_path"] == ("plain" if cache == "off" else "cached (2 views)")
    for stage in ("frozen", "finetuned"):
        _assert_best_epoch_deployed(run_dir, stage)
    assert not (run_dir / "epochs").exists() and "kept_epoch" not in info  # a single run chooses on its own split
    card = (run_dir / "card.md").read_text()
    assert "lowest val_loss" in card and "Recipe: paper" in card


def test_fine_tuning_that_does_not_improve_validation_keeps_stage_one(sample_dir, tmp_path):
    """Stage 2 at a learning rate that wrecks block5 never beats its starting point on validation: the deployed
    fine-tuned model is stage 1's (the same weights, the same validation loss), and run.json says why."""
    config = tiny_config(sample_dir, epochs_frozen=2, epochs_finetune=2, lr_finetune=5.0, augment=False)
    run_dir = prepare_run(config, tmp_path)
    assert run_training(run_dir) == "done"
    kept = json.loads((run_dir / "run.json").read_text())["kept_epochs"]["finetuned"]
    history = read_jsonl(run_dir / "history_finetuned.jsonl")
    assert all(r["val_loss"] > kept["start_value"] for r in history), history
    assert kept["epoch"] == 0 and "keeps its starting weights" in kept["reason"]
    frozen, finetuned = (load_model(run_dir / f"{stage}.keras") for stage in ("frozen", "finetuned"))
    for layer in ("block5_conv3", "head_dense", "predictions"):
        np.testing.assert_array_equal(frozen.get_layer(layer).get_weights()[0], finetuned.get_layer(layer).get_weights()[0])
    images, labels = _val_split(run_dir)
    assert _val_loss(finetuned, images, labels) == pytest.approx(kept["start_value"], rel=2e-2, abs=2e-3)


def test_a_resumed_stage_still_deploys_the_best_epoch(sample_dir, tmp_path):
    run_dir = prepare_run(tiny_config(sample_dir, epochs_frozen=4, epochs_finetune=0, lr_frozen=0.05), tmp_path)

    def crash_in_fourth_epoch(event):
        if event.get("stage") == "frozen" and event.get("epoch") == 4 and event.get("batch", 0) >= 1:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(run_dir, listener=crash_in_fourth_epoch)
    state = json.loads((run_dir / "checkpoints" / "state.json").read_text())
    assert state["epochs_done"] == 3 and (run_dir / "checkpoints" / state["best"]["file"]).is_file()
    assert run_training(run_dir) == "done"
    kept, losses = _assert_best_epoch_deployed(run_dir, "frozen")
    assert len(losses) == 4


def test_last_epoch_kept_on_request_and_without_validation(sample_dir, tmp_path):
    run_dir = prepare_run(tiny_config(sample_dir, epochs_frozen=2, epochs_finetune=0, keep_epoch="last"), tmp_path)
    assert run_training(run_dir) == "done"
    kept = json.loads((run_dir / "run.json").read_text())["kept_epochs"]["frozen"]
    assert kept["epoch"] == 2 and kept["reason"].startswith("keep_epoch=last")
    no_val = prepare_run(tiny_config(sample_dir, epochs_frozen=2, epochs_finetune=0, split="image",
                                     train_fraction=0.8, val_fraction=0.0, test_fraction=0.2), tmp_path)
    assert run_training(no_val) == "done"
    kept = json.loads((no_val / "run.json").read_text())["kept_epochs"]["frozen"]
    assert (kept["epoch"], kept["metric"]) == (2, None) and kept["reason"] == "no validation split: the last epoch is kept"


def test_random_init_on_idc_patches_learns(idc_dir, tmp_path):
    """Real IDC patches (12 patients × 20, 32 px; 60/20/20 % of patients), weights none, recipe auto (= scratch):
    the deployed models learned.

    Stage 2 gets 6 epochs: its first epochs change every base layer, and with 5 batches an epoch the head's
    BatchNorm moving statistics lag behind the features (validation loss jumps, then falls again); after 3
    epochs the kept model still called every test image benign with oneDNN's kernels, after 6 it does not
    with either kernel set."""
    with open(idc_dir / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    patients = sorted({r["patient"] for r in rows})[:12]
    manifest = tmp_path / "idc.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "patient"])
        for patient in patients:
            for label in ("benign", "malignant"):
                for r in [r for r in rows if r["patient"] == patient and r["label"] == label][:10]:
                    writer.writerow([str(idc_dir / r["path"]), r["label"], patient])
    config = tiny_config(manifest, recipe="auto", epochs_frozen=3, epochs_finetune=6, batch_size=16,
                         train_fraction=0.6, val_fraction=0.2, test_fraction=0.2)
    run_dir = prepare_run(config, tmp_path / "runs")
    assert run_training(run_dir) == "done"
    info = json.loads((run_dir / "run.json").read_text())
    assert TrainConfig.load(run_dir / "config.json").resolved_recipe == "scratch" and info["training_path"] == "plain"
    _assert_best_epoch_deployed(run_dir, "finetuned")
    with open(run_dir / "test_predictions.csv", newline="") as handle:
        p_test = np.array([float(r["p_malignant_finetuned"]) for r in csv.DictReader(handle)])
    assert 0 < (p_test >= 0.5).sum() < len(p_test), "the deployed fine-tuned model calls every test image one class"
    images, labels = _val_split(run_dir)
    auc = {stage: roc_auc(labels, predict_probabilities(load_model(run_dir / f"{stage}.keras"), images)[:, 1])
           for stage in ("frozen", "finetuned")}
    assert auc["finetuned"] >= auc["frozen"] - 0.05, auc
    assert info["learning_check"]["finetuned"]["splits"]["val"]["roc_auc"] == pytest.approx(auc["finetuned"], abs=1e-3)
