"""End-to-end two-stage training on the real BreakHis sample (tiny config), resume and cancel."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from breakhis_core.errors import ConfigError, DatasetLayoutError, WeightsError
from breakhis_core.files import read_jsonl
from breakhis_core.models.classifier import trainable_layer_names
from breakhis_core.training.setup import prepare_run
from breakhis_core.runs.rundir import CANCEL_FILE
from breakhis_core.training.train import run_training
from conftest import tiny_config

METRICS = ("image_accuracy", "patient_recognition_rate", "patient_verdict_accuracy", "sensitivity", "specificity", "roc_auc")


def test_run_directory_is_complete(tiny_run):
    names = {p.name for p in tiny_run.iterdir()}
    for expected in ("config.json", "run.json", "status.json", "progress.json", "split.csv", "history_frozen.jsonl",
                     "history_finetuned.jsonl", "frozen.keras", "finetuned.keras", "test_predictions.csv",
                     "metrics.json", "val_predictions.csv", "calibration.json", "card.md", "card.json"):
        assert expected in names, expected
    assert "checkpoints" not in names, "checkpoints are removed once both models are saved"
    assert json.loads((tiny_run / "status.json").read_text())["status"] == "done"
    info = json.loads((tiny_run / "run.json").read_text())
    assert info["split"]["protocol"] == "patient" and info["split"]["leaky"] is False
    assert info["weights"]["source"] == "none" and info["device"].startswith("CPU")
    for stage in ("frozen", "finetuned"):
        (line,) = read_jsonl(tiny_run / f"history_{stage}.jsonl")
        assert {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds", "checkpoint_s"} <= set(line)
    lrs = [read_jsonl(tiny_run / f"history_{s}.jsonl")[0]["lr"] for s in ("frozen", "finetuned")]
    assert lrs == pytest.approx([1e-3, 1e-4])


def test_tensorboard_logs_per_stage(tiny_run):
    """Each stage writes TensorBoard event files with its epoch scalars (``tensorboard --logdir runs``)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for stage in ("frozen", "finetuned"):
        folder = tiny_run / "tensorboard" / stage / "train"
        assert list(folder.glob("events.out.tfevents.*")), folder
        events = EventAccumulator(str(folder))
        events.Reload()
        tags = set(events.Tags()["tensors"]) | set(events.Tags()["scalars"])
        assert {"epoch_loss", "epoch_accuracy"} <= tags, tags


def test_both_models_load_and_predict(tiny_run, sample_files):
    from breakhis_core.data.images import read_image, resize

    batch = np.stack([resize(read_image(p), 32) for p in sample_files[:3]]).astype(np.float32)
    outputs = {}
    for stage in ("frozen", "finetuned"):
        model = keras.saving.load_model(tiny_run / f"{stage}.keras", safe_mode=True)
        outputs[stage] = np.asarray(model(batch))
        assert outputs[stage].shape == (3, 2)
        np.testing.assert_allclose(outputs[stage].sum(axis=1), 1.0, atol=1e-5)
    kept = json.loads((tiny_run / "run.json").read_text())["kept_epochs"]["finetuned"]
    if kept["epoch"] == 0:  # no fine-tuning epoch beat stage 1 on validation: stage 2 deploys stage 1's weights
        np.testing.assert_array_equal(outputs["frozen"], outputs["finetuned"])
    else:
        assert not np.allclose(outputs["frozen"], outputs["finetuned"]), "stage 2 changed the model"
    finetuned = keras.saving.load_model(tiny_run / "finetuned.keras", safe_mode=True)
    assert trainable_layer_names(finetuned) == ["block5_conv1", "block5_conv2", "block5_conv3", "head_dense", "head_bn", "predictions"]
    frozen = keras.saving.load_model(tiny_run / "frozen.keras", safe_mode=True)
    assert trainable_layer_names(frozen) == ["head_dense", "head_bn", "predictions"]


def test_metrics_for_both_models(tiny_run):
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert metrics["protocol"] == "patient" and metrics["leaky"] is False and metrics["split"] == "test"
    for stage in ("frozen", "finetuned"):
        overall = metrics["models"][stage]["overall"]
        for name in METRICS:
            assert name in overall
        assert 0.0 <= overall["image_accuracy"]["value"] <= 1.0
        assert overall["n_images"] == sum(sum(row) for row in overall["confusion_matrix"])


def test_image_level_split_is_labelled_leaky(sample_dir, tmp_path):
    run_dir = prepare_run(tiny_config(sample_dir, split="image", epochs_finetune=0), tmp_path)
    assert run_training(run_dir) == "done"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["protocol"] == "image" and metrics["leaky"] is True


def test_resume_continues_from_last_epoch(sample_dir, tmp_path):
    run_dir = prepare_run(tiny_config(sample_dir, epochs_frozen=2), tmp_path)

    def crash_in_second_epoch(event):
        if event.get("stage") == "frozen" and event.get("epoch") == 2 and event.get("batch", 0) >= 1:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(run_dir, listener=crash_in_second_epoch)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "failed" and "simulated crash" in status["error"]
    assert not (run_dir / "frozen.keras").exists(), "no half-finished model may look complete"
    assert [r["epoch"] for r in read_jsonl(run_dir / "history_frozen.jsonl")] == [1]
    assert run_training(run_dir) == "done"
    assert [r["epoch"] for r in read_jsonl(run_dir / "history_frozen.jsonl")] == [1, 2]
    assert [r["epoch"] for r in read_jsonl(run_dir / "history_finetuned.jsonl")] == [1]


def test_cancel_keeps_completed_stage_and_resumes(sample_dir, tmp_path):
    run_dir = prepare_run(tiny_config(sample_dir), tmp_path)

    def cancel_in_stage_two(event):
        if event.get("stage") == "finetuned" and event.get("batch", 0) >= 1:
            (run_dir / CANCEL_FILE).touch()

    assert run_training(run_dir, listener=cancel_in_stage_two) == "cancelled"
    assert json.loads((run_dir / "status.json").read_text())["status"] == "cancelled"
    assert (run_dir / "frozen.keras").is_file() and not (run_dir / "finetuned.keras").exists()
    assert read_jsonl(run_dir / "history_finetuned.jsonl") == []
    assert run_training(run_dir) == "done"
    assert (run_dir / "finetuned.keras").is_file()


def test_bad_requests_fail_before_a_run_exists(sample_dir, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    with pytest.raises(WeightsError):
        prepare_run(tiny_config(sample_dir, weights="imagenet"), runs)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetLayoutError):
        prepare_run(tiny_config(empty), runs)
    with pytest.raises(ConfigError):
        prepare_run(tiny_config(sample_dir, magnification="50"), runs)
    assert not runs.exists() or not any(runs.iterdir())


def test_early_stopping_ends_a_stage_and_keeps_it_complete(sample_dir, tmp_path):
    run_dir = prepare_run(
        tiny_config(sample_dir, epochs_frozen=10, epochs_finetune=0, lr_frozen=0.5, augment=False, early_stopping_patience=1),
        tmp_path,
    )
    assert run_training(run_dir) == "done"
    epochs = [r["epoch"] for r in read_jsonl(run_dir / "history_frozen.jsonl")]
    assert 2 <= len(epochs) < 10, "with patience 1 a diverging stage stops long before 10 epochs"
    assert (run_dir / "frozen.keras").is_file()
