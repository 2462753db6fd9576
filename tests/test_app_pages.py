"""Every page under streamlit.testing.v1.AppTest: with no model, with a tiny trained model, and the
Diagnose, Compare, Train and Models workflows. Runs and data roots point at temporary folders."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
import zipfile
from datetime import datetime
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from breakhis_core.lab import audit
from breakhis_core.runs import default_model, registry
from breakhis_core.training import jobs
from breakhis_core.files import sha256

REPO = Path(__file__).resolve().parents[1]
PAGES = ("pages/home.py", "pages/diagnose.py", "pages/cases.py", "pages/slides.py", "pages/compare.py", "pages/train.py",
         "pages/models.py")
TIMEOUT = 240  # seconds per script run: the first run of a page loads TensorFlow and a model on 2 shared cores


def open_page(page: str) -> AppTest:
    """A fresh browser session (AppTest) on ``page``, after the first run of the app.

    AppTest runs a switched-to page in Streamlit's legacy ``pages/`` mode; ``ui.frame.require_frame``
    routes it through ``app.py``, so the sidebar and the notice are there as in the browser.
    """
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
    at.run()
    if page != PAGES[0]:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(at: AppTest, kind: str) -> list[str]:
    return [str(e.value) for e in at.get(kind)]


def joined(at: AppTest) -> str:
    """All markdown, captions, alerts and headings of the page as one string."""
    parts = []
    for kind in ("markdown", "caption", "info", "warning", "error", "success", "title", "header", "subheader"):
        parts += texts(at, kind)
    return "\n".join(parts)


@pytest.fixture
def empty_runs(monkeypatch, tmp_path, breakhis_dir) -> Path:
    """No model at all: an empty runs folder; the BreakHis images are the only data root."""
    root = tmp_path / "runs"
    monkeypatch.setenv("BREAKHIS_RUNS", str(root))
    monkeypatch.setenv("BREAKHIS_DATA_ROOTS", str(breakhis_dir))
    return root


@pytest.fixture
def model_runs(monkeypatch, tiny_runs_root, breakhis_dir) -> Path:
    """The tiny trained run as the active model."""
    monkeypatch.setenv("BREAKHIS_RUNS", str(tiny_runs_root))
    monkeypatch.setenv("BREAKHIS_DATA_ROOTS", str(breakhis_dir))
    return tiny_runs_root


def sample_upload(path: Path) -> tuple[str, bytes, str]:
    return path.name, path.read_bytes(), "image/png"


def pick(sample_files: list[Path], *magnifications: int) -> list[Path]:
    """One sample file of each magnification asked for."""
    return [next(p for p in sample_files if f"-{m}-" in p.name) for m in magnifications]


# ----------------------------------------------------------------------------- every page


@pytest.mark.parametrize("page", PAGES)
def test_page_without_model(empty_runs, page):
    at = open_page(page)
    text = joined(at)
    assert "research use" in text  # the notice on every page
    assert at.sidebar.selectbox(key="model_ref").options == ["Active model: none yet"]
    expected = {
        "pages/home.py": "There is no model yet",
        "pages/diagnose.py": "There is no model yet",
        "pages/cases.py": "No cases yet",
        "pages/slides.py": "There is no model yet",
        "pages/compare.py": "Comparing needs two models",
        "pages/train.py": "New training run",
        "pages/models.py": "No runs yet",
    }[page]
    assert expected in text
    assert "Traceback" not in text


@pytest.mark.parametrize("page", PAGES)
def test_page_with_model(model_runs, tiny_run, page):
    at = open_page(page)
    text = joined(at)
    assert "research use" in text
    assert at.sidebar.selectbox(key="model_ref").options[0] == f"Active model: {tiny_run.name}:finetuned"
    assert not at.get("error")
    if page == "pages/home.py":
        assert f"{tiny_run.name}:finetuned" in text
        assert {m.label for m in at.metric} >= {"Patient-level accuracy", "Image-level accuracy"}
    elif page == "pages/diagnose.py":
        assert at.file_uploader(key="diagnose_files")
        assert f"{tiny_run.name}:finetuned" in text
    elif page == "pages/slides.py":
        assert "No slide found" in text and "No slide analysed yet" in text
    elif page == "pages/compare.py":
        assert at.get("plotly_chart")  # metric bars, per magnification, confusion matrices, ROC, curves
        assert "Test split" in text
    elif page == "pages/train.py":
        assert tiny_run.name in text and "Training finished" in text
    elif page == "pages/models.py":
        assert tiny_run.name in at.dataframe[0].value["run"].tolist()
        assert "Model card" in text


# ----------------------------------------------------------------------------- Diagnose


def zip_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture
def downloads(monkeypatch) -> dict[str, bytes]:
    """File name → bytes of each download button given its data (not a callable) in the AppTest runs that follow."""
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
    from streamlit.testing.v1 import app_test

    stored: dict[str, bytes] = {}

    class Recording(MemoryMediaFileStorage):
        def load_and_get_id(self, path_or_data, mimetype, kind, filename=None):
            if filename is not None and isinstance(path_or_data, bytes):
                stored[filename] = path_or_data
            return super().load_and_get_id(path_or_data, mimetype, kind, filename)

    monkeypatch.setattr(app_test, "MemoryMediaFileStorage", Recording)
    return stored


def test_diagnose_verdicts_overlays_and_bad_files(model_runs, sample_files, downloads):
    at = open_page("pages/diagnose.py")
    good = pick(sample_files, 40, 100, 400)
    in_zip = pick(sample_files, 200)[0]
    archive = zip_of({f"case/{in_zip.name}": in_zip.read_bytes(), "../escape.png": b"x", "notes.txt": b"hello"})
    at.file_uploader(key="diagnose_files").set_value(
        [sample_upload(p) for p in good] + [("broken.png", b"not an image at all", "image/png"),
                                            ("batch.zip", archive, "application/zip")]
    ).run()
    assert not at.exception, [e.value for e in at.exception]
    text = joined(at)
    for path in [*good, in_zip]:  # a verdict per good image, the zip member included
        card = next(m for m in texts(at, "markdown") if path.name in m and "P(malignant)" in m)
        assert "benign" in card or "malignant" in card
    images = at.get("image")
    captions = [c for image in images for c in image.captions]
    assert captions.count("original") == 4
    assert captions.count("Grad-CAM: evidence for “malignant”") == 4  # the class a pathologist checks, whatever the verdict
    assert any(c.startswith("Heat-map colours: blue") for c in captions)  # the legend
    # bad files: listed with their reason, the good ones still shown
    assert "3 file(s) could not be used" in text
    assert "broken.png" in text and "not a PNG, JPEG, TIFF or BMP image" in text
    assert "escape.png" in text and "unsafe path" in text
    assert "notes.txt" in text and "not an image file" in text
    assert "Case verdict" in text
    buttons = {b.label: b for b in at.get("download_button")}
    assert set(buttons) == {"Download results (CSV)", "Download report (HTML)", "Download report (PDF)"}
    from breakhis_core.inference.report import pdf_unavailable

    assert buttons["Download report (PDF)"].disabled == (pdf_unavailable() is not None)
    # the results table is the CLI's prediction table: same columns, one row per image
    from breakhis_core.inference.outputs import PREDICTION_COLUMNS

    rows = list(csv.DictReader(io.StringIO(downloads["breakhis_predictions.csv"].decode())))
    assert tuple(rows[0]) == PREDICTION_COLUMNS
    shown = [p.name for p in good] + [f"batch.zip › case/{in_zip.name}"]  # a zip member by where it came from
    assert sorted(r["name"] for r in rows) == sorted(shown)
    assert {r["case"] for r in rows} == {p.parent.parent.name.split("_")[-1] for p in [*good, in_zip]}
    # grouped by magnification
    headings = texts(at, "subheader")
    assert [h.split(":")[0] for h in headings if "image(s)" in h] == ["40X", "100X", "200X", "400X"]
    # each image is in the audit log by its SHA-256, never by name
    logged = [r for r in audit.read_audit(audit.audit_path(model_runs)) if r.get("source") == "app"]
    digests = {sha256(p.read_bytes()) for p in [*good, in_zip]}
    assert digests <= {r["image_sha256"] for r in logged}
    assert not any(in_zip.name in json.dumps(r) for r in logged)

    # another heat-map method and opacity: still an overlay per image, no error
    at.selectbox(key="diagnose_method").set_value("gradcam++")
    at.slider(key="diagnose_alpha").set_value(0.7)
    at.run()
    assert not at.exception
    captions = [c for image in at.get("image") for c in image.captions]
    assert captions.count("Grad-CAM++: evidence for “malignant”") == 4


def test_diagnose_only_bad_files(model_runs):
    at = open_page("pages/diagnose.py")
    at.file_uploader(key="diagnose_files").set_value([("empty.png", b"", "image/png")]).run()
    assert not at.exception
    text = joined(at)
    assert "empty.png" in text and "empty file" in text
    assert not at.get("image")


def test_the_sample_images_from_home_and_on_diagnose(model_runs):
    from breakhis_core.data import samples

    at = open_page("pages/home.py")
    at.button(key="home_try_sample").click().run()  # Home's button opens Diagnose on the sample
    assert not at.exception, [e.value for e in at.exception]
    text = joined(at)
    assert "Showing the sample images shipped with the app" in text
    for relative in samples.BREAKHIS_IMAGES:  # a verdict per sample image
        name = Path(relative).name
        card = next(m for m in texts(at, "markdown") if name in m and "P(malignant)" in m)
        assert "benign" in card or "malignant" in card
    headings = texts(at, "subheader")
    assert [h.split(":")[0] for h in headings if "image(s)" in h] == ["40X", "100X", "200X", "400X"]
    # an upload replaces the sample
    first = samples.breakhis_sample() / samples.BREAKHIS_IMAGES[0]
    at.file_uploader(key="diagnose_files").set_value([sample_upload(first)]).run()
    assert not at.exception
    assert "Showing the sample images" not in joined(at)
    assert sum(first.name in m and "P(malignant)" in m for m in texts(at, "markdown")) == 1


def test_a_missing_sample_leaves_diagnose_working(model_runs, monkeypatch):
    from breakhis_core.data import samples

    at = open_page("pages/diagnose.py")
    monkeypatch.setattr(samples, "sample_root", lambda: Path("/nonexistent/samples"))
    at.button(key="diagnose_try_sample").click().run()
    assert not at.exception
    assert any("sample images are not installed" in e for e in texts(at, "error"))
    assert at.file_uploader(key="diagnose_files")


def test_an_app_home_that_cannot_be_written_stops_the_app_with_its_name(empty_runs, monkeypatch, tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    monkeypatch.setenv("BREAKHIS_HOME", str(tmp_path / "a_file" / "home"))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception
    (error,) = texts(at, "error")
    assert "The app cannot start" in error and "BREAKHIS_HOME" in error and str(tmp_path / "a_file" / "home") in error


@pytest.fixture
def mag40_runs(monkeypatch, tiny_run, breakhis_dir, tmp_path) -> Path:
    """The tiny run's models (linked) as a run trained, by its config.json, on 40X images only; the active model."""
    root = tmp_path / "runs"
    run = root / "mag40"
    shutil.copytree(tiny_run, run, copy_function=os.symlink, ignore=shutil.ignore_patterns("tensorboard", "checkpoints"))
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").unlink()
    (run / "config.json").write_text(json.dumps({**config, "magnification": "40"}))
    default_model.set_default("mag40", "finetuned", root)
    monkeypatch.setenv("BREAKHIS_RUNS", str(root))
    monkeypatch.setenv("BREAKHIS_DATA_ROOTS", str(breakhis_dir))
    return run


def test_diagnose_routes_each_image_by_magnification_as_the_cli_does(mag40_runs, sample_files, downloads, capsys):
    """A 40X model: the 40X image is analysed, the 100X one and an unknown magnification are refused, with the
    CLI's reasons; the analysed image gets the CLI's route and calibrated probability."""
    from breakhis_core.cli import main

    at = open_page("pages/diagnose.py")
    m40, m100 = pick(sample_files, 40, 100)
    unknown = ("capture.png", m100.read_bytes(), "image/png")
    at.file_uploader(key="diagnose_files").set_value([sample_upload(m40), sample_upload(m100), unknown]).run()
    assert not at.exception, [e.value for e in at.exception]
    text = joined(at)
    assert "2 image(s) cannot be analysed with model `mag40:finetuned`" in text
    page = next(m for m in texts(at, "markdown") if "cannot be analysed" not in m and m100.name in m and "capture.png" in m)
    assert "Received: magnification=100" in page and "Received: magnification=None" in page
    assert [h.split(":")[0] for h in texts(at, "subheader") if "image(s)" in h] == ["40X"]
    assert "- Route: 40X model mag40:finetuned" in text
    table = list(csv.DictReader(io.StringIO(downloads["breakhis_predictions.csv"].decode())))
    assert [row["name"] for row in table] == [m40.name]

    files = [m40, m100, mag40_runs.parent / "capture.png"]
    files[2].write_bytes(m100.read_bytes())
    capsys.readouterr()
    assert main(["predict", *map(str, files), "--model", str(mag40_runs), "--json", "--cam", "none"]) == 0
    result = json.loads(capsys.readouterr().out)
    refused = {error["file"]: error["reason"] for error in result["errors"]}
    assert sorted(refused) == sorted([m100.name, "capture.png"])
    assert all(reason.split(": ", 1)[1] in page for reason in refused.values())  # the page's reasons are the CLI's
    (cli_row,) = result["predictions"]
    assert cli_row["route"] == table[0]["route"] == "40X model mag40:finetuned"
    assert float(table[0]["p_malignant"]) == pytest.approx(cli_row["p_malignant"], abs=1e-4)


# ----------------------------------------------------------------------------- Compare


def test_diagnose_predicts_again_when_the_run_is_recalibrated(mag40_runs, sample_files, downloads):
    at = open_page("pages/diagnose.py")
    at.file_uploader(key="diagnose_files").set_value([sample_upload(p) for p in pick(sample_files, 40)]).run()
    assert not at.exception, [e.value for e in at.exception]
    before = next(csv.DictReader(io.StringIO(downloads["breakhis_predictions.csv"].decode())))
    calibration_file = mag40_runs / "calibration.json"
    calibration = json.loads(calibration_file.read_text())
    calibration["stages"]["finetuned"]["threshold"] = 0.123
    calibration_file.unlink()  # a link to the shared run: replaced by the refitted file, one second newer
    calibration_file.write_text(json.dumps(calibration))
    later = calibration_file.stat().st_mtime + 1
    os.utime(calibration_file, (later, later))
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    after = next(csv.DictReader(io.StringIO(downloads["breakhis_predictions.csv"].decode())))
    assert float(before["threshold"]) != 0.123 and float(after["threshold"]) == 0.123


def test_compare_on_uploaded_images(model_runs, sample_files, tiny_run):
    at = open_page("pages/compare.py")
    assert at.selectbox(key="compare_run").value == tiny_run.name
    at.file_uploader(key="compare_files").set_value([sample_upload(p) for p in pick(sample_files, 40, 200)]).run()
    assert not at.exception, [e.value for e in at.exception]
    captions = [c for image in at.get("image") for c in image.captions]
    assert sum(c.startswith("frozen (stage 1):") for c in captions) == 2
    assert sum(c.startswith("fine-tuned (stage 2):") for c in captions) == 2
    assert "agree on" in joined(at)
    assert {b.label for b in at.get("download_button")} == {"Download comparison (HTML)", "Download comparison (PDF)"}


# ----------------------------------------------------------------------------- Train


def set_tiny_form(at: AppTest) -> None:
    """Fill the Train form with a configuration that trains in seconds (32 px, 1 epoch per stage, no weights)."""
    at.selectbox(key="train_weights").set_value("none")
    at.selectbox(key="train_device").set_value("cpu")
    for key, value in (("train_input_size", 32), ("train_epochs_frozen", 1), ("train_epochs_finetune", 1), ("train_batch", 8),
                       ("train_cache_views", 2)):
        at.number_input(key=key).set_value(value)


def click_start(at: AppTest) -> None:
    next(b for b in at.button if b.label == "Start training").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]


def test_train_starts_refuses_a_second_job_and_shows_it_done(empty_runs, sample_dir):
    at = open_page("pages/train.py")
    assert at.selectbox(key="train_data").value == str(sample_dir.resolve())
    set_tiny_form(at)
    click_start(at)
    job = jobs.current_job(empty_runs)
    assert job is not None and job.run_dir, "no job started"
    run_dir = Path(job.run_dir)
    try:
        assert json.loads((run_dir / "config.json").read_text())["cache_views"] == 2
        assert "Training job" in texts(at, "subheader")
        # A second browser session is told what is running and starts nothing.
        other = open_page("pages/train.py")
        set_tiny_form(other)
        click_start(other)
        refusal = " ".join(texts(other, "warning"))
        assert "already running" in refusal and run_dir.name in refusal
        assert len(registry.list_runs(empty_runs)) == 1

        deadline = time.monotonic() + 300
        status = None
        while time.monotonic() < deadline:
            status = jobs.job_state(run_dir).status
            if status not in ("queued", "running"):
                break
            time.sleep(1)
        log = (run_dir / "train.log").read_text(errors="replace") if (run_dir / "train.log").exists() else ""
        assert status == "done", f"status {status}; log tail:\n{log[-3000:]}"
    finally:
        if jobs.current_job(empty_runs):
            jobs.cancel_job(run_dir)
    at.run()
    assert not at.exception
    assert "Training finished" in joined(at)
    state = jobs.job_state(run_dir)
    assert state.estimate is not None and state.timings["total_s"] > 0
    assert f"Estimated before training: {state.estimate.describe()}" in joined(at)
    assert "Measured so far: cache " in joined(at) and " total " in joined(at)
    models = open_page("pages/models.py")
    assert run_dir.name in models.dataframe[0].value["run"].tolist()


def _fake_running_job(runs_root, monkeypatch, progress: dict) -> Path:
    """A running job's state on disk (this process as its pid) with ``progress`` as its progress.json."""
    run_dir = runs_root / "20250101-000000-all-patient"
    run_dir.mkdir(parents=True)
    started = datetime.now().astimezone().isoformat(timespec="seconds")  # after this process started: not a reused pid
    (run_dir / "status.json").write_text(json.dumps({"status": "running", "pid": os.getpid(), "started": started}))
    (run_dir / "progress.json").write_text(json.dumps(progress))
    record = jobs.JobLock(os.getpid(), run_dir.name, str(run_dir), started)
    monkeypatch.setattr(jobs, "current_job", lambda root: record)
    return run_dir


def test_train_cancel_button(empty_runs, monkeypatch, tmp_path):
    """A running job (its state faked on disk) shows progress and can be cancelled."""
    run_dir = _fake_running_job(empty_runs, monkeypatch, {
        "stage": "frozen", "epoch": 2, "epochs": 3, "batch": 4, "batches": 8, "epochs_done": 1, "total_epochs": 5,
        "elapsed_s": 75, "eta_s": 300, "message": "frozen: epoch 2/3, batch 4/8"})
    (run_dir / "history_frozen.jsonl").write_text('{"epoch": 1, "loss": 0.7, "accuracy": 0.6, "val_loss": 0.69, "val_accuracy": 0.55}\n')
    at = open_page("pages/train.py")
    assert "Training job" in texts(at, "subheader")
    assert {m.label: m.value for m in at.metric}["Time left (estimate)"] == "5 min 00 s"
    assert at.get("plotly_chart")
    at.button(key="cancel_job").click().run()
    assert not at.exception
    assert (run_dir / "cancel").exists()
    assert "Cancelling" in joined(at)


def test_train_shows_the_cache_build_as_its_own_progress(empty_runs, monkeypatch):
    """While the cached path builds its activation cache (no epoch done yet) the bar follows the cache batches."""
    _fake_running_job(empty_runs, monkeypatch, {
        "stage": "caching", "epoch": 0, "epochs": 0, "batch": 3, "batches": 12, "epochs_done": 0, "total_epochs": 45,
        "elapsed_s": 40, "eta_s": 120, "message": "caching block4_pool activations (1.2 GB): train batch 3/12"})
    at = open_page("pages/train.py")
    assert not at.exception
    (bar,) = at.get("progress")
    assert bar.proto.value == 25
    assert "computing the frozen layers' activations once" in bar.proto.text and "batch 3 of 12" in bar.proto.text
    assert "train batch 3/12" in joined(at)


def test_train_refuses_data_outside_the_roots(empty_runs, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    at = open_page("pages/train.py")
    set_tiny_form(at)
    at.text_input(key="train_other").set_value(str(outside))
    click_start(at)
    assert any("only data inside the data folders" in e for e in texts(at, "error"))
    assert jobs.current_job(empty_runs) is None


# ----------------------------------------------------------------------------- Models


@pytest.fixture(scope="module")
def tiny_keras_bytes(tiny_model, tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("keras") / "tiny.keras"
    tiny_model.save(path)
    return path.read_bytes()


def test_models_import_activate_delete(empty_runs, tiny_keras_bytes):
    at = open_page("pages/models.py")
    at.file_uploader(key="models_import_file").set_value(("junk.keras", b"not a model", "application/octet-stream")).run()
    at.button(key="models_import").click().run()
    assert not at.exception
    assert any("not a .keras model" in e for e in texts(at, "error"))
    assert registry.list_runs(empty_runs) == []

    ids = []
    for name in ("first", "second"):
        at.file_uploader(key="models_import_file").set_value(("tiny.keras", tiny_keras_bytes, "application/octet-stream"))
        at.text_input(key="models_import_name").set_value(name)
        at.run()
        at.button(key="models_import").click().run()
        assert not at.exception, [e.value for e in at.exception]
        ids.append(registry.list_runs(empty_runs)[0].run_id)
        time.sleep(1.1)  # run ids carry the second
    assert any("Imported as" in s for s in texts(at, "success"))
    assert sorted(at.dataframe[0].value["run"].tolist()) == sorted(ids)

    at.selectbox(key="models_selected").set_value(ids[0]).run()
    at.button(key="models_set_active").click().run()
    assert not at.exception
    assert default_model.get_default(empty_runs)[0].run_id == ids[0]
    assert f"`{ids[0]}:finetuned` is now the active model." in texts(at, "success")

    at.selectbox(key="models_selected").set_value(ids[1]).run()
    assert at.button(key="models_delete").disabled
    at.checkbox(key=f"models_confirm_{ids[1]}").check().run()
    at.button(key="models_delete").click().run()
    assert not at.exception
    assert [r.run_id for r in registry.list_runs(empty_runs)] == [ids[0]]


def test_train_resume_button_for_an_interrupted_run(empty_runs, monkeypatch):
    """A run whose process died shows "interrupted" and a Resume button that calls jobs.resume_job."""
    run_dir = empty_runs / "20250101-000000-all-patient"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"data": "x"}))
    (run_dir / "status.json").write_text(json.dumps({"status": "running", "pid": 2**22 + 12345, "started": "2025-01-01T00:00:00+00:00"}))
    (run_dir / "history_frozen.jsonl").write_text('{"epoch": 1, "loss": 0.7, "accuracy": 0.6, "val_loss": 0.69, "val_accuracy": 0.55}\n')
    resumed = []
    monkeypatch.setattr(jobs, "resume_job", lambda path, root, user=None: resumed.append((Path(path), Path(root), user)))
    at = open_page("pages/train.py")
    assert "stopped unexpectedly" in joined(at)
    at.button(key="resume_job").click().run()
    assert not at.exception
    assert resumed == [(run_dir, empty_runs, None)]  # no sign-in here: no user


def test_models_shows_and_deletes_the_activation_cache(empty_runs, monkeypatch):
    monkeypatch.delenv("BREAKHIS_CACHE", raising=False)
    part = empty_runs / ".cache" / "activations" / ("ab" * 12)
    part.mkdir(parents=True)
    (part / "activations.f16").write_bytes(b"\0" * (2 << 20))
    record = jobs.JobLock(os.getpid(), "20250101-000000-all-patient", started="2025-01-01T00:00:00+00:00")
    monkeypatch.setattr(jobs, "current_job", lambda root: record)
    at = open_page("pages/models.py")
    assert "Activation cache: 2.0 MiB on disk" in [e.label for e in at.expander]
    at.button(key="models_clear_cache").click().run()
    assert any("training is running" in e for e in texts(at, "error")) and part.exists()

    monkeypatch.setattr(jobs, "current_job", lambda root: None)
    at.button(key="models_clear_cache").click().run()
    assert not at.exception
    assert "Activation cache deleted: 2.0 MiB freed." in texts(at, "success")
    assert not part.exists() and not [e for e in at.expander if "Activation cache" in e.label]


# ----------------------------------------------------------------------------- cross-validation


@pytest.fixture
def experiment_runs(monkeypatch, tiny_experiment, tmp_path, sample_dir) -> Path:
    """A copy of the finished 2-fold experiment's runs folder."""
    root = tmp_path / "runs"
    shutil.copytree(tiny_experiment["root"], root)
    monkeypatch.setenv("BREAKHIS_RUNS", str(root))
    monkeypatch.setenv("BREAKHIS_DATA_ROOTS", str(sample_dir))
    return root


def test_models_lists_the_experiment_as_one_row_and_deploys_a_fold(experiment_runs, tiny_experiment):
    from breakhis_core.training import crossval

    experiment = crossval.load_experiment(tiny_experiment["exp_dir"].name, experiment_runs)
    at = open_page("pages/models.py")
    assert "Cross-validation experiments" in joined(at)
    assert at.dataframe[1].value["experiment"].tolist() == [experiment.experiment_id]
    assert experiment.experiment_id not in at.dataframe[0].value["run"].tolist()
    fold1 = experiment.info["runs"][0]
    at.selectbox(key=f"models_deploy_{experiment.experiment_id}").set_value(f"{fold1}:finetuned").run()
    learning = registry.load_run(fold1, experiment_runs).learning("finetuned")
    assert next(b for b in at.button if b.label == "Deploy").disabled == learning.needs_confirmation
    if learning.needs_confirmation:  # a tiny fold model: deploying it takes a ticked confirmation naming its state
        assert any(learning.warning(f"{fold1}:finetuned") == w for w in texts(at, "warning"))
        at.checkbox(key=f"models_confirm_deploy_{fold1}:finetuned").check().run()
    next(b for b in at.button if b.label == "Deploy").click().run()
    assert not at.exception and f"`{fold1}:finetuned` (fold 1 of 2) is now the active model" in "\n".join(texts(at, "success"))
    assert default_model.get_default(experiment_runs)[0].run_id == fold1
    assert crossval.load_experiment(experiment.path).deployed["run_id"] == fold1


def test_compare_shows_the_cross_validation_view_and_calibration(experiment_runs):
    at = open_page("pages/compare.py")
    at.toggle(key="compare_cv_mode").set_value(True).run()
    assert not at.exception, [e.value for e in at.exception]
    text = joined(at)
    assert "Pooled out-of-fold" in text and "each predicted once" in text and "Operating point" in text
    assert len(at.get("plotly_chart")) == 1  # the reliability diagram
    at.toggle(key="compare_cv_mode").set_value(False).run()
    assert not at.exception
    assert len(at.get("plotly_chart")) >= 2  # the two models' view, its Calibration tab included


def test_train_shows_a_finished_experiment_fold_by_fold(experiment_runs, tiny_experiment):
    at = open_page("pages/train.py")
    at.session_state["train_run"] = str(experiment_runs / tiny_experiment["exp_dir"].name)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    text = joined(at)
    assert "Cross-validation experiment" in text and "Cross-validation finished" in text
    assert "fold 1 of 2" in text and "fold 2 of 2" in text and "Pooled out-of-fold" in text
    assert "Cross-validate (K folds, by patient)" in at.selectbox(key="train_split").options
    assert "Learning check of each fold's models: fold 1 of 2: finetuned " in text


def test_train_latest_run_after_an_experiment_is_the_experiment(experiment_runs, tiny_experiment):
    """A new session (no run of its own): the newest run is a fold, so the pooled result shows, with no activate button."""
    at = open_page("pages/train.py")
    text = joined(at)
    assert f"Cross-validation experiment `{tiny_experiment['exp_dir'].name}`" in text and "Pooled out-of-fold" in text
    assert not [b for b in at.button if b.key == "use_new_model"]


def test_train_form_offers_the_values_the_config_allows(empty_runs):
    """Each selectbox of the Train form offers exactly TrainConfig's allowed values, its default preselected."""
    from breakhis_core import config

    at = open_page("pages/train.py")
    defaults = config.TrainConfig()
    for key, field, allowed in (
            ("train_mag", "magnification", config.MAGNIFICATION_CHOICES), ("train_split", "split", config.SPLIT_PROTOCOLS),
            ("train_recipe", "recipe", config.RECIPES), ("train_keep_epoch", "keep_epoch", config.KEEP_EPOCH_CHOICES),
            ("train_group_by", "group_by", config.GROUPINGS), ("train_stain", "stain_norm", config.STAIN_METHODS),
            ("train_cache", "cache", config.CACHE_MODES), ("train_threshold_rule", "threshold_rule", config.THRESHOLD_RULES),
            ("train_mixed", "mixed_precision", config.MIXED_PRECISION_MODES),
            ("train_backbone", "backbone", config.BACKBONE_NAMES)):
        box = at.selectbox(key=key)
        assert len(box.options) == len(allowed) and box.value == getattr(defaults, field), key
    assert at.selectbox(key="train_stain").options == list(config.STAIN_METHODS)
    assert at.selectbox(key="train_weights").value == defaults.weights
    assert at.number_input(key="train_unfreeze").max == 5  # VGG16's blocks
    at.selectbox(key="train_backbone").set_value("efficientnetv2b0").run()
    assert at.number_input(key="train_unfreeze").max == 8  # stem, block1-6, top


def test_a_viewer_sees_no_link_to_pages_they_may_not_open(empty_runs, monkeypatch):
    from ui import signin

    def trainer_links(at: AppTest) -> list[str]:
        return [link.proto.page for link in at.get("page_link") if link.proto.page in ("train", "models")]

    assert trainer_links(open_page("pages/home.py"))  # the local user (a trainer) gets them
    monkeypatch.setattr(signin, "current_role", lambda: "viewer")
    for page in ("pages/home.py", "pages/diagnose.py", "pages/compare.py"):
        at = open_page(page)  # a link to an unlisted page would raise (Streamlit cannot find it)
        assert not at.exception, [e.value for e in at.exception]
        assert not trainer_links(at)
    assert "Training and importing need the trainer role" in joined(open_page("pages/home.py"))


def test_train_form_widgets_follow_the_config_metadata(empty_runs, monkeypatch):
    """The Train form's number inputs take their label, bounds, step and default from TrainConfig's metadata: a bound
    changed there is the widget's bound."""
    from breakhis_core.config import Bounds, config_field

    at = open_page("pages/train.py")
    batch = at.number_input(key="train_batch")
    assert batch.label == config_field("batch_size").metadata["label"] and batch.value == config_field("batch_size").default
    assert at.number_input(key="train_dropout").proto.max == 1 and at.number_input(key="train_dropout").proto.step == 0.05
    field = config_field("batch_size")
    monkeypatch.setattr(field, "metadata", {**field.metadata, "bounds": Bounds(2, 64, step=2)})
    at = open_page("pages/train.py")
    batch = at.number_input(key="train_batch")
    assert (batch.proto.min, batch.proto.max, batch.proto.step) == (2, 64, 2)


# ----------------------------------------------------------------------------- the subtype task on Models and Compare


@pytest.fixture
def subtype_runs(monkeypatch, subtype_run, tiny_run, tmp_path, sample_dir) -> Path:
    """A runs folder holding the tiny subtype run (active) and the tiny malignancy run, both linked."""
    root = tmp_path / "runs"
    root.mkdir()
    for run in (subtype_run, tiny_run):
        (root / run.name).symlink_to(run, target_is_directory=True)
    default_model.set_default(subtype_run.name, "finetuned", root)
    monkeypatch.setenv("BREAKHIS_RUNS", str(root))
    monkeypatch.setenv("BREAKHIS_DATA_ROOTS", str(sample_dir))
    return root


def test_models_shows_each_runs_task_and_the_subtype_cards_type_section(subtype_runs, subtype_run, tiny_run):
    at = open_page("pages/models.py")
    table = at.dataframe[0].value
    tasks = dict(zip(table["run"], table["task"]))
    assert tasks == {subtype_run.name: "subtype", tiny_run.name: "malignancy"}
    assert at.selectbox(key="models_selected").value == subtype_run.name
    text = joined(at)
    assert "#### Tumour types" in text and "| balanced_accuracy |" in text and "| DC |" in text
    at.selectbox(key="models_selected").set_value(tiny_run.name).run()
    assert not at.exception and "Tumour types" not in joined(at)


def test_compare_shows_type_metrics_for_two_subtype_models_else_says_the_binary_ones_compare(subtype_runs, subtype_run,
                                                                                         tiny_run):
    from breakhis_core.config import STAGE_LABELS, STAGES

    metrics = json.loads((subtype_run / "metrics.json").read_text())["classes"]
    at = open_page("pages/compare.py")
    assert at.selectbox(key="compare_run").value == subtype_run.name  # both stages of the active run
    assert "**Tumour types**" in joined(at)
    table = next(d.value for d in at.dataframe if "Balanced accuracy (tumour types)" in d.value.index)
    assert list(table.columns) == [STAGE_LABELS[stage] for stage in STAGES]
    for stage in STAGES:
        value = metrics[stage]["macro_auc"]["value"]
        expected = "n/a" if value is None else f"{100 * value:.1f} %"
        assert table.loc["Macro one-vs-rest AUC (tumour types)", STAGE_LABELS[stage]].startswith(expected)
    assert "The binary (benign/malignant) metrics are compared" not in joined(at)
    at.segmented_control(key="compare_mode").set_value("any").run()
    at.selectbox(key="compare_a").set_value(f"{subtype_run.name}:finetuned").run()
    at.selectbox(key="compare_b").set_value(f"{tiny_run.name}:finetuned").run()
    assert not at.exception, [e.value for e in at.exception]
    text = joined(at)
    assert "The binary (benign/malignant) metrics are compared" in text and "**Tumour types**" not in text
    assert f"{subtype_run.name}:finetuned: subtype" in text and f"{tiny_run.name}:finetuned: malignancy" in text
