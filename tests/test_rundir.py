"""breakhis_core.runs.rundir: the run directory's names, status writes, liveness, naming, cancel and lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from breakhis_core.config import TrainConfig
from breakhis_core.errors import ConfigError
from breakhis_core.files import unlock
from breakhis_core.runs.rundir import RunDir, check_run_name, live_status, new_run_id, now_iso, process_alive


def test_set_status_merges_fields_and_stamps_the_update(tmp_path):
    run = RunDir(tmp_path)
    run.set_status("queued", created="then")
    run.set_status("running", pid=12)
    state = json.loads(run.status_file.read_text())
    assert state["status"] == "running" and state["created"] == "then" and state["pid"] == 12 and state["updated"]


def test_queued_run_whose_launched_process_ended_reads_interrupted(tmp_path):
    run = RunDir(tmp_path)
    run.set_status("queued")
    assert run.live_status() == ("queued", None)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    run.write_job(gone.pid)
    status, error = run.live_status()
    assert status == "interrupted" and f"process {gone.pid} ended before training started" in error


def test_running_with_this_process_stays_running(tmp_path):
    assert live_status(tmp_path, {"status": "running", "pid": os.getpid(), "started": now_iso()}) == ("running", None)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_reap_collects_a_finished_child():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    stat = Path(f"/proc/{child.pid}/stat")
    deadline = time.monotonic() + 30
    while stat.read_text().rsplit(")", 1)[1].split()[0] != "Z" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not process_alive(child.pid)  # a zombie is not alive
    assert stat.exists()  # ... but is still there until someone reaps it
    assert not process_alive(child.pid, reap=True)
    assert not stat.exists()


def test_new_run_ids_never_collide(tmp_path):
    config = TrainConfig(data="x", magnification="40", split="folds", fold=2)
    first = new_run_id(config, tmp_path)
    assert first.endswith("-40x-fold2")
    (tmp_path / first).mkdir()
    second = new_run_id(config, tmp_path)
    assert second != first and not (tmp_path / second).exists()


@pytest.mark.parametrize("name, message", [("../up", "a run name takes"), (".hidden", "a run name takes"),
                                           ("taken", "resume it with")])
def test_check_run_name_refuses(tmp_path, name, message):
    (tmp_path / "taken").mkdir()
    with pytest.raises(ConfigError, match=message):
        check_run_name(name, tmp_path)


def test_cancel_request_and_run_lock(tmp_path):
    run = RunDir(tmp_path)
    assert not run.cancel_requested()
    run.request_cancel()
    assert run.cancel_requested()
    run.clear_cancel()
    assert not run.cancel_requested()
    held = run.try_lock()
    try:
        assert held is not None and run.try_lock() is None  # a second open of the lock is refused
    finally:
        unlock(held)


def test_is_run_needs_a_run_file(tmp_path):
    run = RunDir(tmp_path / "r")
    assert not run.is_run()
    run.path.mkdir()
    assert not run.is_run()
    run.write_info({})
    assert run.is_run()
