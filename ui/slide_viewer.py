"""The whole-slide viewer of the Slides page: OpenSeadragon (``slide_viewer_frontend/``, BSD-3-Clause, its licence
beside it) as a Streamlit component, fed by ``breakhis_core.slides.viewer``: zoom and pan over the slide's Deep Zoom
tiles, the heat map and the tissue mask as overlays switched on and off in the viewer, a click returning the point."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st
import streamlit.components.v1 as components

from breakhis_core.slides.viewer import mask_overlay, png_data_uri, viewer_pyramid

FRONTEND = Path(__file__).with_name("slide_viewer_frontend")
_viewer = components.declare_component("slide_viewer", path=str(FRONTEND))


@st.cache_data(max_entries=4, show_spinner="Preparing the slide viewer…")
def _pyramid(path: str, modified: float, mpp: float | None) -> dict:
    """The slide's Deep Zoom tiles for the viewer, kept per file version (``modified``: its mtime) and pixel size."""
    return viewer_pyramid(path, mpp).to_viewer()


def show_viewer(slide: str, mpp: float | None, heatmap: np.ndarray, mask: np.ndarray, opacity: float,
                key: str) -> dict | None:
    """Draw the viewer of ``slide`` with an analysis' overlays.

    Args:
        slide: the slide file; mpp: its pixel size as analysed (None: from its metadata).
        heatmap: ``(h, w, 4)`` uint8 RGBA heat map at thumbnail size; mask: ``(h, w)`` bool tissue mask.
        opacity: heat-map opacity in [0, 1].
        key: the component's key (one per analysis).

    Returns:
        The last point clicked, ``{"x", "y"}`` in level-0 px (and a click count), or None before any click.

    Raises:
        SlideError, PixelSizeError: the slide cannot be read.
    """
    path = Path(slide)
    modified = path.stat().st_mtime if path.exists() else 0.0
    return _viewer(name=f"{path}:{modified}", pyramid=_pyramid(str(path), modified, mpp), heatmap=png_data_uri(heatmap),
                   mask=png_data_uri(mask_overlay(mask)), opacity=float(opacity), key=key, default=None)
