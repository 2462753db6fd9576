"""Slide analyses as background processes, one at a time, with their results stored under the runs folder.

An analysis is keyed by the slide file (resolved path, size, modification time) and the request
(model, magnification, pixel size, tissue threshold), so asking again for a finished analysis
opens it at once, after a page reload or a server restart too. Layout (``slides/analysisdir.py``: the file
names, ``SlideAnalysisDir``; described in ``docs/ARCHITECTURE.md``)::

    <runs>/slides/<slide stem>-<key>/               one analysis: request.json, status.json ("running" with its
                                                    process gone reads "interrupted"), progress.json, cancel,
                                                    job.log and the outputs of ``slides/export.py``
    <runs>/slides/uploads/<sha256 prefix><suffix>   slides uploaded through the app (OpenSlide reads files)
    <runs>/.slide_job.lock                          {"pid", "folder", "started"} of the running analysis

The process is ``python -m breakhis_core.slides.jobs FOLDER``, started by ``runs.launcher`` (its own session, a lower
priority than the app). Slide analyses have their own slot (``launcher.JobSlot``), independent of the training job's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from breakhis_core.errors import BreakHisError, CancelledError
from breakhis_core.files import read_json, write_bytes_atomic, write_json_atomic
from breakhis_core.runs.launcher import JobLaunch, JobSlot, launch, request_cancel
from breakhis_core.runs.rundir import now_iso, process_alive
from breakhis_core.runs.status import ENDED, LIVE, RunStatus
from breakhis_core.slides.analysisdir import SlideAnalysisDir

SLIDES_FOLDER = "slides"
"""Slide files are looked for in this folder of each data root; results go to this folder of the runs."""
UPLOADS_FOLDER = "uploads"
LOCK_FILE = ".slide_job.lock"
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".czi", ".dcm")
"""File suffixes offered as slides (what OpenSlide 4 reads)."""
MAX_LISTED = 2000
PROGRESS_EVERY_S = 1.0


# ----------------------------------------------------------------------------- where slides and results are


def find_slides(roots: list[Path]) -> list[Path]:
    """Slide files under ``<root>/slides`` of each data root (symlinks not followed), sorted, at most ``MAX_LISTED``."""
    found: list[Path] = []
    for root in roots:
        folder = Path(root) / SLIDES_FOLDER
        if not folder.is_dir() or folder.is_symlink():
            continue
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if not (Path(dirpath) / d).is_symlink())
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if name.lower().endswith(SLIDE_SUFFIXES) and not path.is_symlink():
                    found.append(path)
                    if len(found) >= MAX_LISTED:
                        return found
    return found


def save_upload(data: bytes, name: str, runs_root: str | Path) -> Path:
    """Store an uploaded slide under ``<runs>/slides/uploads`` (named by its SHA-256) and return its path."""
    suffix = "".join(Path(name).suffixes[-2:]).lower() or ".svs"
    path = Path(runs_root) / SLIDES_FOLDER / UPLOADS_FOLDER / (hashlib.sha256(data).hexdigest()[:24] + suffix)
    if not path.is_file():
        write_bytes_atomic(path, data)
    return path


def results_folder(slide: str | Path, request: dict, runs_root: str | Path) -> Path:
    """Where the analysis of ``slide`` for ``request`` lives (whether or not it exists yet)."""
    slide = Path(slide).resolve()
    stat = slide.stat()
    identity = json.dumps([str(slide), stat.st_size, stat.st_mtime_ns, request], sort_keys=True, default=str)
    key = hashlib.sha256(identity.encode()).hexdigest()[:12]
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in slide.name.split(".")[0])[:60] or "slide"
    return Path(runs_root) / SLIDES_FOLDER / f"{stem}-{key}"


@dataclass
class SlideJobState:
    """What the app shows of an analysis: status (with "interrupted" for a dead process), error, progress."""

    folder: Path
    request: dict
    status: RunStatus
    error: str | None
    progress: dict
    cancel_requested: bool

    @property
    def done(self) -> bool:
        return self.status == RunStatus.DONE


def job_state(folder: str | Path) -> SlideJobState:
    """The analysis in ``folder`` as stored now."""
    folder = Path(folder)
    files = SlideAnalysisDir(folder)
    status = read_json(files.status_file, {}) or {}
    state, error = RunStatus.read(status.get("status", RunStatus.QUEUED)), status.get("error")
    if state in LIVE and not process_alive(status.get("pid"), reap=True):
        state, error = RunStatus.INTERRUPTED, "the analysis process ended without finishing (killed or the server restarted)"
    return SlideJobState(folder, read_json(files.request_file, {}) or {}, state, error,
                         read_json(files.progress_file, {}) or {}, files.cancel_file.exists())


def list_analyses(runs_root: str | Path) -> list[SlideJobState]:
    """The stored analyses, newest first."""
    folder = Path(runs_root) / SLIDES_FOLDER
    if not folder.is_dir():
        return []
    found = [job_state(p) for p in folder.iterdir() if SlideAnalysisDir(p).is_analysis()]
    return sorted(found, key=lambda s: s.request.get("created", ""), reverse=True)


# ----------------------------------------------------------------------------- the one background analysis


@dataclass(frozen=True)
class SlideJobLock:
    """The record of ``<runs>/.slide_job.lock``: the analysis holding the slide slot.

    Attributes:
        pid: the analysis process (the starting process while its folder is being prepared).
        folder: the analysis folder, as a string.
        started: ISO time the lock was taken.
    """

    pid: int | None
    folder: str | None = None
    started: str | None = None

    @classmethod
    def from_dict(cls, record: dict) -> "SlideJobLock":
        return cls(record.get("pid"), record.get("folder"), record.get("started"))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        return Path(self.folder or "?").name


def _analysis_goes_on(record: SlideJobLock) -> bool:
    """False once the holder's own status (written by its pid) says its analysis ended: the process may still be
    exiting, and the next analysis need not wait for it."""
    status = read_json(SlideAnalysisDir(record.folder or "").status_file, {}) or {}
    return not (status.get("pid") == record.pid and status.get("status") in ENDED)


def job_slot(runs_root: str | Path) -> JobSlot[SlideJobLock]:
    """The one slide-analysis slot of ``runs_root`` (``<runs>/.slide_job.lock``), independent of training's."""
    return JobSlot(Path(runs_root), LOCK_FILE, "slide analysis", SlideJobLock.from_dict, _analysis_goes_on)


def current_job(runs_root: str | Path) -> SlideJobLock | None:
    """The running analysis' lock record, or None (a stale lock is removed)."""
    return job_slot(runs_root).holder()


def start_job(slide: str | Path, model_ref: str, runs_root: str | Path, magnification: int | None = None,
              mpp: float | None = None, tissue_threshold: float | None = None, python: str = sys.executable) -> Path:
    """Start analysing ``slide`` in the background, or return the folder of a finished analysis at once.

    Raises:
        JobError: when another analysis is running (the message names it).
        SlideError: when the slide file does not exist.
    """
    from breakhis_core.errors import SlideError

    root = Path(runs_root)
    if not Path(slide).is_file():
        raise SlideError(f"{Path(slide).name}: no such file. Received: slide={slide}")
    request = {"model": model_ref, "magnification": _field_magnification(model_ref, root, magnification), "mpp": mpp,
               "tissue_threshold": tissue_threshold}
    folder = results_folder(slide, request, root)
    if job_state(folder).done:
        return folder
    slot = job_slot(root)
    slot.acquire(SlideJobLock(os.getpid(), str(folder), now_iso()), f"slide={Path(slide).name}")
    files = SlideAnalysisDir(folder)
    with slot.released_on_failure():
        folder.mkdir(parents=True, exist_ok=True)
        files.cancel_file.unlink(missing_ok=True)
        write_json_atomic(files.request_file, {"slide": str(Path(slide).resolve()), **request,
                                               "runs_root": str(root.resolve()), "created": now_iso()})
        write_json_atomic(files.progress_file, {})
        pid = launch(JobLaunch("breakhis_core.slides.jobs", (str(folder),), files.job_log, python))
        write_json_atomic(files.status_file, {"status": RunStatus.QUEUED, "pid": pid, "started": now_iso()})
        slot.hand_over(SlideJobLock(pid, str(folder), now_iso()))
    return folder


def _field_magnification(model_ref: str, runs_root: Path, magnification: int | None) -> int:
    """The magnification whose field the tiles match: the model's own, else the one asked for, else the default
    (so that asking with and without the default finds the same stored analysis)."""
    from breakhis_core.data.pixelsize import DEFAULT_SLIDE_MAGNIFICATION
    from breakhis_core.inference.predict import normalize_magnification
    from breakhis_core.runs.registry import resolve_model

    run, _ = resolve_model(model_ref, runs_root)
    own = run.config.magnification_filter if run.config else None
    return own or normalize_magnification(magnification) or DEFAULT_SLIDE_MAGNIFICATION


def cancel_job(folder: str | Path) -> None:
    """Ask the analysis in ``folder`` to stop before its next batch."""
    request_cancel(folder)


def run_job(folder: str | Path) -> int:
    """The background process: analyse the slide of ``folder/request.json`` and write its results there.

    Returns:
        0 done, 2 failed with a user-facing reason, 3 cancelled, 1 internal error.
    """
    from breakhis_core.slides.predict import analyze_slide, model_for_slides
    from breakhis_core.slides.export import write_slide_outputs

    folder = Path(folder)
    files = SlideAnalysisDir(folder)
    request = read_json(files.request_file, {}) or {}
    started = now_iso()

    def status(state: str, error: str | None = None) -> None:
        ended = None if state == RunStatus.RUNNING else now_iso()
        write_json_atomic(files.status_file,
                          {"status": state, "pid": os.getpid(), "started": started, "ended": ended, "error": error})

    last = [0.0]

    def progress(event) -> None:
        if time.monotonic() - last[0] >= PROGRESS_EVERY_S or event.done == event.total:
            last[0] = time.monotonic()
            write_json_atomic(files.progress_file, event.to_dict())

    status(RunStatus.RUNNING)
    try:
        predictor, field = model_for_slides(request.get("model"), request.get("runs_root"), request.get("magnification"))
        result = analyze_slide(request["slide"], predictor, field, mpp=request.get("mpp"),
                               tissue_threshold=request.get("tissue_threshold"), progress=progress,
                               should_cancel=files.cancel_file.exists)
        write_slide_outputs(result, folder)
    except CancelledError as exc:
        status(RunStatus.CANCELLED, str(exc))
        return 3
    except BreakHisError as exc:
        status(RunStatus.FAILED, str(exc))
        return 2
    except Exception as exc:  # internal error: the traceback goes to job.log
        traceback.print_exc()
        status(RunStatus.FAILED, f"internal error: {type(exc).__name__}: {exc}")
        return 1
    status(RunStatus.DONE)
    return 0


if __name__ == "__main__":
    sys.exit(run_job(sys.argv[1]))
