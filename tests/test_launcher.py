"""breakhis_core.runs.launcher: the one-job slot (refusal naming the holder, stale locks taken over), the launch of a
job process (own session, lower priority, log file, environment) and cancel."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from breakhis_core.errors import JobError
from breakhis_core.lab.priority import BACKGROUND_NICENESS
from breakhis_core.runs import launcher
from breakhis_core.runs.rundir import now_iso, process_alive


@dataclass(frozen=True)
class Holder:
    pid: int | None
    task: str | None = None
    started: str | None = None

    @classmethod
    def from_dict(cls, record: dict) -> "Holder":
        return cls(record.get("pid"), record.get("task"), record.get("started"))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        return f"task {self.task}"


def slot(root: Path, still_running=lambda record: True) -> launcher.JobSlot[Holder]:
    return launcher.JobSlot(root, ".test_job.lock", "test job", Holder.from_dict, still_running)


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_held_slot_refuses_a_second_job_naming_the_running_one(tmp_path):
    ours = slot(tmp_path)
    ours.acquire(Holder(os.getpid(), "first", now_iso()), "task=first")
    with pytest.raises(JobError, match=rf"a test job is already running: task first, pid {os.getpid()}, started .*"
                                       r"wait for it to finish or cancel it\. Received: task=second"):
        ours.acquire(Holder(os.getpid(), "second", now_iso()), "task=second")
    assert ours.holder() == Holder(os.getpid(), "first", json.loads(ours.lock_file.read_text())["started"])


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    ours = slot(tmp_path)
    ours.lock_file.write_text(json.dumps({"pid": dead_pid(), "task": "old", "started": now_iso()}))
    ours.acquire(Holder(os.getpid(), "new", now_iso()), "task=new")
    assert json.loads(ours.lock_file.read_text())["task"] == "new"


def test_an_unreadable_lock_is_cleared(tmp_path):
    ours = slot(tmp_path)
    ours.lock_file.write_text("{not json")
    assert ours.holder() is None and not ours.lock_file.exists()


def test_a_live_holder_whose_job_ended_is_stale(tmp_path):
    ended = slot(tmp_path, still_running=lambda record: record.task != "finished")
    ended.acquire(Holder(os.getpid(), "finished", now_iso()), "task=finished")
    assert ended.holder() is None and not ended.lock_file.exists()


def test_a_failed_preparation_releases_the_slot_and_hand_over_replaces_the_record(tmp_path):
    ours = slot(tmp_path)
    ours.acquire(Holder(os.getpid(), None, now_iso()), "task=x")
    with pytest.raises(RuntimeError, match="preparation failed"):
        with ours.released_on_failure():
            raise RuntimeError("preparation failed")
    assert not ours.lock_file.exists()
    ours.acquire(Holder(os.getpid(), None, now_iso()), "task=x")
    with ours.released_on_failure():
        ours.hand_over(Holder(os.getpid(), "launched", now_iso()))
    assert ours.holder().task == "launched"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".test_job.lock", ".test_job.lock.guard"]  # no temp files


@pytest.fixture
def polling_job(tmp_path) -> launcher.JobLaunch:
    """A job module that writes its environment and niceness, then waits for the cancel flag of its folder."""
    package = tmp_path / "jobmodules"
    package.mkdir()
    (package / "polling_job.py").write_text(
        "import json, os, sys, time\n"
        "from pathlib import Path\n"
        "folder = Path(sys.argv[1])\n"
        "print(json.dumps({'nice': os.getpriority(os.PRIO_PROCESS, 0), 'sid': os.getsid(0), 'cwd': os.getcwd(),\n"
        "                  'marker': os.environ.get('JOB_MARKER')}), flush=True)\n"
        "deadline = time.monotonic() + 60\n"
        "while not (folder / 'cancel').exists() and time.monotonic() < deadline:\n"
        "    time.sleep(0.05)\n"
        "print('cancelled', flush=True)\n")
    folder = tmp_path / "job"
    folder.mkdir()
    return launcher.JobLaunch("polling_job", (str(folder),), folder / "job.log",
                              env={"PYTHONPATH": str(package), "JOB_MARKER": "set"})


def test_launch_starts_a_niced_process_in_its_own_session_and_cancel_stops_it(polling_job):
    folder = Path(polling_job.args[0])
    pid = launcher.launch(polling_job)
    try:
        deadline = time.monotonic() + 30
        while not polling_job.log_file.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        facts = json.loads(polling_job.log_file.read_text().splitlines()[0])
        assert facts == {"nice": max(BACKGROUND_NICENESS, os.getpriority(os.PRIO_PROCESS, 0)), "sid": pid,
                         "cwd": str(launcher.PROJECT_ROOT), "marker": "set"}
        assert process_alive(pid, reap=True) and not launcher.cancel_requested(folder)
        launcher.request_cancel(folder)
        assert launcher.cancel_requested(folder)
        deadline = time.monotonic() + 30
        while process_alive(pid, reap=True) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not process_alive(pid, reap=True), "the job did not stop on the cancel flag"
        assert polling_job.log_file.read_text().splitlines()[-1] == "cancelled"
    finally:
        if process_alive(pid, reap=True):
            os.kill(pid, 9)
            os.waitpid(pid, 0)
