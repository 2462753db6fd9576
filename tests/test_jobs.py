"""breakhis_core.training.jobs: the one-job lock (complete on creation, stale locks cleared under a guard) and path checks."""

from __future__ import annotations

import json
import os
import signal
import stat
import time

import pytest

from breakhis_core.lab import audit
from breakhis_core.training import jobs
from breakhis_core.runs import rundir
from breakhis_core.errors import DataPathError, JobError
from conftest import tiny_config


@pytest.fixture
def sleeper(tmp_path) -> str:
    """Stands in for ``python -m breakhis_core resume RUN``: ignores its arguments and sleeps."""
    path = tmp_path / "sleeper.sh"
    path.write_text("#!/bin/sh\nexec sleep 60\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def stop(runs) -> None:
    record = json.loads((runs / jobs.LOCK_FILE).read_text())
    os.kill(record["pid"], signal.SIGKILL)
    os.waitpid(record["pid"], 0)


def test_start_refuse_and_release(sample_dir, tmp_path, sleeper):
    runs = tmp_path / "runs"
    run_dir = jobs.start_job(tiny_config(sample_dir), runs, python=sleeper)
    try:
        job = jobs.current_job(runs)
        assert job.run_id == run_dir.name and job.run_dir == str(run_dir) and job.pid != os.getpid()
        with pytest.raises(JobError, match=f"already running: run {run_dir.name}"):
            jobs.start_job(tiny_config(sample_dir), runs, python=sleeper)
    finally:
        stop(runs)
    assert jobs.current_job(runs) is None and not (runs / jobs.LOCK_FILE).exists()
    (record,) = audit.read_audit(runs / "audit.jsonl")
    assert (record["event"], record["run_id"], record["status"]) == ("training", run_dir.name, "queued")
    assert sorted(p.name for p in runs.iterdir() if p.is_dir()) == [run_dir.name]


def test_lock_of_a_starting_job_says_so(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    jobs._acquire(runs)  # this process is preparing a run
    with pytest.raises(JobError, match="still being prepared"):
        jobs._acquire(runs)
    assert json.loads((runs / jobs.LOCK_FILE).read_text())["pid"] == os.getpid()


def test_failed_preparation_releases_the_lock(tmp_path, sleeper):
    runs = tmp_path / "runs"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(Exception, match="no usable"):
        jobs.start_job(tiny_config(empty), runs, python=sleeper)
    assert not (runs / jobs.LOCK_FILE).exists()


def test_data_roots_are_enforced_before_anything_starts(sample_dir, tmp_path, sleeper):
    runs = tmp_path / "runs"
    with pytest.raises(DataPathError):
        jobs.start_job(tiny_config(sample_dir), runs, python=sleeper, data_roots=[tmp_path])
    assert not runs.exists()
    run_dir = jobs.start_job(tiny_config(sample_dir), runs, python=sleeper, data_roots=[sample_dir.parent])
    stop(runs)
    assert json.loads((run_dir / "config.json").read_text())["data"] == str(sample_dir.resolve())


def test_resume_job_continues_a_cancelled_run(sample_dir, tmp_path):
    import time

    from breakhis_core.training.setup import prepare_run
    from breakhis_core.runs.rundir import CANCEL_FILE
    from breakhis_core.training.train import run_training

    runs = tmp_path / "runs"
    run_dir = prepare_run(tiny_config(sample_dir), runs)

    def cancel_in_stage_two(event):
        if event.get("stage") == "finetuned" and event.get("batch", 0) >= 1:
            (run_dir / CANCEL_FILE).touch()

    assert run_training(run_dir, listener=cancel_in_stage_two) == "cancelled"
    jobs.resume_job(run_dir, runs)
    with pytest.raises(JobError, match="already running"):
        jobs.resume_job(run_dir, runs)
    deadline = time.monotonic() + 300
    while jobs.current_job(runs) is not None and time.monotonic() < deadline:
        time.sleep(1)
    assert jobs.current_job(runs) is None, "the resumed process did not end"
    assert jobs.job_state(run_dir).status == "done", (run_dir / "train.log").read_text()[-2000:]
    assert [r["status"] for r in audit.read_audit(runs / "audit.jsonl") if r["event"] == "training"][0] == "resumed"
    with pytest.raises(JobError, match="status=done"):
        jobs.resume_job(run_dir, runs)


def test_a_job_dying_before_training_reads_interrupted(sample_dir, tmp_path):
    from breakhis_core.runs.registry import load_run

    crasher = tmp_path / "crasher.sh"
    crasher.write_text("#!/bin/sh\necho 'ImportError: simulated' >&2\nexit 1\n")
    crasher.chmod(crasher.stat().st_mode | stat.S_IXUSR)
    runs = tmp_path / "runs"
    run_dir = jobs.start_job(tiny_config(sample_dir), runs, python=str(crasher))
    pid = json.loads((run_dir / rundir.JOB_FILE).read_text())["pid"]
    deadline = time.monotonic() + 30
    while rundir.process_alive(pid, reap=True) and time.monotonic() < deadline:  # reaps it once it has exited
        time.sleep(0.05)
    assert json.loads((run_dir / "status.json").read_text())["status"] == "queued"  # it never started
    assert load_run(run_dir).status == "interrupted" and "train.log" in load_run(run_dir).error
    assert jobs.job_state(run_dir).status == "interrupted"
    assert jobs.current_job(runs) is None
    assert "simulated" in (run_dir / "train.log").read_text()
