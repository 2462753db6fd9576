"""The runs folder, models loaded once per process, the session's model, and a run's result files.

Models and predictors are cached per process (``st.cache_resource``: shared by every session, keyed by
the model file and the modification times of it and of the run's calibration); they are built by the library
(``Predictor.from_run``, and a router is ``ModelRouter.serving`` that one predictor) exactly as the CLI builds
them. The session's chosen model lives in ``st.session_state``.

Environment (read by ``breakhis_core``): ``BREAKHIS_RUNS``, the runs folder (default ``runs/`` in the app home; ``paths.runs_dir``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st

from breakhis_core.lab import paths
from breakhis_core.runs import default_model, registry
from breakhis_core.models import loading as model_loading
from breakhis_core import runtime
from breakhis_core.errors import BreakHisError
from breakhis_core.inference.queue import InferenceQueue
from breakhis_core.runs.rundir import RunDir

if TYPE_CHECKING:  # imported where used: breakhis_core.inference.predict loads TensorFlow
    from breakhis_core.inference.predict import ModelRouter, Predictor


def runs_root() -> Path:
    """The runs folder, absolute (``$BREAKHIS_RUNS``, else ``runs/`` in the app home)."""
    return paths.runs_dir().resolve()


# ----------------------------------------------------------------------------- models


def _mtime(path: Path) -> float:
    """A file's modification time (0.0 when it is missing): part of a cache key, so a replaced file is read again."""
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


@st.cache_resource(max_entries=4, show_spinner="Loading the model…")
def _cached_model(path: str, mtime: float):
    del mtime  # part of the cache key only: a replaced file is loaded again
    return model_loading.load_model(path)


@st.cache_resource(max_entries=8, show_spinner="Preparing the model…")
def _cached_predictor(model_ref: str, path: str, mtime: float, calibration_mtime: float, _run: registry.Run,
                      stage: str) -> Predictor:
    from breakhis_core.inference.predict import Predictor

    del model_ref, calibration_mtime  # the cache key only: another run, a refitted calibration
    return Predictor.from_run(_run, stage, _cached_model(path, mtime))


def model_version(run: registry.Run, stage: str) -> tuple[str, str, float, float]:
    """What a prediction by a registry model depends on, as a cache key: (model id, model file, its modification
    time, the modification time of the run's calibration.json) — a replaced file or a refitted calibration changes it."""
    path = Path(run.models[stage]).resolve()
    return registry.model_id(run, stage), str(path), _mtime(path), _mtime(RunDir(run.path).calibration_file)


def predictor_for(run: registry.Run, stage: str) -> Predictor:
    """The cached ``Predictor.from_run`` of a registry model (one per model and process): the run's
    magnification, stain normalisation and calibration (temperature, decision threshold), as the CLI uses it.

    Raises:
        ModelFileError: when the model file cannot be loaded.
    """
    return _cached_predictor(*model_version(run, stage), run, stage)


def router_for(run: registry.Run, stage: str) -> ModelRouter:
    """The router ``breakhis predict --model`` builds (``ModelRouter.serving``) over the cached predictor of a
    registry model, so each image's magnification is handled as the CLI handles it.

    Raises:
        ModelFileError: when the model file cannot be loaded.
    """
    from breakhis_core.inference.predict import ModelRouter

    return ModelRouter.serving(predictor_for(run, stage))


@st.cache_resource(show_spinner=False)
def _inference_queue() -> InferenceQueue:
    """The process's one queue at the models, shared by every session."""
    return InferenceQueue()


@contextmanager
def model_turn() -> Iterator[None]:
    """Hold the process's one turn at the models for the block (other sessions' passes wait); while this
    session waits, its page shows its place in line (removed once the turn comes; a page stopped meanwhile, by a
    reload or another click, leaves the line at the next redraw)."""
    place = st.empty()

    def show(ahead: int) -> None:
        place.info(f"Other users' images are being analysed: {ahead} request(s) ahead of yours. Yours start "
                   "automatically; keep this page open.", icon=":material/hourglass_top:")

    with _inference_queue().turn(on_wait=show):
        place.empty()
        yield


@st.cache_resource(show_spinner="Looking for a GPU…")
def device_info() -> runtime.DeviceInfo:
    """This machine's devices and the precision "auto" picks on it (probed once per server)."""
    return runtime.device_info()


def model_choices(runs: list[registry.Run]) -> list[str]:
    """Model ids ("<run_id>:<stage>") of every usable model of ``runs`` (``registry.usable_models``)."""
    return [registry.model_id(run, stage) for run, stage in registry.usable_models(runs)]


def active_model() -> tuple[registry.Run, str] | None:
    """The registry's active model (``default.json``, else the newest done run's model that needs no confirmation
    of its learning check: ``default_model.get_default``), or None."""
    try:
        return default_model.get_default(runs_root())
    except BreakHisError:
        return None


ACTIVE = "__active__"
"""Sidebar choice meaning "whatever model is active in the registry" (follows Models → Set as active)."""


def session_model() -> tuple[registry.Run, str] | None:
    """The model this browser session uses: its sidebar choice, else the active model."""
    ref = st.session_state.get("model_ref")
    if ref and ref != ACTIVE:
        try:
            return registry.resolve_model(ref, runs_root())
        except BreakHisError:
            pass
    return active_model()


def set_session_model(ref: str = ACTIVE) -> None:
    """Make ``ref`` the session's model (call from a button callback, before the sidebar is drawn)."""
    st.session_state["model_ref"] = ref


# ----------------------------------------------------------------------------- results


def test_predictions(run: registry.Run):
    """The run's ``test_predictions.csv`` as a DataFrame (columns ``metrics.PREDICTION_TABLE_COLUMNS`` and each
    stage's ``metrics.stage_column``), or None when it is missing or unreadable."""
    import pandas as pd

    path = RunDir(run.path).test_predictions_file
    try:
        return pd.read_csv(path)
    except (OSError, ValueError):
        return None


def calibration(run: registry.Run) -> dict | None:
    """The run's ``calibration.json`` (temperature, threshold and test-split calibration per stage), or None."""
    from breakhis_core.files import read_json

    return read_json(RunDir(run.path).calibration_file)
