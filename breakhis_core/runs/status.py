"""The status of a run, experiment or slide analysis: the one list of status words.

``RunStatus`` is a ``StrEnum``: a member is the word itself (``RunStatus.DONE == "done"``, ``json.dumps`` writes
``"done"``, f-strings print ``done``), so ``status.json`` and ``state.json`` files hold the same words as ever and
older folders read the same.
"""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    """What a run (experiment, slide analysis) is doing or how it ended.

    QUEUED: prepared, its process not yet training; RUNNING: its process works on it; DONE, FAILED, CANCELLED:
    ended; INTERRUPTED: recorded as queued or running but its process is gone (read, never written);
    BROKEN: its folder cannot be read (the registry's listing); UNKNOWN: no status recorded yet.
    """

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"
    BROKEN = "broken"
    UNKNOWN = "unknown"

    @classmethod
    def read(cls, value) -> "RunStatus":
        """The status a status file's ``"status"`` holds (UNKNOWN for a missing or unknown word)."""
        try:
            return cls(value)
        except ValueError:
            return cls.UNKNOWN


LIVE = (RunStatus.QUEUED, RunStatus.RUNNING)
"""A process is (or is about to be) working on it."""
ENDED = (RunStatus.DONE, RunStatus.FAILED, RunStatus.CANCELLED)
"""Its process finished and recorded how."""
RESUMABLE = (RunStatus.INTERRUPTED, RunStatus.CANCELLED, RunStatus.FAILED, RunStatus.QUEUED)
"""A run that can be continued from its last checkpoint."""
