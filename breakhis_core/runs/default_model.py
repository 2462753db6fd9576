"""The default (active) model of a runs folder: ``<runs>/default.json`` ``{"run_id", "stage"}``.

The model a user chose stays active while its file exists; without a choice the newest done run's
best model that did not fail the learning check and is not undetermined (``learning_check.py``) is
active. A model that did not learn, or whose learning is undetermined, is never picked automatically.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from breakhis_core.config import STAGES
from breakhis_core.errors import RunNotFoundError
from breakhis_core.files import write_json_atomic
from breakhis_core.lab.paths import runs_dir
from breakhis_core.runs.registry import Run, list_runs, model_id, resolve_model
from breakhis_core.runs.status import RunStatus

log = logging.getLogger(__name__)

DEFAULT_FILE = "default.json"


def get_default(root: str | Path | None = None) -> tuple[Run, str] | None:
    """The active model: ``default.json`` when it names an existing model, else the newest done
    run's finetuned (else frozen) model whose learning check needs no confirmation (:attr:`Run.learned_stage`);
    None when there is none.

    A model that did not learn or is undetermined (:meth:`Run.learning`) is active only when someone chose it
    (``set_default``); it is never picked by this fallback."""
    root = runs_dir(root)
    chosen = read_default(root)
    if chosen is not None:
        try:
            return resolve_model(f"{chosen.get('run_id')}:{chosen.get('stage')}", root)
        except RunNotFoundError:
            pass  # the named model is gone; fall back
    for run in list_runs(root):
        if run.status == RunStatus.DONE and run.learned_stage:
            return run, run.learned_stage
    return None


def set_default(run_id: str, stage: str, root: str | Path | None = None) -> None:
    """Make ``<run_id>:<stage>`` the active model (``<root>/default.json``, written atomically).

    Raises:
        RunNotFoundError: when the run or its model file of that stage does not exist.
    """
    if stage not in STAGES:
        raise RunNotFoundError(f"stage must be {' or '.join(STAGES)}. Received: stage={stage}")
    run, stage = resolve_model(f"{run_id}:{stage}", root)
    write_json_atomic(runs_dir(root) / DEFAULT_FILE, {"run_id": run.run_id, "stage": stage})
    log.info("active model set to %s", model_id(run, stage))


def read_default(root: Path) -> dict | None:
    """``default.json`` of the runs folder ``root`` as written (the chosen model), or None."""
    try:
        value = json.loads((root / DEFAULT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None

