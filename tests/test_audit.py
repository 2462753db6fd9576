"""breakhis_core.lab.audit: JSON lines per prediction and training event, never pixels or names."""

from __future__ import annotations

import json
import warnings

import pytest

from breakhis_core.lab import audit
from breakhis_core.cli import main
from breakhis_core.inference.predict import Predictor
from breakhis_core.files import sha256


@pytest.fixture(scope="module")
def model_runs(tiny_model, tmp_path_factory):
    """A runs folder whose active model is the tiny VGG16 (imported)."""
    from breakhis_core.runs.transfer import import_model

    root = tmp_path_factory.mktemp("audit_runs")
    tiny_model.save(root.parent / "tiny.keras")
    import_model(root.parent / "tiny.keras", root, name="tiny")
    return root


def test_log_location(monkeypatch, tmp_path):
    monkeypatch.delenv(audit.AUDIT_ENV, raising=False)
    assert audit.audit_path(tmp_path) == tmp_path / "audit.jsonl"
    monkeypatch.setenv(audit.AUDIT_ENV, str(tmp_path / "elsewhere.jsonl"))
    assert audit.audit_path(tmp_path) == tmp_path / "elsewhere.jsonl"


def test_prediction_records_hold_no_pixels_or_names(tiny_model, sample_files, tmp_path):
    from breakhis_core.data.images import decode_image

    data = [path.read_bytes() for path in sample_files[:2]]
    predictions = Predictor(tiny_model, "run:finetuned").predict([decode_image(d) for d in data],
                                                                 [p.name for p in sample_files[:2]], cam="gradcam")
    assert audit.record_predictions(predictions, [sha256(d) for d in data], "app", path=tmp_path / "a.jsonl")
    lines = (tmp_path / "a.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["image_sha256"] for r in records] == [sha256(d) for d in data]
    assert {r["model_id"] for r in records} == {"run:finetuned"} and {r["event"] for r in records} == {"prediction"}
    assert all(r["verdict"] in ("benign", "malignant") and 0 <= r["p_malignant"] <= 1 for r in records)
    assert all(len(line) < 400 and sample_files[0].name not in line for line in lines)
    with pytest.raises(ValueError, match="one digest per prediction"):
        audit.record_predictions(predictions, [], "app", path=tmp_path / "a.jsonl")


def test_training_record_and_unwritable_log(tmp_path):
    run_dir = tmp_path / "runs" / "20240101-000000-all-patient"
    assert audit.record_training(run_dir, "queued", pid=42, data="/data")
    (record,) = audit.read_audit(tmp_path / "runs" / "audit.jsonl")
    assert (record["event"], record["run_id"], record["status"], record["pid"]) == ("training", run_dir.name, "queued", 42)
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.warns(audit.AuditWarning, match="audit log not written"):
        assert audit.record_training(run_dir, "done", path=tmp_path / "dir.jsonl") is False


def test_cli_predict_logs_each_image(capsys, model_runs, sample_files, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"junk")
    before = len(audit.read_audit(model_runs / "audit.jsonl"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", audit.AuditWarning)
        code = main(["predict", str(sample_files[0]), str(sample_files[1]), str(bad), "--runs", str(model_runs),
                     "--cam", "none", "--json"])
    assert code == 0
    output = json.loads(capsys.readouterr().out)
    records = audit.read_audit(model_runs / "audit.jsonl")[before:]
    assert [r["image_sha256"] for r in records] == [sha256(p.read_bytes()) for p in sample_files[:2]]
    assert [r["verdict"] for r in records] == [p["verdict"] for p in output["predictions"]]
    assert {r["source"] for r in records} == {"cli"}
