"""Sign-in and roles end to end: the app with ``st.login`` against a mock OpenID Connect provider
(``oidc-provider-mock``) on a loopback port, driven by Debian's chromium through Playwright.

A viewer signs in, sees Train and Models nowhere in the navigation, diagnoses an image (the audit line names them)
and cannot open Train by its address.
Skips, with the reason, where chromium, playwright, Authlib or the mock provider is missing; CI has them
(``.ci/run`` installs chromium; the others are in the requirements files).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("authlib", reason="Authlib (streamlit[auth]) is not installed")
pytest.importorskip("oidc_provider_mock", reason="oidc-provider-mock is not installed")
from servers import free_port, stop, wait_for  # noqa: E402
from test_browser import CHROMIUM, REPO, find_chromium, wait_idle  # noqa: E402  (skips without chromium)

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium found; `apt-get install -y chromium` (.ci/run does)")
VIEWER = "viewer@lab.example"


@pytest.fixture(scope="module")
def signed_app(tiny_runs_root, sample_dir, tmp_path_factory):
    """(app URL, runs folder): the mock provider and the app with sign-in and a roles file; both always stopped."""
    folder = tmp_path_factory.mktemp("signin")
    provider_port, app_port = free_port(), free_port()
    provider_log = folder / "provider.log"
    with open(provider_log, "w") as log:
        provider = subprocess.Popen([sys.executable, "-m", "oidc_provider_mock", "--host", "127.0.0.1", "--port",
                                     str(provider_port)], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
    app = None
    try:
        issuer = f"http://127.0.0.1:{provider_port}"
        wait_for(f"{issuer}/.well-known/openid-configuration", provider, provider_log)
        secrets = folder / "secrets.toml"
        secrets.write_text(
            "[auth]\n"
            f'redirect_uri = "http://127.0.0.1:{app_port}/oauth2callback"\n'
            'cookie_secret = "a-test-cookie-secret-of-enough-length"\n'
            'client_id = "breakhis-test"\nclient_secret = "breakhis-test-secret"\n'
            f'server_metadata_url = "{issuer}/.well-known/openid-configuration"\n'
        )
        roles = folder / "roles.toml"
        roles.write_text(f'trainer = ["lead@lab.example"]\nviewer = ["{VIEWER}"]\n')
        app_log = folder / "streamlit.log"
        env = {**os.environ, "BREAKHIS_RUNS": str(tiny_runs_root), "BREAKHIS_DATA_ROOTS": str(sample_dir),
               "BREAKHIS_ROLES": str(roles), "TF_CPP_MIN_LOG_LEVEL": "2"}
        with open(app_log, "w") as log:
            app = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                                    "--server.address", "127.0.0.1", "--server.port", str(app_port),
                                    "--secrets.files", str(secrets), "--browser.gatherUsageStats", "false"],
                                   cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
        url = f"http://127.0.0.1:{app_port}"
        wait_for(f"{url}/_stcore/health", app, app_log)
        yield url, tiny_runs_root, app_log
    finally:
        if app is not None:
            stop(app)
        stop(provider)


def test_viewer_signs_in_diagnoses_and_cannot_open_train(signed_app, sample_files):
    from playwright.sync_api import sync_playwright

    url, runs, app_log = signed_app
    sample = next(p for p in sample_files if "-100-" in p.name)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=find_chromium(), args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(url)
            page.get_by_role("button", name="Sign in").click(timeout=180_000)
            page.locator("input[name=sub]").fill(VIEWER, timeout=60_000)  # the mock provider's sign-in form
            page.get_by_role("button", name="Authorize").click()
            page.get_by_text(f"{VIEWER} · viewer").wait_for(timeout=180_000)

            page.goto(f"{url}/diagnose")
            page.get_by_role("heading", name="Diagnose").first.wait_for(timeout=180_000)
            wait_idle(page)
            page.locator("input[type=file]").first.set_input_files(str(sample))
            page.locator("[data-testid='stMarkdownContainer']", has_text=f"{sample.name} ·").first.wait_for(timeout=180_000)
            wait_idle(page)  # the verdict card is drawn: the prediction is in the audit log

            nav = page.locator("[data-testid='stSidebarNav']")
            assert nav.get_by_text("Diagnose", exact=True).count() == 1
            assert nav.get_by_text("Train", exact=True).count() == 0  # not listed for a viewer
            assert nav.get_by_text("Models", exact=True).count() == 0
            page.goto(f"{url}/train")  # typed by hand: the app opens its home page instead
            page.get_by_role("heading", name="Breast histopathology: benign or malignant").wait_for(timeout=180_000)
            wait_idle(page)
            assert page.locator("[data-testid='stForm']").count() == 0  # no training form
        finally:
            browser.close()
    from breakhis_core.lab.audit import audit_path, read_audit

    assert audit_path(runs).is_file(), (sorted(p.name for p in runs.iterdir()), app_log.read_text()[-3000:])
    lines = read_audit(audit_path(runs))
    mine = [line for line in lines if line.get("event") == "prediction" and line.get("user") == VIEWER]
    assert mine and mine[-1]["source"] == "app", lines[-3:]
