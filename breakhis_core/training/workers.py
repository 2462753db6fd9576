"""One worker of a multi-worker run: training in a child process, watched for dead peers, SIGTERM and cancel.

Every worker runs the same command (``train ... --strategy multiworker --run-name NAME`` or ``resume
RUNS/NAME``) with its own ``TF_CONFIG``; :func:`supervise` then starts the training in a child process
(``python -m breakhis_core.training.workers RUN_DIR``) and watches it. Why a child: a worker whose peer died waits
inside a TensorFlow collective, in C++, where Python never gets control back: such a process ignores its
SIGTERM handler and the cancel file and waits for ever. The supervisor is plain Python that never blocks:

- **dead or missing peers**: every ``PROBE_INTERVAL_S`` it opens a TCP connection to each peer's
  TensorFlow server (``host:port`` in ``TF_CONFIG``). A peer that does not answer for ``peer_timeout_s``
  seconds (counted from when this worker's own server first answers, or since the peer last answered)
  stops this worker with a message naming it; the
  chief records it in status.json ("failed"). Once the child has passed its last collective step
  (``distribute.signal_collectives_done``) peers may exit and probing stops. When the child itself fails
  (TensorFlow's collectives can fail fast once a peer is gone) while a peer does not answer, the failure
  names that peer too.
- **SIGTERM / SIGINT** and a **cancel file** written after this worker started stop the child (SIGTERM,
  then SIGKILL after ``STOP_GRACE_S``); the chief records "cancelled". The run resumes from its last
  completed epoch with ``resume`` on every worker.
- A non-chief worker first waits (up to ``peer_timeout_s``) for the chief to create the run folder.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from breakhis_core.training.distribute import COLLECTIVES_DONE_ENV, WorkerTask
from breakhis_core.runs.rundir import RunDir, now_iso
from breakhis_core.runs.status import RunStatus

PROBE_INTERVAL_S = 1.0
STOP_GRACE_S = 5.0
PROGRESS_EVERY_S = 10.0


@dataclass(frozen=True)
class WorkerOutcome:
    """How a supervised worker ended: its status ("done", "cancelled", "failed"), exit code and reason."""

    status: RunStatus
    exit_code: int  # 0 done, 3 cancelled, 1 failed (2 for a user error in the child)
    message: str = ""


def peer_answers(address: str, timeout_s: float = 1.0) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout_s`` seconds."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def supervise(run_dir: Path, task: WorkerTask, peer_timeout_s: float, progress_stream=None) -> WorkerOutcome:
    """Train ``run_dir`` as ``task`` in a child process until it ends, a peer is lost, or a stop is asked for.

    Args:
        run_dir: the run folder (made by the chief's ``prepare_run``; a non-chief waits for it).
        task: this process's task (``distribute.multiworker_task()``).
        peer_timeout_s: seconds a peer may stay unreachable.
        progress_stream: where the chief prints a progress line every ``PROGRESS_EVERY_S`` (None: nowhere).
    """
    stop = {"signal": None}

    def on_signal(number, _frame):
        stop["signal"] = signal.Signals(number).name

    previous = {number: signal.signal(number, on_signal) for number in (signal.SIGTERM, signal.SIGINT)}
    started_wall, started = time.time(), time.monotonic()
    try:
        if not task.is_chief:
            outcome = _wait_for_run(run_dir, task, peer_timeout_s, stop)
            if outcome is not None:
                return outcome
        with tempfile.TemporaryDirectory(prefix="breakhis-worker-") as scratch:
            marker = Path(scratch) / "collectives-done"
            env = {**os.environ, COLLECTIVES_DONE_ENV: str(marker)}
            child = subprocess.Popen([sys.executable, "-m", "breakhis_core.training.workers", str(run_dir)], env=env)
            last_seen: dict[str, float] = {}  # the clocks start once this worker's own server answers
            last_progress = started
            while True:
                code = child.poll()
                if code is not None:
                    if code in (0, 3):
                        return WorkerOutcome({0: RunStatus.DONE, 3: RunStatus.CANCELLED}[code], code)
                    lost = None if marker.exists() else _lost_peer(task)
                    if lost is None:
                        return WorkerOutcome(RunStatus.FAILED, code, f"{task.name}'s training exited with {code}")
                    # A collective can fail fast when its peer dies; name the peer, not only TensorFlow's error.
                    state = RunDir(run_dir).read_status() if task.is_chief else {}
                    cause = str(state.get("error") or "").splitlines()[0][:300] if state.get("error") else ""
                    message = (f"{lost[0]} ({lost[1]}) did not answer; {task.name} stopped. Start every worker again "
                               "with the same command (or 'resume') to continue from the last completed epoch"
                               + (f" (TensorFlow: {cause})" if cause else ""))
                    if task.is_chief:
                        RunDir(run_dir).set_status(RunStatus.FAILED, ended=now_iso(), error=f"PeerLost: {message}")
                    return WorkerOutcome(RunStatus.FAILED, 1, message)
                now = time.monotonic()
                cancel = RunDir(run_dir).cancel_file
                cancelled = cancel.is_file() and cancel.stat().st_mtime >= started_wall - 1
                if stop["signal"] or cancelled:
                    _stop(child)
                    reason = f"stopped by {stop['signal']}" if stop["signal"] else "cancelled (cancel file)"
                    if task.is_chief:
                        RunDir(run_dir).set_status(RunStatus.CANCELLED, ended=now_iso(), error=None,
                                   message=f"{reason}; completed epochs are kept and can be resumed")
                    return WorkerOutcome(RunStatus.CANCELLED, 3, f"{task.name} {reason}")
                if not last_seen and peer_answers(task.address):
                    last_seen = {name: now for name in task.peers}
                if last_seen and not marker.exists():
                    for name, address in task.peers.items():
                        if peer_answers(address):
                            last_seen[name] = now
                        elif now - last_seen[name] > peer_timeout_s:
                            _stop(child)
                            message = (f"{name} ({address}) did not answer for {peer_timeout_s:.0f} s; {task.name} "
                                       "stopped. Start every worker again with the same command (or 'resume') to "
                                       "continue from the last completed epoch")
                            if task.is_chief:
                                RunDir(run_dir).set_status(RunStatus.FAILED, ended=now_iso(), error=f"PeerLost: {message}")
                            return WorkerOutcome(RunStatus.FAILED, 1, message)
                if progress_stream is not None and task.is_chief and now - last_progress >= PROGRESS_EVERY_S:
                    event = RunDir(run_dir).read_progress()
                    if event.get("message"):
                        print(f"{task.name}: {event['message']}", file=progress_stream, flush=True)
                    last_progress = now
                time.sleep(PROBE_INTERVAL_S)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _lost_peer(task: WorkerTask, probes: int = 3) -> tuple[str, str] | None:
    """The first peer that answers none of ``probes`` tries ``PROBE_INTERVAL_S`` apart, or None."""
    silent = dict(task.peers)
    for attempt in range(probes):
        silent = {name: address for name, address in silent.items() if not peer_answers(address)}
        if not silent:
            return None
        if attempt < probes - 1:
            time.sleep(PROBE_INTERVAL_S)
    return next(iter(silent.items()))


def _wait_for_run(run_dir: Path, task: WorkerTask, timeout_s: float, stop: dict) -> WorkerOutcome | None:
    """Wait until the chief has written ``run_dir``'s status.json (written last by prepare_run); None when it has."""
    deadline = time.monotonic() + timeout_s
    while not RunDir(run_dir).status_file.is_file():
        if stop["signal"]:
            return WorkerOutcome(RunStatus.CANCELLED, 3, f"{task.name} stopped by {stop['signal']}")
        if time.monotonic() > deadline:
            chief = "chief 0" if "chief 0" in task.peers else "worker 0"
            return WorkerOutcome(RunStatus.FAILED, 1, f"the chief ({chief} at {task.peers.get(chief)}) did not create {run_dir} within "
                                              f"{timeout_s:.0f} s; is the same --run-name and --runs used on every worker?")
        time.sleep(PROBE_INTERVAL_S)
    return None


def _stop(child: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after ``STOP_GRACE_S``: a child blocked in a collective dies either way."""
    if child.poll() is not None:
        return
    child.terminate()
    try:
        child.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _die_with_parent() -> None:
    """Linux: the kernel kills this process when its supervisor dies (even by SIGKILL), so no orphan keeps training."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the supervisor died before the call
        os._exit(1)


def _child_main(argv: list[str]) -> int:
    """The training child: ``run_training(RUN_DIR)``; exit 0 done, 3 cancelled, 2 user error (printed)."""
    _die_with_parent()
    from breakhis_core import runtime

    runtime.load_tensorflow()
    from breakhis_core.errors import BreakHisError
    from breakhis_core.training.train import run_training

    try:
        status = run_training(Path(argv[0]))
    except BreakHisError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0 if status == RunStatus.DONE else 3


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
