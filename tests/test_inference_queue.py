"""Model passes take turns across sessions (``inference_queue.py``) on pools sized for it (``runtime.size_serving_thread_pools``),
and jobs run at a lower priority (``priority.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from breakhis_core.inference.queue import InferenceQueue
from breakhis_core.lab.priority import BACKGROUND_NICENESS, lower_priority


def test_one_turn_at_a_time_in_arrival_order_with_places_told():
    queue = InferenceQueue()
    order, inside, most_inside, told = [], [0], [0], {}
    guard = threading.Lock()
    first_holds = threading.Event()
    release_first = threading.Event()

    def request(name: str, hold: threading.Event | None = None) -> None:
        with queue.turn(on_wait=lambda ahead: told.setdefault(name, []).append(ahead), poll_s=0.01):
            with guard:
                inside[0] += 1
                most_inside[0] = max(most_inside[0], inside[0])
                order.append(name)
            if hold is not None:
                first_holds.set()
                release_first.wait(5)
            time.sleep(0.02)
            with guard:
                inside[0] -= 1

    threads = [threading.Thread(target=request, args=("first", release_first))]
    threads[0].start()
    assert first_holds.wait(5)
    for name in ("second", "third", "fourth"):
        threads.append(threading.Thread(target=request, args=(name,)))
        threads[-1].start()
        while queue.length < len(threads):  # each waits before the next arrives: arrival order is known
            time.sleep(0.005)
    release_first.set()
    for thread in threads:
        thread.join(10)
    assert order == ["first", "second", "third", "fourth"]
    assert most_inside[0] == 1
    assert told["fourth"][0] == 3 and told["fourth"][-1] == 1  # its place, counted down as others finish
    assert told["fourth"] == sorted(told["fourth"], reverse=True)
    assert set(told["second"]) == {1} and "first" not in told
    assert queue.length == 0


def test_an_abandoned_or_failing_request_gives_its_place_up():
    queue = InferenceQueue()
    holder_in, release = threading.Event(), threading.Event()

    def hold() -> None:
        with queue.turn():
            holder_in.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    assert holder_in.wait(5)

    def leave(ahead: int) -> None:
        raise KeyboardInterrupt  # as a page stopped while it waits

    with pytest.raises(KeyboardInterrupt):
        with queue.turn(on_wait=leave, poll_s=0.01):
            pytest.fail("an abandoned request must not get the turn")
    assert queue.length == 1
    release.set()
    holder.join(5)
    with pytest.raises(ValueError):
        with queue.turn():
            raise ValueError("the model pass failed")
    assert queue.length == 0
    with queue.turn():  # the turn is free again
        assert queue.length == 1


def _niceness(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as handle:
        return int(handle.read().rsplit(")", 1)[1].split()[16])


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads niceness from /proc")
def test_lower_priority_lowers_a_job_and_its_later_threads_but_never_raises_it():
    code = "import threading, time; time.sleep(0.5); t = threading.Thread(target=time.sleep, args=(5,)); t.start(); t.join()"
    process = subprocess.Popen([sys.executable, "-c", code])
    try:
        lower_priority(process.pid)
        assert _niceness(process.pid) == BACKGROUND_NICENESS
        time.sleep(1.0)  # its thread has started by now
        threads = os.listdir(f"/proc/{process.pid}/task")
        assert len(threads) >= 2
        assert all(_niceness(int(tid)) == BACKGROUND_NICENESS for tid in threads)
        lower_priority(process.pid, niceness=BACKGROUND_NICENESS - 5)  # asking for less leaves it as it is
        assert _niceness(process.pid) == BACKGROUND_NICENESS
    finally:
        process.kill()
        process.wait()


def _python_lines(code: str) -> list[str]:
    """The lines ``code`` prints, run in a fresh interpreter (TensorFlow's pools are fixed once per process)."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            cwd=Path(__file__).resolve().parents[1], env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip().splitlines()


def test_serving_pools_are_sized_before_tensorflow_runs_and_left_alone_after():
    from breakhis_core.runtime import usable_cpus

    lines = _python_lines("from breakhis_core import runtime\n"
                          "print(runtime.size_serving_thread_pools())\n"
                          "import tensorflow as tf\n"
                          "tf.constant(1.0) + 1.0\n"
                          "print(runtime.size_serving_thread_pools())\n")
    assert lines == [str((usable_cpus(), 1))] * 2


def test_serving_pools_never_fail_where_tensorflow_already_ran_with_other_pools():
    lines = _python_lines("import tensorflow as tf\n"
                          "tf.config.threading.set_inter_op_parallelism_threads(3)\n"
                          "tf.constant(1.0) + 1.0\n"
                          "from breakhis_core import runtime\n"
                          "print(runtime.size_serving_thread_pools())\n")
    assert lines[-1].endswith(", 3)")  # left as TensorFlow runs them
