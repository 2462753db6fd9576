"""The whole-slide viewer: Deep Zoom tiles made by OpenSlide (``breakhis_core.slides.viewer``), and the Slides page's
OpenSeadragon viewer in a real browser (Debian's chromium through Playwright): zoom and pan change the view, the
overlays switch on and off, a click on a tile shows its Grad-CAM, and a slide that cannot be read is said so.

The browser test skips, with the reason, where chromium or playwright is missing (``.ci/run`` installs chromium).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from breakhis_core.runs import default_model
from breakhis_core.slides import jobs as slide_jobs
from breakhis_core.errors import BreakHisError
from breakhis_core.slides.viewer import MAX_SIDE, OVERLAP, TILE_SIZE, mask_overlay, viewer_pyramid
from breakhis_core.slides.wsi import open_slide
from servers import free_port, stop, wait_for
from slides import build_slide, write_bad_slides

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(breakhis_dir, tmp_path_factory):
    return build_slide(tmp_path_factory.mktemp("viewer_slide") / "viewer.tiff", breakhis_dir, rows=1)


def test_the_pyramid_holds_every_deep_zoom_tile_up_to_the_viewer_size(built):
    pyramid = viewer_pyramid(built.path, max_side=1024)
    with open_slide(built.path) as slide:
        zoom = slide.deep_zoom(TILE_SIZE, OVERLAP)
        levels = [level for level, size in enumerate(zoom.level_dimensions) if max(size) <= 1024]
        assert pyramid.top_level == max(levels)
        assert (pyramid.width, pyramid.height) == zoom.level_dimensions[pyramid.top_level]
        expected = {f"{level}/{col}_{row}" for level in levels
                    for col in range(zoom.level_tiles[level][0]) for row in range(zoom.level_tiles[level][1])}
    assert set(pyramid.tiles) == expected
    assert max(pyramid.width, pyramid.height) <= 1024 and pyramid.downsample == pytest.approx(built.width / pyramid.width)
    top_left = Image.open(io.BytesIO(pyramid.tiles[f"{pyramid.top_level}/0_0"]))
    side = TILE_SIZE + OVERLAP  # a first tile has overlap on its inner sides only
    assert top_left.format == "JPEG" and top_left.size == (min(side, pyramid.width), min(side, pyramid.height))
    described = pyramid.to_viewer()
    assert described["maxLevel"] == pyramid.top_level and described["tiles"]["0/0_0"].startswith("data:image/jpeg;base64,")
    assert MAX_SIDE >= 1024


def test_the_mask_overlay_is_transparent_off_the_tissue():
    mask = np.zeros((4, 6), bool)
    mask[1:3, 2:5] = True
    rgba = mask_overlay(mask)
    assert rgba.shape == (4, 6, 4) and (rgba[..., 3] > 0).sum() == 6 and not rgba[~mask].any()


def test_a_file_that_is_not_a_slide_is_named(breakhis_dir, tmp_path):
    bad = write_bad_slides(tmp_path, breakhis_dir)
    for case, path in bad.items():
        if case == "no_tissue":  # a slide of bare glass is still a slide to look at
            assert viewer_pyramid(path).tiles
            continue
        with pytest.raises(BreakHisError, match=path.name):
            viewer_pyramid(path)


# ----------------------------------------------------------------------------- in the browser


@pytest.fixture(scope="module")
def served_analysis(tiny_run, built, tmp_path_factory):
    """A finished analysis of the built slide and the app serving it on a loopback port: (url, runs folder, slide)."""
    root = tmp_path_factory.mktemp("viewer_runs")
    (root / tiny_run.name).symlink_to(tiny_run, target_is_directory=True)
    default_model.set_default(tiny_run.name, "finetuned", root)
    folder = slide_jobs.start_job(built.path, f"{tiny_run.name}:finetuned", root)
    deadline = time.monotonic() + 300
    while slide_jobs.job_state(folder).status in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(1)
    assert slide_jobs.job_state(folder).done, (folder / "job.log").read_text()[-2000:]
    port = free_port()
    log_path = tmp_path_factory.mktemp("viewer_server") / "streamlit.log"
    env = {**os.environ, "BREAKHIS_RUNS": str(root), "BREAKHIS_DATA_ROOTS": str(built.path.parent),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    with open(log_path, "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                                   "--server.address", "127.0.0.1", "--server.port", str(port),
                                   "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"],
                                  cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/_stcore/health", server, log_path)
        yield url, root, built, log_path
    finally:
        stop(server)


def viewer_frame(page):
    """The viewer's frame, once OpenSeadragon has opened the slide and both overlays."""
    page.get_by_role("heading", name="Whole-slide viewer").wait_for(timeout=300_000)
    handle = page.locator("iframe[title*='slide_viewer']").first
    handle.wait_for(timeout=120_000)
    frame = handle.element_handle().content_frame()
    frame.wait_for_function("() => window.slideViewer && window.slideViewer.world.getItemCount() === 3 "
                            "&& window.slideViewer.world.getItemAt(0).getFullyLoaded()", timeout=120_000)
    return handle, frame


def test_zoom_pan_overlays_and_a_click_in_the_browser(served_analysis):
    from test_browser import ARTIFACTS, CHROMIUM, full_screenshot, playwright_api, wait_idle

    if CHROMIUM is None:
        pytest.skip("no chromium found; `apt-get install -y chromium` (.ci/run does)")
    url, _, built, log_path = served_analysis
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{url}/slides")
            handle, frame = viewer_frame(page)
            wait_idle(page)
            handle.scroll_into_view_if_needed()
            box = frame.locator("#viewer").bounding_box()  # in the page's coordinates
            centre = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)

            assert handle.bounding_box()["height"] >= 500, handle.bounding_box()  # the frame shows the whole viewer
            under = page.evaluate("([x, y]) => document.elementFromPoint(x, y).tagName", list(centre))
            assert under == "IFRAME", (under, centre, box, handle.bounding_box())
            zoom_before = frame.evaluate("() => window.slideViewer.viewport.getZoom(true)")
            page.mouse.move(*centre)
            page.mouse.wheel(0, -500)
            frame.wait_for_function(f"() => window.slideViewer.viewport.getZoom(true) > {zoom_before} * 1.1", timeout=30_000)
            centre_before = frame.evaluate("() => window.slideViewer.viewport.getCenter(true).x")
            page.mouse.down()
            page.mouse.move(centre[0] - 200, centre[1], steps=8)
            page.mouse.up()
            frame.wait_for_function(f"() => Math.abs(window.slideViewer.viewport.getCenter(true).x - {centre_before}) > 1e-3",
                                    timeout=30_000)

            opacities = "() => [1, 2].map(i => window.slideViewer.world.getItemAt(i).getOpacity())"
            assert sorted(frame.evaluate(opacities)) == [0, 0.5]  # heat map shown at the page's opacity, mask hidden
            frame.locator("#mask").check()
            frame.locator("#heat").uncheck()
            assert sorted(frame.evaluate(opacities)) == [0, 1]
            frame.locator("#heat").check()
            assert sorted(frame.evaluate(opacities)) == [0.5, 1]

            # a click on the middle of the tissue band: that tile and its Grad-CAM below the viewer
            frame.evaluate("() => window.slideViewer.viewport.goHome(true)")
            x0, y0, x1, y1 = built.tissue_box
            point = frame.evaluate(
                "([fx, fy]) => { const item = window.slideViewer.world.getItemAt(0); const size = item.getContentSize();"
                " const p = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(fx * size.x, fy * size.y));"
                " return [p.x, p.y]; }",
                [(x0 + x1) / 2 / built.width, (y0 + y1) / 2 / built.height])
            page.mouse.click(box["x"] + point[0], box["y"] + point[1])
            page.get_by_text("Grad-CAM of the tile clicked").wait_for(timeout=180_000)
            assert "Tile clicked: level-0" in page.inner_text("[data-testid='stMain']")
            assert page.locator("[data-testid='stException']").count() == 0
            full_screenshot(page, ARTIFACTS / "slide_viewer.png")
        finally:
            browser.close()
    assert "Traceback" not in log_path.read_text()


def test_a_slide_the_viewer_cannot_read_is_said_so_and_the_analysis_still_shows(served_analysis, monkeypatch):
    from streamlit.testing.v1 import AppTest

    _, root, built, _ = served_analysis
    monkeypatch.setenv("BREAKHIS_RUNS", str(root))
    monkeypatch.setenv("BREAKHIS_DATA_ROOTS", str(built.path.parent))
    moved = built.path.with_suffix(".moved")
    built.path.rename(moved)
    try:
        at = AppTest.from_file(str(REPO / "app.py"), default_timeout=240)
        at.run()
        at.switch_page("pages/slides.py").run()
        assert not at.exception, [e.value for e in at.exception]
        warnings = [str(w.value) for w in at.warning]
        assert any(w.startswith("The viewer cannot show this slide") and "viewer.tiff" in w for w in warnings), warnings
        assert {m.label for m in at.metric} >= {"Slide verdict"}  # the stored analysis still shows
    finally:
        moved.rename(built.path)
