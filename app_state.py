"""What the pages share: the router frame, cached models, the session's model, data-set listing, drawing helpers.

UI plumbing only: every decision about data, paths, uploads, models and metrics is made in
``breakhis_core``; this module caches loaded models per process (``st.cache_resource``), keeps the
session's chosen model in ``st.session_state`` and lists the data sets the Train page offers.

Environment (read by ``breakhis_core``):

- ``BREAKHIS_RUNS``: the runs folder (default ``./runs``; ``registry.runs_dir``).
- ``BREAKHIS_DATA_ROOTS``: ``os.pathsep``-separated folders the Train page may read data from
  (default: ``./data`` and ``../shared`` beside the app; ``paths.data_roots``).
"""

from __future__ import annotations

import csv
import os
import runpy
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from breakhis_core import default_model, model_loading, registry, runtime
from breakhis_core.config import STAGES
from breakhis_core.data import parse_breakhis_name
from breakhis_core.errors import BreakHisError
from breakhis_core.images import IMAGE_SUFFIXES
from breakhis_core.rundir import RunDir

APP_DIR = Path(__file__).resolve().parent
ASSETS = APP_DIR / "assets"
NOTICE = "Decision support for research use only, not a diagnosis: a pathologist reviews every result."

UPLOAD_TYPES = ["png", "jpg", "jpeg", "tif", "tiff", "bmp", "zip"]
"""File types offered by the image uploaders (a zip holds images of those types; ``breakhis_core.uploads``)."""
DISCOVERY_MAX_FILES = 200_000
"""Most files looked at when listing the data sets under the data roots."""
DISCOVERY_FOLDER_DEPTH = 2
"""Folders offered as data sets: at most this many levels below a data root."""


# ----------------------------------------------------------------------------- the router frame

_frame = threading.local()


@contextmanager
def framed():
    """Marks the page run by ``app.py`` (``with app_state.framed(): page.run()``)."""
    _frame.active = True
    try:
        yield
    finally:
        _frame.active = False


def require_frame() -> None:
    """Run a page through the router when Streamlit ran it without ``app.py``: first line of every page.

    Until the first ``st.navigation`` call of a process, Streamlit runs a ``pages/`` file requested
    by URL (``/diagnose`` as a server's very first request; every AppTest run) directly, in its
    legacy multipage mode: no page config, sidebar or notice. Then ``app.py`` is run here, in the
    same script run (so no click or upload is lost): its ``st.navigation`` ends the legacy mode and
    runs this page again inside the frame; the outer, frameless run then stops.
    """
    if getattr(_frame, "active", False):
        return
    runpy.run_path(str(APP_DIR / "app.py"), run_name="__main__")
    st.stop()


# ----------------------------------------------------------------------------- sign-in and roles


def sign_in_enabled() -> bool:
    """Whether ``.streamlit/secrets.toml`` (or ``secrets.files``) configures sign-in (an ``[auth]`` section)."""
    try:
        return "auth" in st.secrets
    except Exception:  # no secrets file, or an unreadable one: no sign-in (Streamlit reports a bad file itself)
        return False


def current_user() -> str | None:
    """The signed-in user's e-mail address (its ``sub`` when the provider sends none), or None without sign-in."""
    if not sign_in_enabled() or not st.user.is_logged_in:
        return None
    return str(st.user.get("email") or st.user.get("sub") or "") or None


def current_role() -> str | None:
    """The user's role: "trainer" without sign-in (the local user), else from the roles file (None = no role)."""
    from breakhis_core import access

    if not sign_in_enabled():
        return access.TRAINER
    try:
        return access.load_roles(runs_root=runs_root()).role_of(current_user())
    except BreakHisError as exc:
        show_error(exc)
        return None


def require_role(needed: str, what: str) -> None:
    """Stop the page, saying why, unless the user's role allows ``needed`` ("viewer" or "trainer")."""
    from breakhis_core import access

    role = current_role()
    if access.allows(role, needed):
        return
    who = current_user() or "this account"
    has = f"the {role} role" if role else "no role"
    st.error(f"{what.capitalize()} needs the {needed} role; {who} has {has}. Ask the lab's administrator to add "
             f"you to {access.roles_path(runs_root())} ({needed} = [...]).", icon=":material/lock:")
    st.stop()


def sign_in_gate() -> None:
    """With sign-in configured: a sign-in screen until the user is signed in, then who they are in the sidebar."""
    if not sign_in_enabled():
        return
    if not st.user.is_logged_in:
        st.title("BreakHis decision support")
        st.write("Sign in with your hospital account to use the app.")
        st.button("Sign in", icon=":material/login:", on_click=st.login, type="primary", key="sign_in")
        st.stop()
    with st.sidebar:
        role = current_role()
        st.caption(f":material/account_circle: {current_user()} · {role or 'no role'}")
        st.button("Sign out", icon=":material/logout:", on_click=st.logout, key="sign_out")


# ----------------------------------------------------------------------------- settings


def runs_root() -> Path:
    """The runs folder, absolute (``$BREAKHIS_RUNS`` or ``./runs``)."""
    return registry.runs_dir().resolve()


@dataclass(frozen=True)
class Candidate:
    """A file or folder under a data root that the Train page offers.

    Attributes:
        path: absolute, resolved.
        kind: "folder" (images below it), "manifest" (CSV with path,label), "folds" (Folds.csv)
            or "weights" (a ``.h5`` file).
        images: BreakHis-named image files below a folder (0 for files).
        label: what the select box shows, e.g. ``shared/breakhis_sample (folder, 37 images)``.
        depth: levels below its data root (0 = the root itself).
    """

    path: str
    kind: str
    images: int
    label: str
    depth: int = 0


def _is_breakhis(name: str) -> bool:
    try:
        parse_breakhis_name(name)
        return True
    except BreakHisError:
        return False


def _csv_kind(path: Path) -> str | None:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            header = {c.strip().lower() for c in next(csv.reader(handle), [])}
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    if {"path", "label"} <= header:
        return "manifest"
    if {"fold", "grp", "filename"} <= header:
        return "folds"
    return None


@st.cache_data(ttl=30, show_spinner="Looking for data sets…")
def discover(roots: tuple[str, ...]) -> list[Candidate]:
    """Folders holding BreakHis-named images (up to ``DISCOVERY_FOLDER_DEPTH`` below a root), manifest
    and Folds.csv files, and ``.h5`` weight files under the data roots; hidden entries skipped.

    Folders with more images come first; among equals, those one level below a root (the usual place
    of a data set), then the roots, then deeper ones.
    """
    found: list[Candidate] = []
    seen = 0
    for root_text in roots:
        root = Path(root_text)
        counts: dict[Path, int] = {}
        for folder, dirs, files in os.walk(root, followlinks=False):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            here = Path(folder)
            depth = len(here.relative_to(root).parts)
            n_images = 0
            for name in sorted(files):
                seen += 1
                if name.startswith("."):
                    continue
                suffix = Path(name).suffix.lower()
                if suffix in IMAGE_SUFFIXES:
                    n_images += _is_breakhis(name)
                elif suffix in (".csv", ".h5"):
                    file = here / name
                    kind = "weights" if suffix == ".h5" else _csv_kind(file)
                    if kind:
                        found.append(Candidate(str(file), kind, 0, f"{root.name}/{file.relative_to(root).as_posix()} ({kind})",
                                               len(file.relative_to(root).parts) - 1))
            if n_images:
                for level in range(min(depth, DISCOVERY_FOLDER_DEPTH) + 1):
                    ancestor = root.joinpath(*here.relative_to(root).parts[:level])
                    counts[ancestor] = counts.get(ancestor, 0) + n_images
            if seen > DISCOVERY_MAX_FILES:
                break
        for folder, n in sorted(counts.items()):
            shown = root.name if folder == root else f"{root.name}/{folder.relative_to(root).as_posix()}"
            depth = len(folder.relative_to(root).parts)
            found.append(Candidate(str(folder), "folder", n, f"{shown} (folder, {n} BreakHis images)", depth))
    order = {"folder": 0, "manifest": 1, "folds": 2, "weights": 3}
    return sorted(found, key=lambda c: (order[c.kind], -c.images, c.depth != 1, c.depth, c.label))


# ----------------------------------------------------------------------------- models


@st.cache_resource(max_entries=4, show_spinner="Loading the model…")
def _cached_model(path: str, mtime: float):
    del mtime  # part of the cache key only: a replaced file is loaded again
    return model_loading.load_model(path)


def load_model(path: str | Path):
    """The Keras model of a ``.keras`` file, loaded once per process (safe mode) and shared.

    Raises:
        ModelFileError: for a missing, corrupt or unsafe file.
    """
    path = Path(path).resolve()
    try:
        mtime = path.stat().st_mtime
    except OSError:
        mtime = 0.0
    return _cached_model(str(path), mtime)


@st.cache_resource(max_entries=8, show_spinner="Preparing the model…")
def _cached_predictor(path: str, mtime: float, model_ref: str, magnification: int | None, stain_norm: str):
    from breakhis_core.predict import Predictor

    return Predictor(_cached_model(path, mtime), model_ref, magnification, stain_norm=stain_norm)


def predictor_for(run: registry.Run, stage: str):
    """The cached ``Predictor`` of a registry model (one per model file and process), with the
    magnification and stain normalisation the run was trained with.

    Raises:
        ModelFileError: when the model file cannot be loaded.
    """
    path = Path(run.models[stage]).resolve()
    try:
        mtime = path.stat().st_mtime
    except OSError:
        mtime = 0.0
    magnification = run.config.magnification_filter if run.config else None
    stain_norm = run.config.stain_norm if run.config else "none"
    return _cached_predictor(str(path), mtime, registry.model_id(run, stage), magnification, stain_norm)


@st.cache_resource(show_spinner="Looking for a GPU…")
@st.cache_resource(show_spinner=False)
def device_info() -> runtime.DeviceInfo:
    """This machine's devices and the precision "auto" picks on it (probed once per server)."""
    return runtime.device_info()


def model_choices(runs: list[registry.Run]) -> list[str]:
    """Model ids ("<run_id>:<stage>") of every usable model file, newest run first."""
    return [
        registry.model_id(run, stage)
        for run in runs
        if run.status not in ("running", "queued", "broken")
        for stage in reversed(STAGES)
        if stage in run.models
    ]


def active_model() -> tuple[registry.Run, str] | None:
    """The registry's active model (``default.json``, else the newest done run), or None."""
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
    """The run's ``test_predictions.csv`` as a DataFrame (label, patient, magnification,
    p_malignant_<stage>), or None when it is missing or unreadable."""
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


def prediction_report(predictions, cases, images, labels, run: registry.Run, stage: str, alpha: float) -> str:
    """The self-contained HTML report (``breakhis_core.report``) of a Diagnose batch.

    Args:
        predictions: ``predict.Prediction`` per image, with heat maps.
        cases: ``predict.Case`` list.
        images: the ``(H, W, 3)`` uint8 RGB images, in the order of ``predictions``.
        labels: names shown for the images (zip members as ``archive.zip › member``).
        run, stage: the model used.
        alpha: heat-map opacity of the overlays.
    """
    from dataclasses import replace

    from breakhis_core.explain import overlay
    from breakhis_core.report import ReportCase, ReportItem, html_report

    items = [
        replace(ReportItem.from_prediction(p, image, overlay(image, p.heatmap, alpha) if p.heatmap is not None else None),
                name=label)
        for p, image, label in zip(predictions, images, labels)
    ]
    overall = ((((run.metrics or {}).get("models") or {}).get(stage) or {}).get("overall")) or {}
    card = {
        "model_id": registry.model_id(run, stage),
        "split_protocol": run.protocol or "unknown (imported model)",
        "leaky": bool(run.leaky),
        "patient_accuracy": (overall.get("patient_recognition_rate") or {}).get("value"),
        "image_accuracy": (overall.get("image_accuracy") or {}).get("value"),
    }
    return html_report(items, [ReportCase.from_case(c) for c in cases], card)


def comparison_report(images, labels, results: dict, alpha: float) -> str:
    """The HTML report (``breakhis_core.report``) of the Compare page's uploaded images.

    Args:
        images: the ``(H, W, 3)`` uint8 RGB images.
        labels: names shown for the images.
        results: model label → ``predict.Prediction`` per image (with heat maps), for the two models.
        alpha: heat-map opacity of the overlays.
    """
    from dataclasses import replace

    from breakhis_core.explain import overlay
    from breakhis_core.report import ReportItem, html_report

    models = list(results)
    items = [
        replace(ReportItem.from_prediction(p, image, overlay(image, p.heatmap, alpha) if p.heatmap is not None else None),
                name=f"{label} · {model}")
        for index, (image, label) in enumerate(zip(images, labels))
        for model in models
        for p in [results[model][index]]
    ]
    agree = sum(results[models[0]][i].verdict == results[models[-1]][i].verdict for i in range(len(images)))
    card = {"model_id": " vs ".join(f"{model} ({results[model][0].model_id})" if results[model] else model for model in models),
            "agreement": f"the two models agree on {agree} of {len(images)} image(s)"}
    return html_report(items, [], card, title="BreakHis model comparison")


def pdf_download(label: str, page, file_name: str, key: str, column=None) -> None:
    """A download button of ``page()`` (an HTML report) as PDF; disabled, saying why, without WeasyPrint."""
    from breakhis_core.report import pdf_report, pdf_unavailable

    reason = pdf_unavailable()
    (column or st).download_button(
        label, (lambda: pdf_report(page())) if reason is None else b"", file_name=file_name, mime="application/pdf",
        icon=":material/picture_as_pdf:", on_click="ignore", disabled=reason is not None, key=key,
        help=reason or "The same report as A4 pages, with the lab's name, logo and footer and a sign-off block.",
    )


# ----------------------------------------------------------------------------- shared drawing


def card_markdown(run: registry.Run) -> str:
    """The run's model card as Markdown, headings demoted to fit inside a page."""
    text = registry.card_markdown(registry.build_card(run))
    return "\n".join("###" + line[1:] if line.startswith("# ") else "####" + line[2:] if line.startswith("## ") else line
                     for line in text.splitlines())


def notice() -> None:
    """The research-use notice shown at the top of every page."""
    st.caption(f":material/info: {NOTICE}")


def show_error(exc: BaseException) -> None:
    """A user-caused error in plain words (no traceback)."""
    st.error(str(exc), icon=":material/error:")


def percent(value: float | None, digits: int = 1) -> str:
    """0.8734 → "87.3 %"; None → "n/a"."""
    return "n/a" if value is None else f"{100 * value:.{digits}f} %"


def metric_text(metric: dict | None) -> str:
    """``{"value", "ci"}`` → "87.3 % (95 % CI 80.1–93.0 %)"; "n/a" when undefined."""
    if not metric or metric.get("value") is None:
        return "n/a"
    ci = metric.get("ci")
    text = percent(metric["value"])
    return text + (f" (95 % CI {100 * ci[0]:.1f}–{100 * ci[1]:.1f} %)" if ci else "")
