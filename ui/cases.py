"""The case store as the pages use it: one open database per process (``st.cache_resource``, keyed by its URL)
and a ``CaseService`` for the signed-in user and role (``ui.signin``), which enforces what the role may do."""

from __future__ import annotations

import streamlit as st

from breakhis_core.cases.database import CaseDatabase, database_url
from breakhis_core.cases.imagefiles import ImageFiles
from breakhis_core.cases.layout import images_dir
from breakhis_core.cases.records import Actor, NewCase
from breakhis_core.cases.service import CaseService
from ui import signin
from ui.models import runs_root

LOCAL_USER = "local user"
"""Who acts without sign-in (the desktop default)."""
CASE_PARAM = "case"
"""The query parameter that opens a case on the Cases page (``?case=<accession number>``)."""


@st.cache_resource(show_spinner="Opening the case database…")
def _database(url: str) -> CaseDatabase:
    return CaseDatabase.open(url)


def case_service() -> CaseService:
    """The case service for this session's user.

    Raises:
        DatabaseError: when the database cannot be opened (not cached: the next run tries again).
    """
    root = runs_root()
    actor = Actor(signin.current_user() or LOCAL_USER, signin.current_role())
    return CaseService.open(actor, root, _database(database_url(root)))


def keep_upload(new: NewCase) -> None:
    """Put the images of ``new`` (and their heat maps) on disk before the database is asked, so that an upload
    outlives a database that is down (``ImageFiles.keep``; the save that follows finds them there).

    Raises:
        ImageDecodeError, CaseError, DiskSpaceError: see ``ImageFiles.store``.
    """
    ImageFiles(images_dir(runs_root())).keep(new.images)
