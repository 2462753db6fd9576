"""The audit log: one JSON line per prediction and per training event, never pixels or file contents.

Where: ``$BREAKHIS_AUDIT_LOG`` when set, else ``<runs>/audit.jsonl`` (see ``paths.runs_dir``).
The log only grows; each call appends its lines with one ``write`` on a descriptor opened with
``O_APPEND``, so several threads and processes (app sessions, the CLI, a training job) can log
at once without interleaving or losing lines.

Records::

    {"time", "event": "prediction", "source": "cli"|"app"|..., "model_id", "image_sha256",
     "verdict", "p_malignant", "magnification", "low_confidence", "cam"}
    {"time", "event": "training", "run_id", "status": queued|started|done|cancelled|failed,
     "pid", ... (e.g. "data", "error")}
    {"time", "event": "case", "action": create|read|list|review|sign|addendum, "user", "role",
     "cases": [{"id", "accession", "version"}], ... (e.g. "images", "filter", "purpose")}   (cases.service)

An image is identified by the SHA-256 of its file bytes (as uploaded or read from disk), so a
result can be traced to the exact file without the log holding the image or its name (file names
may carry patient identifiers). A log that cannot be written never stops a diagnosis: the
functions return False and warn (``AuditWarning``) with the reason.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

log = logging.getLogger(__name__)

AUDIT_ENV = "BREAKHIS_AUDIT_LOG"
AUDIT_FILE = "audit.jsonl"


class AuditWarning(UserWarning):
    """Issued when an audit record could not be written (the operation itself went on)."""


def audit_path(runs_root: str | Path | None = None) -> Path:
    """The log file: ``$BREAKHIS_AUDIT_LOG``, else ``<runs_root>/audit.jsonl`` (runs_root default: ``paths.runs_dir``)."""
    configured = os.environ.get(AUDIT_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    from breakhis_core.lab.paths import runs_dir

    return runs_dir(runs_root) / AUDIT_FILE


def _now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="milliseconds")


def append(records: Iterable[dict], path: str | Path) -> bool:
    """Append records as JSON lines to ``path`` in one ``O_APPEND`` write (folder created if needed).

    Returns:
        True when written; False (with an ``AuditWarning``) when the log cannot be written.
    """
    payload = "".join(json.dumps(record, default=str, ensure_ascii=False) + "\n" for record in records).encode("utf-8")
    if not payload:
        return True
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                payload = b"\n" + payload  # end a line torn by a full disk; read_jsonl skips the torn part
            written = os.write(fd, payload)
            if written != len(payload):
                raise OSError(f"short write ({written} of {len(payload)} bytes)")
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        log.error("audit log not written (%s): %s", path, exc.strerror or exc)
        warnings.warn(f"audit log not written ({path}): {exc.strerror or exc}", AuditWarning, stacklevel=3)
        return False
    return True


def record_predictions(
    predictions: Sequence,
    digests: Sequence[str],
    source: str,
    runs_root: str | Path | None = None,
    path: str | Path | None = None,
    user: str | None = None,
) -> bool:
    """Log one "prediction" line per image.

    Args:
        predictions: ``predict.Prediction`` objects (model_id, verdict, p_malignant, magnification, ...).
        digests: the SHA-256 (:func:`sha256`) of each image's file bytes, in the same order.
        source: who predicted ("cli", "app", ...).
        runs_root, path: where the log is (see :func:`audit_path`).
        user: the signed-in user (e-mail) who asked, when the app has sign-in; recorded as "user".

    Returns:
        True when written (see :func:`append`).
    """
    if len(predictions) != len(digests):
        raise ValueError(f"one digest per prediction is needed. Received: {len(predictions)} predictions, {len(digests)} digests")
    time = _now()
    records = [
        {
            "time": time,
            "event": "prediction",
            "source": source,
            "model_id": p.model_id,
            "image_sha256": digest,
            "verdict": p.verdict,
            "p_malignant": round(float(p.p_malignant), 6),
            "magnification": p.magnification,
            "low_confidence": bool(p.low_confidence),
            "cam": p.cam_method,
            **({"user": user} if user else {}),
        }
        for p, digest in zip(predictions, digests)
    ]
    log.info("%d prediction(s) from %s by %s", len(records), source, ", ".join(sorted({r["model_id"] for r in records})))
    return append(records, path or audit_path(runs_root))


def record_training(run_dir: str | Path, status: str, path: str | Path | None = None, **fields) -> bool:
    """Log one "training" line for the run in ``run_dir`` (its runs folder holds the log by default).

    Args:
        run_dir: the run folder.
        status: "queued", "started", "done", "cancelled" or "failed".
        path: the log (default: :func:`audit_path` of the run's runs folder).
        fields: more JSON-ready values (pid, data, error, ...).
    """
    run_dir = Path(run_dir)
    record = {"time": _now(), "event": "training", "run_id": run_dir.name, "status": status, "pid": os.getpid(), **fields}
    return append([record], path or audit_path(run_dir.parent))


def read_audit(path: str | Path) -> list[dict]:
    """The log's records, oldest first (torn lines skipped)."""
    from breakhis_core.files import read_jsonl

    return read_jsonl(path)
