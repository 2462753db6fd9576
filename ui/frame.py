"""The router frame: where the app's files are, the research-use notice, and pages run only inside ``app.py``."""

from __future__ import annotations

import runpy
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from breakhis_core.lab import access
from breakhis_core.notice import NOTICE

APP_DIR = Path(__file__).resolve().parent.parent
"""The app's folder: ``app.py``, ``pages/``, ``assets/`` and this package (the tree, or the installed ``breakhis_app``)."""
ASSETS = APP_DIR / "assets"


@dataclass(frozen=True)
class PageEntry:
    """A page of the navigation: its script (relative to the app's folder), title, icon and the role it needs."""

    script: str
    title: str
    icon: str
    needs: str


PAGES = {
    "Pathology": (
        PageEntry("pages/home.py", "Home", ":material/home:", access.VIEWER),
        PageEntry("pages/diagnose.py", "Diagnose", ":material/biotech:", access.VIEWER),
        PageEntry("pages/cases.py", "Cases", ":material/folder_shared:", access.VIEWER),
        PageEntry("pages/slides.py", "Slides", ":material/grid_view:", access.VIEWER),
        PageEntry("pages/compare.py", "Compare", ":material/compare:", access.VIEWER),
    ),
    "Models": (
        PageEntry("pages/train.py", "Train", ":material/model_training:", access.TRAINER),
        PageEntry("pages/models.py", "Models", ":material/inventory_2:", access.TRAINER),
    ),
}
"""The app's pages by section; each page checks its role again when it runs (``signin.require_role``)."""
HOME = "pages/home.py"
"""The default page, listed for everyone: to a user without a role it says what is missing."""


def pages_for(role: str | None) -> dict[str, list[PageEntry]]:
    """The sections and pages listed for ``role`` ("viewer", "trainer" or None): those it may open, and Home."""
    listed = {}
    for section, entries in PAGES.items():
        allowed = [entry for entry in entries if entry.script == HOME or access.allows(role, entry.needs)]
        if allowed:
            listed[section] = allowed
    return listed

_frame = threading.local()


@contextmanager
def framed():
    """Marks the page run by ``app.py`` (``with frame.framed(): page.run()``)."""
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


def notice() -> None:
    """The research-use notice shown at the top of every page."""
    st.caption(f":material/info: {NOTICE}")
