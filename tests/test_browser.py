"""The app in a real browser: ``streamlit run app.py`` on a free local port, driven by Debian's chromium
through Playwright (the system browser; nothing is downloaded).

Skips, with the reason, where chromium or the playwright package is missing; ``.ci/run`` installs
chromium so this always runs in CI. Screenshots go to ``test-artifacts/`` (gitignored).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from servers import free_port, stop, wait_for

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_ENV = "BREAKHIS_CHROMIUM"
PAGES = {"": "Breast histopathology", "diagnose": "Diagnose", "slides": "Slides", "compare": "Compare models",
         "train": "Train a model", "models": "Models"}


def find_chromium() -> str | None:
    """``$BREAKHIS_CHROMIUM``, else chromium / chromium-browser on PATH, else None."""
    if os.environ.get(CHROMIUM_ENV):
        return os.environ[CHROMIUM_ENV]
    return next((path for name in ("chromium", "chromium-browser") if (path := shutil.which(name))), None)


playwright_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium found (looked for $BREAKHIS_CHROMIUM, chromium, chromium-browser): "
    "install Debian's package with `apt-get install -y chromium` (.ci/run does)",
)


@pytest.fixture(scope="module")
def app_url(tiny_runs_root, sample_dir, tmp_path_factory):
    """A streamlit server on 127.0.0.1 with the tiny run as the active model; always terminated."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("server") / "streamlit.log"
    env = {**os.environ, "BREAKHIS_RUNS": str(tiny_runs_root), "BREAKHIS_DATA_ROOTS": str(sample_dir),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
               "--server.address", "127.0.0.1", "--server.port", str(port), "--server.fileWatcherType", "none",
               "--browser.gatherUsageStats", "false"]
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/_stcore/health", server, log_path)
        yield url
    finally:
        stop(server)


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield chromium
        finally:
            chromium.close()


def wait_idle(page, timeout_ms: int = 180_000) -> None:
    """Until the script has finished (Streamlit's "running" indicator is gone)."""
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout_ms)


def full_screenshot(page, path: Path) -> None:
    """The whole page: the viewport is stretched to the height of Streamlit's scrolling main area."""
    height = page.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": 1400, "height": min(max(int(height) + 40, 900), 8000)})
    page.wait_for_timeout(800)
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path))


def test_diagnose_upload_shows_verdict_and_overlay(app_url, browser, sample_files):
    """Runs first on a fresh server: /diagnose as the very first request still goes through app.py."""
    sample = next(p for p in sample_files if "-40-" in p.name)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    try:
        page.goto(f"{app_url}/diagnose")
        page.get_by_role("heading", name="Diagnose").first.wait_for(timeout=180_000)
        wait_idle(page)
        page.get_by_text("Decision support for research use only").first.wait_for()
        page.locator("[data-testid='stSidebar'] [data-testid='stSelectbox']").first.wait_for()
        page.locator("input[type=file]").first.set_input_files(str(sample))
        page.get_by_text("Case verdict", exact=True).wait_for(timeout=180_000)
        wait_idle(page)
        card = page.locator("[data-testid='stMarkdownContainer']", has_text=f"{sample.name} ·").first
        card.wait_for()
        assert "P(malignant)" in card.inner_text()
        assert "benign" in card.inner_text() or "malignant" in card.inner_text()
        page.get_by_text("Grad-CAM: evidence for “malignant”", exact=False).first.wait_for()
        page.get_by_text("Heat-map colours: blue", exact=False).first.wait_for()  # the legend
        page.get_by_text("model learning check:", exact=False).first.wait_for()
        images = page.locator("[data-testid='stImage'] img")
        images.nth(1).wait_for()
        assert images.count() >= 2  # the original and its overlay
        loaded = page.evaluate(
            "() => [...document.querySelectorAll('[data-testid=\"stImage\"] img')].map(i => i.complete && i.naturalWidth)"
        )
        assert all(width and width > 0 for width in loaded), loaded
        full_screenshot(page, ARTIFACTS / "diagnose.png")
        assert (ARTIFACTS / "diagnose.png").stat().st_size > 10_000
    finally:
        page.close()


def test_every_page_shows_notice_and_no_error(app_url, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    try:
        for path, title in PAGES.items():
            page.goto(f"{app_url}/{path}")
            page.get_by_role("heading", name=title).first.wait_for(timeout=180_000)
            wait_idle(page)
            page.get_by_text("Decision support for research use only").first.wait_for()
            page.locator("[data-testid='stSidebar'] [data-testid='stSelectbox']").first.wait_for()  # model picker
            assert page.locator("[data-testid='stException']").count() == 0, f"exception on /{path}"
            assert "Traceback" not in page.inner_text("[data-testid='stMain']")
    finally:
        page.close()
