"""Slide analysis as a background job with stored results, and the Slides page under AppTest."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from breakhis_core.runs import default_model
from breakhis_core.slides import jobs as slide_jobs
from breakhis_core.errors import JobError
from breakhis_core.slides.export import load_slide_outputs
from slides import build_slide

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 240


@pytest.fixture(scope="module")
def slide_env(tiny_run, breakhis_dir, tmp_path_factory):
    """A runs folder of its own (the tiny run active) and a data root with one slide in its slides folder."""
    root = tmp_path_factory.mktemp("slide_runs")
    (root / tiny_run.name).symlink_to(tiny_run, target_is_directory=True)
    default_model.set_default(tiny_run.name, "finetuned", root)
    data = tmp_path_factory.mktemp("slide_data")
    (data / slide_jobs.SLIDES_FOLDER).mkdir()
    built = build_slide(data / slide_jobs.SLIDES_FOLDER / "case-7.tiff", breakhis_dir, rows=1)
    return root, data, built


@pytest.fixture(scope="module")
def analysed(slide_env, tiny_run):
    root, _, built = slide_env
    model_ref = f"{tiny_run.name}:finetuned"
    folder = slide_jobs.start_job(built.path, model_ref, root)
    assert slide_jobs.current_job(root).folder == str(folder)
    with pytest.raises(JobError, match="already running"):
        slide_jobs.start_job(built.path, model_ref, root, magnification=100)
    deadline = time.monotonic() + 300
    while slide_jobs.job_state(folder).status in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(1)
    state = slide_jobs.job_state(folder)
    assert state.done, (state.status, state.error, (folder / "job.log").read_text()[-2000:])
    return folder, model_ref


def test_job_results_are_stored_and_reopen_at_once(analysed, slide_env):
    folder, model_ref = analysed
    root, _, built = slide_env
    saved = load_slide_outputs(folder)
    assert saved.summary["slide"]["name"] == "case-7.tiff" and saved.tiles
    assert saved.summary["tissue"]["tissue_tiles"] == len(saved.tiles)
    assert slide_jobs.job_state(folder).progress["done"] == len(saved.tiles)
    started = time.monotonic()
    assert slide_jobs.start_job(built.path, model_ref, root) == folder  # finished: no new job
    assert time.monotonic() - started < 2 and slide_jobs.current_job(root) is None
    assert [s.folder for s in slide_jobs.list_analyses(root)] == [folder]
    assert slide_jobs.find_slides([slide_env[1]]) == [built.path]


def test_interrupted_job_reads_interrupted(slide_env, tmp_path):
    folder = tmp_path / "gone"
    folder.mkdir()
    (folder / "status.json").write_text('{"status": "running", "pid": 999999999}')
    state = slide_jobs.job_state(folder)
    assert state.status == "interrupted" and "ended without finishing" in state.error


def test_slides_page_shows_the_analysis(analysed, slide_env, monkeypatch):
    root, data, _ = slide_env
    monkeypatch.setenv("BREAKHIS_RUNS", str(root))
    monkeypatch.setenv("BREAKHIS_DATA_ROOTS", str(data))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
    at.run()
    at.switch_page("pages/slides.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="slides_file").options == ["slides/case-7.tiff"]
    headers = [str(h.value) for h in at.subheader]
    assert any(h.startswith("case-7.tiff: ") for h in headers)
    assert any("most suspicious tiles" in h for h in headers)
    labels = {m.label for m in at.metric}
    assert {"Slide verdict", "Tiles above threshold"} <= labels
    assert any("Rule: mean P(malignant) of the" in str(c.value) for c in at.caption)
    assert any("Tissue analysed: 100% of the tissue area lies in predicted tiles" in str(c.value) for c in at.caption)
    captions = [c for image in at.get("image") for c in image.captions]
    assert any(c.startswith("P(malignant) per tissue tile") for c in captions)
    assert any(c.startswith("Tissue mask") for c in captions)
    assert sum(c.startswith("P(malignant) 0.") or c.startswith("P(malignant) 1.") for c in captions) >= 1  # gallery
    assert {b.label for b in at.get("download_button")} == {"tiles.csv", "tiles.geojson", "heatmap.png", "summary.json",
                                                            "report.html"}
    assert not at.get("error")
    at.button(key="slides_start").click().run()  # the same request again: the stored analysis, no new job
    assert not at.exception and at.session_state["slides_shown"] == str(analysed[0])
    assert slide_jobs.current_job(root) is None
    assert any(str(h.value).startswith("case-7.tiff: ") for h in at.subheader)


@pytest.fixture(scope="module")
def subtype_analysed(subtype_run, slide_env, tmp_path_factory):
    """The slide of :func:`slide_env` analysed by the tiny subtype run, the active model of a runs folder of its own."""
    _, data, built = slide_env
    root = tmp_path_factory.mktemp("subtype_slide_runs")
    (root / subtype_run.name).symlink_to(subtype_run, target_is_directory=True)
    default_model.set_default(subtype_run.name, "finetuned", root)
    folder = slide_jobs.start_job(built.path, f"{subtype_run.name}:finetuned", root)
    deadline = time.monotonic() + 300
    while slide_jobs.job_state(folder).status in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(1)
    state = slide_jobs.job_state(folder)
    assert state.done, (state.status, state.error, (folder / "job.log").read_text()[-2000:])
    return root, data, folder


def test_slides_page_shows_a_subtype_models_type_distribution(subtype_analysed, monkeypatch):
    from breakhis_core.task import SUBTYPE

    root, data, folder = subtype_analysed
    saved = load_slide_outputs(folder)
    assert saved.task is SUBTYPE and saved.verdict["verdict"] in ("benign", "malignant")
    monkeypatch.setenv("BREAKHIS_RUNS", str(root))
    monkeypatch.setenv("BREAKHIS_DATA_ROOTS", str(data))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
    at.run()
    at.switch_page("pages/slides.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("**Tumour types** over the" in str(m.value) for m in at.markdown)
    table = next(d.value for d in at.dataframe if "tiles (most probable type)" in d.value.columns)
    assert table["type"].tolist() == [SUBTYPE.class_label(i) for i in range(SUBTYPE.n_classes)]
    assert table["tiles (most probable type)"].tolist() == list(saved.types.top_tiles)
    assert sum(table["tiles (most probable type)"]) == saved.verdict["tissue_tiles"]
    captions = [c for image in at.get("image") for c in image.captions]
    assert any(c.startswith("P(malignant) ") and " · " in c for c in captions)  # a gallery tile with its top type
