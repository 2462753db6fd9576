"""Several sessions diagnosing at once (``tests/loadsessions.py``, the cases of ``bench/load.py`` at small N):
every upload gets all its verdicts and heat maps, no page shows an exception, the server logs no traceback.

Skips, with the reason, where chromium or the playwright package is missing (``.ci/run`` installs chromium).
"""

from __future__ import annotations

import pytest
from loadsessions import IMAGES_PER_ROUND, round_images, run_sessions, serve_app, server_tracebacks
from test_browser import CHROMIUM  # noqa: F401  (skips this module without playwright)

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium found; `apt-get install -y chromium` (.ci/run does)")
SESSIONS, ROUNDS = 2, 2


def test_concurrent_sessions_lose_no_result_and_raise_nothing(tiny_runs_root, sample_dir, sample_files, tmp_path):
    app = serve_app(tiny_runs_root, sample_dir, tmp_path)
    try:
        results = run_sessions(app, CHROMIUM, SESSIONS, sample_files, duration_s=600, max_rounds=ROUNDS)
    finally:
        app.stop()
    errors = [error for result in results for error in result.errors]
    assert not errors, errors
    assert [result.rounds for result in results] == [ROUNDS] * SESSIONS  # every round showed its 4 results
    assert all(latency > 0 for result in results for latency in result.latencies_s)
    assert server_tracebacks(app.log_path) == [], app.log_path.read_text()[-3000:]


def test_round_images_never_repeat_a_sessions_last_set(sample_files):
    for sessions in (1, 2, 6):
        for session in range(sessions):
            sets = [round_images(sample_files, session, index, sessions) for index in range(20)]
            assert all(len(s) == IMAGES_PER_ROUND for s in sets)
            assert all(a != b for a, b in zip(sets, sets[1:]))
