"""The data sets the Train page offers: ``breakhis_core.data.discovery`` under the data roots, cached for a while.

Environment (read by ``breakhis_core``): ``BREAKHIS_DATA_ROOTS``, ``os.pathsep``-separated folders the Train page
may read data from (default: ``./data`` and ``../shared`` beside the app; ``paths.data_roots``).
"""

from __future__ import annotations

import streamlit as st

from breakhis_core.data import discovery

DISCOVERY_TTL_S = 30
"""Seconds a listing is reused before the data roots are walked again (new folders show up after at most this)."""


@st.cache_data(ttl=DISCOVERY_TTL_S, show_spinner="Looking for data sets…")
def discover(roots: tuple[str, ...]) -> list[discovery.Candidate]:
    """``discovery.discover(roots)``, shared by every session for ``DISCOVERY_TTL_S`` seconds."""
    return discovery.discover(roots)
