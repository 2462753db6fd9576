"""breakhis_core.inference.service: one diagnosis path for the Diagnose page, Compare, the CLI and the fault tests."""

from __future__ import annotations

import ast
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from breakhis_core.data.images import encode_png
from breakhis_core.data.uploads import Skipped, Upload, decode_uploads
from breakhis_core.files import sha256
from breakhis_core.inference import service as svc
from breakhis_core.inference.predict import ModelRouter, Predictor
from breakhis_core.lab import audit

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["SOB_B_A-14-22549AB-40-001.png", "SOB_B_A-14-22549AB-100-027.png", "SOB_M_DC-14-2523-40-010.png"]


def _uploads(count: int) -> list[Upload]:
    rng = np.random.default_rng(0)
    return [Upload(name, f"batch.zip › {name}", encode_png(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)))
            for name in NAMES[:count]]


def test_refused_images_are_skipped_with_the_routers_reason_and_the_rest_audited(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(svc, "PASS_IMAGES", 1)
    router = ModelRouter({40: Predictor(tiny_model, "m40", 40)})
    service = svc.DiagnosisService(router, "test", runs_root=tmp_path, user="a@lab.example")
    inputs, undecodable = decode_uploads(_uploads(3) + [Upload("broken.png", "broken.png", b"not an image")])
    assert [item.label for item in undecodable] == ["broken.png"]
    progress, turns = [], []

    @contextmanager
    def turn():
        turns.append("in")
        yield

    diagnosis = service.diagnose(inputs, options=svc.DiagnosisOptions(cam="gradcam"),
                                 on_progress=lambda done, total: progress.append((done, total)), turn=turn)
    assert [item.name for item in diagnosis.inputs] == [NAMES[0], NAMES[2]]
    assert diagnosis.skipped == [Skipped(inputs[1].label, router.refusal(NAMES[1]))]
    assert [p.name for p in diagnosis.predictions] == [NAMES[0], NAMES[2]]
    assert all(p.heatmap is not None and p.model_id == "m40" for p in diagnosis.predictions)
    assert progress == [(1, 2), (2, 2)] and turns == ["in", "in"]  # one turn per pass
    lines = audit.read_audit(audit.audit_path(tmp_path))
    assert [line["image_sha256"] for line in lines] == [sha256(inputs[0].data), sha256(inputs[2].data)]
    assert {line["source"] for line in lines} == {"test"} and {line["user"] for line in lines} == {"a@lab.example"}


def test_a_given_magnification_wins_and_cases_regroup_without_predicting_again(tiny_model, tmp_path):
    router = ModelRouter({40: Predictor(tiny_model, "m40", 40)})
    service = svc.DiagnosisService(router, "test", runs_root=tmp_path)
    inputs, _ = decode_uploads(_uploads(3))
    assert service.refusals(inputs, [None, 40, None]) == [None, None, None]
    diagnosis = service.diagnose(inputs, [None, 40, None])
    assert len(diagnosis.predictions) == 3 and diagnosis.magnifications == [None, 40, None]
    by_slide = diagnosis.cases(by="slide")
    assert sorted(case.case_id for case in by_slide) == ["14-22549AB", "14-2523"]
    (whole,) = diagnosis.cases(by="upload", rule="majority")
    assert len(whole.predictions) == 3


def test_the_same_files_give_the_same_batch_digest():
    first, _ = decode_uploads(_uploads(2))
    again, _ = decode_uploads(_uploads(2))
    assert svc.batch_digest(first) == svc.batch_digest(again) != svc.batch_digest(first[:1])


def _calls(path: Path, attribute: str) -> int:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return sum(isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attribute
               for node in ast.walk(tree))


def test_the_diagnosis_surfaces_predict_and_audit_only_through_the_service():
    surfaces = [ROOT / "pages" / "diagnose.py", ROOT / "pages" / "compare.py", ROOT / "breakhis_core" / "cli.py",
                ROOT / "tests" / "faultcases.py"]
    for path in surfaces:
        assert _calls(path, "record_predictions") == 0, f"{path.name} writes audit lines itself"
        assert _calls(path, "DiagnosisService") + _calls(path, "diagnose") > 0, f"{path.name} does not use the service"
    assert _calls(ROOT / "breakhis_core" / "inference" / "service.py", "record_predictions") == 1
