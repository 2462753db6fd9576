"""Background jobs yield the CPU to people: training and slide-analysis processes run at a lower priority.

The job launcher (``runs/launcher.py``, for training and slide analyses) lowers a job process's priority right
after starting it, while it is still a single thread (it has just begun running Python), so every thread it starts later
(TensorFlow's thread pools among them) inherits the lower priority. Pages served to pathologists keep the
server's normal priority: on a machine with few cores, a diagnosis waits for a training step only as long as
the kernel's scheduler lets a niced process run.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

BACKGROUND_NICENESS = 10
"""The ``nice`` value of job processes (0 = normal, 19 = lowest priority)."""


def lower_priority(pid: int, niceness: int = BACKGROUND_NICENESS) -> None:
    """Give process ``pid`` (its main thread, hence the threads it starts afterwards) at least ``niceness``.

    A process already nicer is left as it is. Where the operating system refuses (or has no priorities),
    the job still runs, at normal priority, and a warning says so.
    """
    try:
        current = os.getpriority(os.PRIO_PROCESS, pid)
        if current < niceness:
            os.setpriority(os.PRIO_PROCESS, pid, niceness)
    except (OSError, AttributeError) as exc:  # a process gone already, or a platform without priorities
        log.warning("could not lower the priority of job process %d: %s", pid, exc)
