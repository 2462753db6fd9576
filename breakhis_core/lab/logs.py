"""Operator logs: what the library did, through Python's ``logging`` under the ``breakhis_core`` logger.

Modules log with ``logging.getLogger(__name__)``: training status changes and stages, training jobs
started and cancelled, predictions (counts and model, never file names), models set active, imported
and deleted, failures of the audit log, PDF reports. Nothing is printed until an entry point calls
:func:`setup_logging` (the CLI and the app do): it sends the records to stderr, one plain line each
(``2026-12-02 04:05:06,789 INFO breakhis_core.training.jobs: run … training job started (pid …)``), at the level of
``$BREAKHIS_LOG_LEVEL`` (DEBUG, INFO, WARNING, ERROR; default WARNING), and, when asked, to a log file as well
(the app: ``logs/app.log`` in the app home, rotated at ``LOG_FILE_BYTES``, ``LOG_FILE_BACKUPS`` older files kept).
A training job started from the app logs at INFO into its ``train.log`` unless the variable says otherwise.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from pathlib import Path

LOG_LEVEL_ENV = "BREAKHIS_LOG_LEVEL"
DEFAULT_LEVEL = "WARNING"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_FILE_BYTES = 5 * 2**20
"""Size at which a log file is rotated, in bytes (5 MiB)."""
LOG_FILE_BACKUPS = 3
"""Rotated log files kept (``app.log.1`` … ``app.log.3``)."""


class _StderrHandler(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is when a record is emitted (it may be replaced later)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def log_level(value: str | None = None) -> int:
    """The level named by ``value`` (default ``$BREAKHIS_LOG_LEVEL``, else WARNING); an unknown name reads as WARNING."""
    name = (value if value is not None else os.environ.get(LOG_LEVEL_ENV, DEFAULT_LEVEL)).strip().upper()
    return getattr(logging, name) if name in LEVELS else logging.WARNING


def setup_logging(level: str | None = None, log_file: str | Path | None = None) -> logging.Logger:
    """Send the ``breakhis_core`` records at ``level`` (default :func:`log_level`) to stderr, and to ``log_file``
    (its folder must exist) when given; safe to call again."""
    logger = logging.getLogger("breakhis_core")
    logger.setLevel(log_level(level))
    if not any(isinstance(handler, _StderrHandler) for handler in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(FORMAT))
        logger.addHandler(handler)
    if log_file is not None:
        path = os.path.abspath(log_file)
        if not any(getattr(handler, "baseFilename", None) == path for handler in logger.handlers):
            handler = logging.handlers.RotatingFileHandler(path, maxBytes=LOG_FILE_BYTES, backupCount=LOG_FILE_BACKUPS,
                                                           encoding="utf-8")
            handler.setFormatter(logging.Formatter(FORMAT))
            logger.addHandler(handler)
    if os.environ.get(LOG_LEVEL_ENV, "").strip() and os.environ[LOG_LEVEL_ENV].strip().upper() not in LEVELS:
        logger.warning("%s=%s is not one of %s; using WARNING", LOG_LEVEL_ENV, os.environ[LOG_LEVEL_ENV], ", ".join(LEVELS))
    return logger
