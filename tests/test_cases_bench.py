"""bench/cases.py on a few cases: both backends, forced conflicts all detected, nothing lost, the issue's last line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from postgres import postgres_bin, postgres_required

BENCH = Path(__file__).resolve().parents[1] / "bench" / "cases.py"
LAST_LINE = re.compile(r"cases (\d+) saved in (\d+\.\d) s \(sqlite\) (\d+\.\d) s \(postgres\), p95 save (\d+) ms, "
                       r"conflicts detected (\d+)/(\d+), lost (\d+)")


def test_the_bench_saves_reviews_and_detects_every_forced_conflict():
    if postgres_bin() is None and not postgres_required():
        pytest.skip("PostgreSQL (initdb, pg_ctl) not found on PATH or in /usr/lib/postgresql/*/bin")
    result = subprocess.run([sys.executable, str(BENCH), "--cases", "40", "--writers", "4", "--conflict-every", "5"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    match = LAST_LINE.fullmatch(result.stdout.splitlines()[-1])
    assert match, result.stdout
    n, sqlite_s, postgres_s, p95, detected, forced, lost = match.groups()
    assert n == "40" and float(sqlite_s) > 0 and float(postgres_s) > 0 and int(p95) > 0
    assert detected == forced == "16" and lost == "0"  # cases 0, 5, ..., 35 on each of the two backends
