"""breakhis_core.runs.registry: run folders built by hand in tmp_path, safe model loading, cards, import/export/delete."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import zipfile
from datetime import datetime, timedelta
from pathlib import Path

import keras
import numpy as np
import pytest

from breakhis_core.training import cleanup
from breakhis_core.config import STAGES, TrainConfig
from breakhis_core.errors import JobError, ModelFileError, RunNotFoundError
from breakhis_core.evaluation.metrics import compute_metrics
from breakhis_core.training.jobs import LOCK_FILE
from breakhis_core.training.cleanup import delete_run
from breakhis_core.runs.default_model import get_default, set_default
from breakhis_core.models.loading import load_model
from breakhis_core.runs.registry import (
    build_card,
    card_markdown,
    list_runs,
    load_run,
    model_id,
    parse_model_ref,
    resolve_model,
    runs_dir,
    write_card,
)
from breakhis_core.runs.rundir import process_alive
from breakhis_core.runs.transfer import export_run, import_model

NOW = datetime.now().astimezone()


def iso(minutes_ago: float) -> str:
    return (NOW - timedelta(minutes=minutes_ago)).isoformat(timespec="seconds")


def make_run(root: Path, run_id: str, minutes_ago: float, status: str = "done", stages=("frozen", "finetuned"),
             split: str = "patient", metrics: bool = True, **state) -> Path:
    """A run folder as train.py leaves it; model files are placeholders (only their existence matters)."""
    path = root / run_id
    path.mkdir(parents=True)
    TrainConfig(data="/data/BreaKHis_v1", split=split, magnification="40").save(path / "config.json")
    leaky = split == "image"
    (path / "run.json").write_text(json.dumps({
        "run_id": run_id,
        "created": iso(minutes_ago),
        "data": {"source": "/data/BreaKHis_v1", "kind": "breakhis-tree", "images": 12, "patients": 4, "images_used": 12,
                 "classes": {"benign": 6, "malignant": 6}, "rejected": [{"path": "x.png", "reason": "empty"}]},
        "split": {"protocol": split, "leaky": leaky, "group_by": "slide", "patients_in_several_splits": 3 if leaky else 0,
                  "counts": {"train": {"images": 8, "patients": 2, "benign": 4, "malignant": 4},
                             "val": {"images": 2, "patients": 1, "benign": 1, "malignant": 1},
                             "test": {"images": 2, "patients": 1, "benign": 1, "malignant": 1}}},
        "weights": {"source": "none", "detail": "random initialisation"},
        "versions": {"python": "3.12", "keras": keras.__version__},
        "device": "CPU (2 cores)",
    }))
    (path / "status.json").write_text(json.dumps({"status": status, "created": iso(minutes_ago), **state}))
    for stage in stages:
        (path / f"{stage}.keras").write_bytes(b"placeholder")
    if metrics:
        labels, patients = [0, 0, 1, 1], ["a", "a", "b", "c"]
        models = {
            "frozen": compute_metrics(labels, [0.2, 0.6, 0.7, 0.4], patients, n_bootstrap=0),  # 2/4 right
            "finetuned": compute_metrics(labels, [0.1, 0.2, 0.9, 0.4], patients, n_bootstrap=0),  # 3/4 right
        }
        (path / "metrics.json").write_text(json.dumps(
            {"protocol": split, "leaky": leaky, "split": "test", "models": {s: models[s] for s in stages}}))
    return path


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "runs"


@pytest.fixture(scope="session")
def model_file(tiny_model, tmp_path_factory) -> Path:
    """The tiny VGG16 classifier (with its CaffePreprocess layer) saved as .keras."""
    path = tmp_path_factory.mktemp("models") / "tiny.keras"
    tiny_model.save(path)
    return path


def small_model(path: Path, outputs: int = 2, lambda_layer: bool = False) -> Path:
    """A small (non-VGG) model saved as .keras: 32×32×3 → `outputs` softmax units."""
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Lambda(lambda t: t / 255.0)(inputs) if lambda_layer else inputs
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inputs, keras.layers.Dense(outputs, activation="softmax")(x)).save(path)
    return path


# ----------------------------------------------------------------------------- listing and loading


def test_runs_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("BREAKHIS_RUNS", raising=False)
    monkeypatch.setenv("BREAKHIS_HOME", str(tmp_path / "home"))
    assert runs_dir() == tmp_path / "home" / "runs"  # the app home's runs folder, never the current folder
    monkeypatch.setenv("BREAKHIS_RUNS", str(tmp_path))
    assert runs_dir() == tmp_path
    assert runs_dir(tmp_path / "x") == tmp_path / "x"


def test_list_runs_newest_first_skipping_non_runs(root):
    make_run(root, "20240101-000000-40x-patient", minutes_ago=30)
    make_run(root, "20240101-000100-40x-patient", minutes_ago=10)
    make_run(root, "20240101-000200-40x-image", minutes_ago=20, split="image")
    (root / "notes").mkdir()
    (root / ".import-abc").mkdir()
    (root / ".import-abc" / "run.json").write_text("{}")
    (root / "default.json").write_text("{}")
    assert [run.run_id for run in list_runs(root)] == [
        "20240101-000100-40x-patient", "20240101-000200-40x-image", "20240101-000000-40x-patient"]
    assert list_runs(root / "missing") == []


def test_load_run_fields(root):
    path = make_run(root, "r1", minutes_ago=5)
    run = load_run("r1", root)
    assert run.path == path and run.status == "done" and run.error is None
    assert run.config.magnification == "40" and run.info["run_id"] == "r1"
    assert set(run.models) == {"frozen", "finetuned"} and run.best_stage == "finetuned"
    assert run.metrics["protocol"] == "patient"
    assert load_run(path).run_id == "r1"  # by path, no root needed


def test_load_run_not_found(root):
    with pytest.raises(RunNotFoundError, match="Received: run=nope"):
        load_run("nope", root)
    (root / "empty").mkdir(parents=True)
    with pytest.raises(RunNotFoundError):
        load_run("empty", root)


def test_running_with_dead_pid_is_interrupted(root):
    make_run(root, "dead", 1, status="running", stages=(), metrics=False, pid=dead_pid(), started=iso(1))
    make_run(root, "alive", 2, status="running", stages=(), metrics=False, pid=os.getpid(), started=iso(0))
    make_run(root, "reused", 3, status="running", stages=(), metrics=False, pid=os.getpid(), started="2000-01-01T00:00:00+00:00")
    runs = {run.run_id: run for run in list_runs(root)}
    assert runs["dead"].status == "interrupted" and "resume" in runs["dead"].error
    assert runs["alive"].status == "running"
    assert runs["reused"].status == "interrupted"  # this pid belongs to a process started long after the run


def test_zombie_process_is_not_alive():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        for _ in range(200):  # until it has exited (a zombie: not yet waited for)
            if Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                break
            time.sleep(0.05)
        assert not process_alive(process.pid)
    finally:
        process.wait()
    assert not process_alive(None) and not process_alive(0)
    assert process_alive(os.getpid()) and process_alive(os.getpid(), "not a time")  # no start time: no reuse check


def test_broken_json_lists_as_broken(root):
    make_run(root, "good", 1)
    (make_run(root, "bad-status", 2) / "status.json").write_text("{not json")
    (make_run(root, "bad-config", 3) / "config.json").write_text(json.dumps({"epochs": 3}))
    runs = {run.run_id: run for run in list_runs(root)}
    assert runs["good"].status == "done"
    assert runs["bad-status"].status == "broken" and "status.json" in runs["bad-status"].error
    assert runs["bad-config"].status == "broken" and "config.json" in runs["bad-config"].error
    assert runs["bad-config"].headline()["status"] == "broken"


def test_headline(root):
    make_run(root, "r1", 5, split="image")
    make_run(root, "r2", 6, stages=("frozen",))
    make_run(root, "r3", 7, status="queued", stages=(), metrics=False)
    rows = [run.headline() for run in list_runs(root)]
    assert len({tuple(row) for row in rows}) == 1  # same keys for every run
    r1, r2, r3 = rows
    assert r1["split"] == "image" and r1["leaky"] is True and r1["model"] == "finetuned"
    assert r1["image_accuracy"] == 0.75 and r1["patient_recognition_rate"] == pytest.approx(2 / 3)
    assert r1["data"] == "BreaKHis_v1" and r1["magnification"] == "40" and r1["status"] == "done"
    assert r2["model"] == "frozen" and r2["image_accuracy"] == 0.5 and r2["leaky"] is False
    assert r3["model"] is None and r3["image_accuracy"] is None and r3["status"] == "queued"


# ----------------------------------------------------------------------------- models and the default


def test_model_refs(root):
    make_run(root, "r1", 1, stages=("frozen",))
    run = load_run("r1", root)
    assert model_id(run, "frozen") == "r1:frozen"
    assert parse_model_ref("r1:finetuned") == ("r1", "finetuned")
    assert parse_model_ref("r1") == ("r1", None)
    assert resolve_model("r1", root) == (run, "frozen")
    with pytest.raises(RunNotFoundError, match="no finetuned model"):
        resolve_model("r1:finetuned", root)


def test_default_model(root):
    assert get_default(root) is None
    make_run(root, "old", 30)
    make_run(root, "frozen-only", 20, stages=("frozen",))
    make_run(root, "training", 10, status="running", stages=("frozen",), pid=os.getpid(), started=iso(0))
    run, stage = get_default(root)
    assert (run.run_id, stage) == ("frozen-only", "frozen")  # newest *done* run, its best model
    set_default("old", "frozen", root)
    assert json.loads((root / "default.json").read_text()) == {"run_id": "old", "stage": "frozen"}
    run, stage = get_default(root)
    assert (run.run_id, stage) == ("old", "frozen")
    with pytest.raises(RunNotFoundError):
        set_default("missing", "finetuned", root)
    with pytest.raises(RunNotFoundError, match="Received: stage=best"):
        set_default("old", "best", root)
    (root / "old" / "frozen.keras").unlink()  # the named model is gone: fall back
    assert get_default(root)[0].run_id == "frozen-only"


def test_load_model_round_trip(model_file, tiny_model):
    model = load_model(model_file)
    assert model.get_layer("caffe_preprocess") is not None
    assert tuple(model.outputs[0].shape) == (None, 2)
    assert len(model.weights) == len(tiny_model.weights)


def test_load_model_refusals(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "missing.keras")
    with pytest.raises(ModelFileError, match=r"contains a Lambda layer \(arbitrary code\); refused in safe mode"):
        load_model(small_model(tmp_path / "lambda.keras", lambda_layer=True))
    with pytest.raises(ModelFileError, match=r"output must be 2 class probabilities.*\(None, 3\)"):
        load_model(small_model(tmp_path / "three.keras", outputs=3))
    data = small_model(tmp_path / "good.keras").read_bytes()
    (tmp_path / "truncated.keras").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated"):
        load_model(tmp_path / "truncated.keras")


# ----------------------------------------------------------------------------- cards


def test_card_names_protocol_and_leakage(root):
    card = build_card(load_run(make_run(root, "leaky", 1, split="image")))
    assert card["intended_use"] == "research decision support, not a diagnosis"
    assert card["split"]["protocol"] == "image" and card["split"]["leaky"] is True
    assert card["data"]["by_split"]["test"]["images"] == 2 and card["data"]["rejected_files"] == 1
    assert card["hyperparameters"]["lr_finetune"] == 1e-4 and "data" not in card["hyperparameters"]
    assert card["metrics"]["finetuned"]["protocol"] == "image" and card["metrics"]["finetuned"]["leaky"] is True
    assert card["models"] == {"frozen": "leaky:frozen", "finetuned": "leaky:finetuned"}
    text = card_markdown(card)
    assert "LEAKY" in text and "image-level split" in text and "Leaky: yes" in text
    assert "not a diagnosis" in text and "| image_accuracy | 0.500 | 0.750 |" in text
    patient = card_markdown(build_card(load_run(make_run(root, "clean", 2))))
    assert "patient-wise split" in patient and "Leaky: no" in patient and "LEAKY" not in patient


def test_write_card(root):
    run = load_run(make_run(root, "r1", 1))
    card = write_card(run)
    assert json.loads((run.path / "card.json").read_text())["run_id"] == card["run_id"] == "r1"
    assert (run.path / "card.md").read_text().startswith("# Model card: r1")


# ----------------------------------------------------------------------------- import, export, delete


def test_import_model(root, model_file):
    run = import_model(model_file, root, name="my model")
    assert run.run_id.endswith("-imported-my-model") and run.status == "done"
    assert run.config is None and run.metrics is None and run.imported
    assert set(run.models) == {"finetuned"}
    assert run.models["finetuned"].read_bytes() == model_file.read_bytes()
    imported = run.info["imported"]
    assert imported["source_file"] == "tiny.keras" and imported["input_size"] == 32 and len(imported["sha256"]) == 64
    assert [r.run_id for r in list_runs(root)] == [run.run_id]
    assert get_default(root) == (run, "finetuned")
    headline = run.headline()
    assert headline["data"] == "imported: tiny.keras" and headline["split"] is None and headline["leaky"] is None
    text = card_markdown(build_card(run))
    assert "Imported from `tiny.keras`" in text and "not a diagnosis" in text
    assert sorted(p.name for p in root.iterdir()) == [run.run_id]  # no staging folder left


@pytest.mark.parametrize("kind", ["lambda", "truncated", "three_outputs", "missing"])
def test_import_refuses_bad_files(root, tmp_path, kind):
    if kind == "lambda":
        path = small_model(tmp_path / "bad.keras", lambda_layer=True)
    elif kind == "three_outputs":
        path = small_model(tmp_path / "bad.keras", outputs=3)
    elif kind == "truncated":
        path = tmp_path / "bad.keras"
        path.write_bytes(small_model(tmp_path / "good.keras").read_bytes()[:1000])
    else:
        path = tmp_path / "bad.keras"
    with pytest.raises(ModelFileError, match="Received"):
        import_model(path, root)
    assert not root.exists() or not any(root.iterdir())


def test_export_run(root):
    path = make_run(root, "r1", 1)
    (path / "checkpoints").mkdir()
    (path / "checkpoints" / "frozen.keras").write_bytes(b"checkpoint")
    (path / ".status.json.123.tmp").write_text("partial")
    names = set(zipfile.ZipFile(io.BytesIO(export_run(load_run(path)))).namelist())
    assert names == {f"r1/{n}" for n in ("config.json", "run.json", "status.json", "metrics.json", "frozen.keras", "finetuned.keras")}


def test_delete_run(root):
    make_run(root, "keep", 2)
    make_run(root, "gone", 1)
    set_default("gone", "finetuned", root)
    delete_run("gone", root)
    assert not (root / "gone").exists() and not (root / "default.json").exists()
    assert [run.run_id for run in list_runs(root)] == ["keep"]
    set_default("keep", "finetuned", root)
    make_run(root, "other", 3)
    delete_run("other", root)
    assert (root / "default.json").exists()  # it named another run


def test_delete_refuses_running_and_unknown_runs(root, tmp_path):
    make_run(root, "training", 1, status="running", pid=os.getpid(), started=iso(0))
    with pytest.raises(JobError, match="Received: run=training"):
        delete_run("training", root)
    assert (root / "training").is_dir()
    make_run(tmp_path, "outside", 1)
    for bad in ("missing", "../outside", ".."):
        with pytest.raises(RunNotFoundError, match="Received"):
            delete_run(bad, root)
    assert (tmp_path / "outside").is_dir()
    make_run(root, "starting", 2, status="queued")  # launched, not yet running: the job lock names it
    (root / LOCK_FILE).write_text(json.dumps({"pid": os.getpid(), "run_id": "starting", "started": iso(0)}))
    with pytest.raises(JobError, match="Received: run=starting"):
        delete_run("starting", root)
    make_run(root, "stale", 2, status="running", pid=dead_pid(), started=iso(2))
    delete_run("stale", root)  # interrupted: may go


def _cache_part(folder: Path, key_char: str, size: int) -> Path:
    """A complete-looking cache part folder with ``size`` bytes of activations."""
    part = folder / (key_char * 24)
    part.mkdir(parents=True)
    (part / "activations.f16").write_bytes(b"\0" * size)
    (part / "meta.json").write_text("{}")
    return part


def _record_cache(run_path: Path, folder: Path, train: Path, val: Path) -> None:
    info = json.loads((run_path / "run.json").read_text())
    info["cache"] = {"folder": str(folder), "parts": {"train": train.name, "val": val.name}, "views": 8}
    (run_path / "run.json").write_text(json.dumps(info))


def test_delete_run_frees_the_cache_parts_only_it_used_and_clear_cache(root, monkeypatch):
    monkeypatch.delenv("BREAKHIS_CACHE", raising=False)
    folder = root / ".cache" / "activations"
    a, b, c = (_cache_part(folder, char, size) for char, size in (("a", 1000), ("b", 3000), ("c", 200)))
    (folder / "notes").mkdir()  # not a part folder: never deleted
    _record_cache(make_run(root, "r1", 3), folder, a, c)
    _record_cache(make_run(root, "r2", 2), folder, b, c)
    assert cleanup.cache_usage(root) == (folder, 3, 4200 + 3 * len("{}"))

    assert delete_run("r1", root) == 1000 + 2  # c is still used by r2
    assert not a.exists() and b.exists() and c.exists()

    make_run(root, "r3", 1, status="running", pid=os.getpid(), started=iso(0))
    with pytest.raises(JobError, match="training is running \\(run r3"):
        cleanup.clear_cache(root)
    assert delete_run("r2", root) == 0  # r3 trains and may read them: kept
    assert b.exists() and c.exists()

    (root / "r3" / "status.json").write_text(json.dumps({"status": "done"}))
    assert cleanup.clear_cache(root) == 3200 + 4
    assert cleanup.cache_usage(root) == (folder, 0, 0) and (folder / "notes").is_dir()


def test_run_is_read_from_the_documented_layout(root):
    """``runs/<run_id>/``: config.json, run.json and status.json make a run; metrics.json and <stage>.keras add to it."""
    path = make_run(root, "r1", minutes_ago=5, stages=(), metrics=False)
    run = load_run("r1", root)
    assert run.path == root / "r1" and run.models == {} and run.metrics is None and run.best_stage is None
    (path / "frozen.keras").write_bytes(b"placeholder")
    (path / "metrics.json").write_text(json.dumps({"protocol": "patient", "leaky": False, "split": "test", "models": {}}))
    run = load_run("r1", root)
    assert run.models == {"frozen": path / "frozen.keras"} and run.metrics["split"] == "test"
    (path / "status.json").write_text(json.dumps({"status": "failed", "error": "disk full"}))
    run = load_run("r1", root)
    assert (run.status, run.error) == ("failed", "disk full")


def test_the_card_and_the_active_model_follow_the_learning_check_old_records_included(root):
    """An undetermined model is not activated automatically; an older record (no "state") reads in today's words."""
    from breakhis_core.evaluation.learning_check import LEGACY_NOTE, OK, UNDETERMINED, check_learning

    older = make_run(root, "older", 3)
    info = json.loads((older / "run.json").read_text())
    info["learning_check"] = {"finetuned": {"ok": False, "reasons": ["test ROC AUC 0.000 <= 0.55 (chance level)"],
                                            "splits": {"test": {"split": "test", "n_images": 4, "roc_auc": 0.0,
                                                                "malignant_fraction": 0.5, "reasons": ["x"]}}},
                              "frozen": {"ok": True, "reasons": [], "splits": {}}}
    (older / "run.json").write_text(json.dumps(info))
    small = make_run(root, "small", 1)
    info = json.loads((small / "run.json").read_text())
    labels, scores, patients = np.array([0, 1, 0, 1]), np.array([0.2, 0.8, 0.3, 0.7]), np.array(["a", "b", "c", "d"])
    info["learning_check"] = {stage: check_learning({"val": (labels, scores, patients)}).to_dict() for stage in STAGES}
    (small / "run.json").write_text(json.dumps(info))

    run = load_run(small)
    assert run.learning("finetuned").state == UNDETERMINED and run.learned_stage is None
    assert get_default(root) == (load_run(older), "frozen")  # the newest run is undetermined; the older frozen learned
    text = card_markdown(build_card(load_run(older)))
    assert ("- Learning check, finetuned model: **did not learn** — test ROC AUC 0.000: ranks reversed, malignant "
            f"images score lower than benign ones; {LEGACY_NOTE}; it is never made the active model automatically") in text
    assert "chance level" not in text and load_run(older).learning("frozen").state == OK
    assert "- Learning check, frozen model: **undetermined** — too few validation patients (2 benign, 2 malignant" in \
        card_markdown(build_card(run))
    assert run.headline()["learning_check"] == "finetuned: undetermined; frozen: undetermined"
