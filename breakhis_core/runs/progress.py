"""Progress of a training run: ``progress.json`` (polled by the UI), a listener (the CLI's bar) and operator log lines.

One :class:`TrainingProgress` serves a whole run: both stages' epoch callbacks, the cached path's caching
passes and the trainer's own steps (loading, evaluating, done) report through it. The event keys are those of
``progress.json`` in ``docs/ARCHITECTURE.md``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from breakhis_core.runs.rundir import RunDir, now_iso

log = logging.getLogger(__name__)

Listener = Callable[[dict], None]
"""A progress listener: called with every progress event (the keys of progress.json), e.g. the CLI's bar."""


class TrainingProgress:
    """Writes progress.json (at most every ``interval_s``) and forwards each event to ``listener``.

    Args:
        run_dir: the run directory.
        total_epochs: epochs of both stages together (the ETA counts the epochs left).
        listener: optional ``f(event: dict)`` called on every event (the CLI's bar).
        interval_s: the least time in seconds between two writes of progress.json (forced events are always written).

    Attributes:
        epochs_done: epochs completed in the run so far, both stages counted (the callbacks add one per epoch).
        batch_seconds: seconds of each training batch (appended by the callbacks; the ETA uses the median of the last 50).
    """

    def __init__(self, run_dir: Path, total_epochs: int, listener: Listener | None = None, interval_s: float = 1.0):
        self.run_dir = run_dir
        self.total_epochs = total_epochs
        self.listener = listener
        self.interval_s = interval_s
        self.started = time.monotonic()
        self.epochs_done = 0
        self.last_write = 0.0
        self.batch_seconds: list[float] = []

    def update(self, force: bool = False, **event) -> None:
        """Report ``event`` (stage, epoch, batch, message, ...); ``force`` writes it now and logs its message at INFO."""
        elapsed = time.monotonic() - self.started
        event.setdefault("epochs_done", self.epochs_done)
        event.setdefault("total_epochs", self.total_epochs)
        batches = event.get("batches") or 0
        if self.batch_seconds and batches and "eta_s" not in event:
            per_batch = float(np.median(self.batch_seconds[-50:]))
            remaining_batches = (self.total_epochs - self.epochs_done) * batches - event.get("batch", 0)
            event["eta_s"] = round(max(remaining_batches, 0) * per_batch, 1)
        event.update(elapsed_s=round(elapsed, 1), updated=now_iso())
        if self.listener is not None:
            self.listener(event)
        if force:
            log.info("run %s: %s", self.run_dir.name, event.get("message", event.get("stage", "")))
        if force or time.monotonic() - self.last_write >= self.interval_s:
            RunDir(self.run_dir).write_progress(event)
            self.last_write = time.monotonic()
