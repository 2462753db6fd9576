"""First come, first served turns at the models of one process, with each waiting request's place in line.

The app's sessions run their scripts in threads of one server process. Without a queue, six pathologists
uploading at once start six model passes together: each gets a sixth of the CPU, all finish late, and their
intermediate activations are held at the same time. :class:`InferenceQueue` lets one request at a time use the
models (the one copy of each model, ``ui.models``), in arrival order; a waiting request is told how many
requests are ahead of it, so a page can say so instead of spinning.

A request that is abandoned while it waits (the user reloads, the session ends: an exception in the waiting
thread) leaves the line; a request that holds the turn gives it up when its block ends, whatever happens in it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

POLL_S = 0.5
"""How often a waiting request re-reads its place (seconds) and calls ``on_wait``."""


class InferenceQueue:
    """One turn at a time, in arrival order (thread-safe)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._line: deque[object] = deque()  # tickets; the first holds the turn

    @property
    def length(self) -> int:
        """Requests holding or waiting for the turn now."""
        with self._changed:
            return len(self._line)

    @contextmanager
    def turn(self, on_wait: Callable[[int], None] | None = None, poll_s: float = POLL_S) -> Iterator[None]:
        """Wait for this request's turn, hold it for the block, then hand it to the next request.

        Args:
            on_wait: called in the waiting thread, outside the queue's lock, with the number of requests
                ahead (>= 1) on arrival and after each change or ``poll_s`` seconds of waiting; an exception it
                raises abandons the request (a page stopped while it waits leaves the line within ``poll_s``).
            poll_s: seconds between checks of the place in line.
        """
        ticket = object()
        with self._changed:
            self._line.append(ticket)
        try:
            first = True
            while True:
                with self._changed:
                    ahead = self._line.index(ticket)
                    if ahead and not first:  # checked and waited under one lock: no hand-over is missed
                        self._changed.wait(timeout=poll_s)
                        ahead = self._line.index(ticket)
                if not ahead:
                    break
                if on_wait is not None:
                    on_wait(ahead)
                first = False
            yield
        finally:
            with self._changed:
                self._line.remove(ticket)
                self._changed.notify_all()
