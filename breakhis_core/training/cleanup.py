"""Freeing disk space in the runs folder: deleting a run, and the activation cache parts no run needs.

Nothing is deleted while it may be in use: a run that is training is refused, and cache parts are
kept while any training job runs (it may be reading or writing them).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from breakhis_core.training import cache, jobs
from breakhis_core.runs.default_model import DEFAULT_FILE, read_default
from breakhis_core.errors import JobError, RunNotFoundError
from breakhis_core.lab.paths import runs_dir
from breakhis_core.runs.registry import Run, list_runs, load_run
from breakhis_core.runs.rundir import RunDir
from breakhis_core.runs.status import RunStatus

log = logging.getLogger(__name__)


def delete_run(run_id: str, root: str | Path | None = None) -> int:
    """Delete a run folder of ``root``; clears ``default.json`` when it named this run.

    The activation cache parts the run used (``run.json`` "cache") are deleted too unless another
    run used them or a training job is running (it may be reading them).

    Returns:
        Bytes of activation cache freed.

    Raises:
        RunNotFoundError: when ``run_id`` is not a run folder directly inside ``root``.
        JobError: when the run is training (status running with a live process, or the job lock names it).
    """
    root = runs_dir(root)
    path = root / str(run_id)
    is_child = Path(run_id).name == str(run_id) and not str(run_id).startswith(".")
    if not is_child or not RunDir(path).is_run():
        raise RunNotFoundError(f"no such run in {root}. Received: run={run_id}")
    run = load_run(path)
    job = jobs.current_job(root)
    if run.status == RunStatus.RUNNING or (job is not None and job.run_id == run.run_id):
        pid = run.state.get("pid") or (job.pid if job is not None else None)
        raise JobError(f"run is training (pid {pid}); cancel it first. Received: run={run_id}")
    if (read_default(root) or {}).get("run_id") == run.run_id:
        (root / DEFAULT_FILE).unlink(missing_ok=True)
    shutil.rmtree(path)
    log.info("run %s deleted", run.run_id)
    if training_now(root):
        return 0
    in_use = {folder for other in list_runs(root) for folder in run_cache_parts(other)}
    return cache.remove_parts(folder for folder in run_cache_parts(run) if folder not in in_use)


def training_now(root: Path) -> str | None:
    """Which run of ``root`` is training (the app's job lock, or a live "running" run), said in words; or None."""
    job = jobs.current_job(root)
    if job is not None:
        return f"run {job.run_id}, pid {job.pid}"
    running = next((run for run in list_runs(root) if run.status == RunStatus.RUNNING), None)
    return f"run {running.run_id}, pid {running.state.get('pid')}" if running else None


def run_cache_parts(run: Run) -> list[Path]:
    """The activation cache part folders a run recorded in run.json (none for the plain path)."""
    recorded = run.info.get("cache") or {}
    if not recorded.get("folder") or not isinstance(recorded.get("parts"), dict):
        return []
    return [Path(recorded["folder"]) / str(key) for key in recorded["parts"].values()]


def cache_usage(root: str | Path | None = None) -> tuple[Path, int, int]:
    """The activation cache of ``root``'s runs: its folder, number of part folders and bytes on disk."""
    folder = cache.cache_root(runs_dir(root))
    parts = cache.part_folders(folder)
    return folder, len(parts), sum(cache.folder_bytes(part) for part in parts)


def clear_cache(root: str | Path | None = None) -> int:
    """Delete every activation cache part of ``root``'s runs (a later cached run rebuilds what it needs).

    Returns:
        Bytes freed.

    Raises:
        JobError: while a training job runs (it may be reading or writing the cache).
    """
    root = runs_dir(root)
    training = training_now(root)
    if training:
        raise JobError(f"training is running ({training}); the activation cache can be deleted when it has ended. "
                       f"Received: root={root}")
    return cache.remove_parts(cache.part_folders(cache.cache_root(root)))
