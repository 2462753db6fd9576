"""Multi-worker training with real worker processes on loopback ports (free ports chosen at run time).

Each worker is the documented command, ``train DATA --strategy multiworker --run-name NAME --runs RUNS`` with
its own ``TF_CONFIG``; a stopped run continues with ``resume RUNS/NAME`` on every worker.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from servers import free_ports

PEER_TIMEOUT_S = 20


def start_worker(index: int, ports: list[int], args: list[str], log: Path) -> subprocess.Popen:
    tf_config = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": index}}
    env = {**os.environ, "TF_CONFIG": json.dumps(tf_config), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.Popen([sys.executable, "-m", "breakhis_core", *args], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=open(log, "w"), text=True)


def train_args(sample_dir, runs: Path, *extra: str) -> list[str]:
    return ["train", str(sample_dir), "--strategy", "multiworker", "--run-name", "mw", "--runs", str(runs),
            "--weights", "none", "--recipe", "paper", "--input-size", "32", "--batch-size", "8", "--split", "image",
            "--peer-timeout-s", str(PEER_TIMEOUT_S), *extra]


def finish(workers: list[subprocess.Popen], timeout_s: float = 420) -> list[int]:
    deadline = time.monotonic() + timeout_s
    codes = []
    for worker in workers:
        try:
            worker.wait(max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            for w in workers:
                w.kill()
            pytest.fail("a worker did not end in time")
        codes.append(worker.returncode)
    return codes


def test_two_workers_train_one_cached_run_to_done(sample_dir, tmp_path):
    """The cached path on two workers; the plain path's run to done is the resumed run of the next test."""
    runs = tmp_path / "runs"
    ports = free_ports(2)
    args = train_args(sample_dir, runs, "--epochs-frozen", "1", "--epochs-finetune", "1", "--cache", "on")
    workers = [start_worker(i, ports, args, tmp_path / f"worker{i}.log") for i in (0, 1)]
    codes = finish(workers)
    logs = [(tmp_path / f"worker{i}.log").read_text()[-3000:] for i in (0, 1)]
    assert codes == [0, 0], logs
    run_dir = runs / "mw"
    assert json.loads((run_dir / "status.json").read_text())["status"] == "done"
    info = json.loads((run_dir / "run.json").read_text())
    assert info["strategy"] == {"name": "multiworker", "replicas": 2, "global_batch_size": 16}
    assert info["training_path"] == "cached (8 views)"
    for name in ("frozen.keras", "finetuned.keras", "metrics.json", "card.md"):
        assert (run_dir / name).is_file(), name
    assert sorted(p.name for p in runs.iterdir() if not p.name.startswith(".") and p.suffix != ".jsonl") == ["mw"], \
        "the non-chief worker wrote no run of its own"
    audit = [json.loads(line) for line in (runs / "audit.jsonl").read_text().splitlines()]
    assert [(a["status"], a.get("worker")) for a in audit] == [("started", "worker 0"), ("done", "worker 0")]


def test_a_stopped_worker_ends_its_peer_with_the_reason_then_the_run_resumes(sample_dir, tmp_path):
    runs = tmp_path / "runs"
    ports = free_ports(2)
    # 12 tiny epochs (1-2.5 s each): the stop lands ~3 epochs after the first history line (the supervisor polls each
    # second), so stage 1 is still running; with 5, all of them sometimes finished before the stop
    args = train_args(sample_dir, runs, "--epochs-frozen", "12", "--epochs-finetune", "1", "--no-cache")
    workers = [start_worker(i, ports, args, tmp_path / f"worker{i}.log") for i in (0, 1)]
    run_dir = runs / "mw"
    deadline = time.monotonic() + 300
    while not list(run_dir.glob("history_frozen.jsonl")) or not (run_dir / "history_frozen.jsonl").read_text().strip():
        assert time.monotonic() < deadline and all(w.poll() is None for w in workers), \
            [(tmp_path / f"worker{i}.log").read_text()[-2000:] for i in (0, 1)]
        time.sleep(0.2)

    workers[1].send_signal(signal.SIGTERM)  # while both wait on each other's collectives
    stopped = time.monotonic()
    workers[1].wait(30)
    assert workers[1].returncode == 3, (tmp_path / "worker1.log").read_text()[-2000:]
    workers[0].wait(PEER_TIMEOUT_S + 30)
    ended_after = time.monotonic() - stopped
    assert workers[0].returncode == 1
    assert ended_after <= PEER_TIMEOUT_S + 30
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "failed"
    assert f"worker 1 (127.0.0.1:{ports[1]}) did not answer" in status["error"]
    assert f"worker 1 (127.0.0.1:{ports[1]}) did not answer" in (tmp_path / "worker0.log").read_text()
    epochs_kept = len((run_dir / "history_frozen.jsonl").read_text().splitlines())
    assert 1 <= epochs_kept < 12

    ports = free_ports(2)
    resumed = [start_worker(i, ports, ["resume", str(run_dir)], tmp_path / f"resume{i}.log") for i in (0, 1)]
    assert finish(resumed) == [0, 0], [(tmp_path / f"resume{i}.log").read_text()[-3000:] for i in (0, 1)]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "done"
    epochs = [json.loads(line)["epoch"] for line in (run_dir / "history_frozen.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, 13)), "resumed after the kept epochs, none repeated or lost"
    info = json.loads((run_dir / "run.json").read_text())
    assert info["strategy"] == {"name": "multiworker", "replicas": 2, "global_batch_size": 16}
    assert info["training_path"] == "plain"
    for name in ("frozen.keras", "finetuned.keras", "metrics.json", "card.md"):
        assert (run_dir / name).is_file(), name


def test_a_worker_whose_peer_never_starts_stops_within_the_bound(sample_dir, tmp_path):
    runs = tmp_path / "runs"
    ports = free_ports(2)
    started = time.monotonic()
    worker = start_worker(0, ports, train_args(sample_dir, runs, "--epochs-frozen", "1", "--epochs-finetune", "1"),
                          tmp_path / "worker0.log")
    assert finish([worker], PEER_TIMEOUT_S + 240) == [1]
    assert time.monotonic() - started < PEER_TIMEOUT_S + 240
    status = json.loads((runs / "mw" / "status.json").read_text())
    assert status["status"] == "failed" and f"worker 1 (127.0.0.1:{ports[1]}) did not answer" in status["error"]
