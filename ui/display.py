"""What every page draws the same way: errors, percentages, metrics with their CIs, model cards, uploader file types."""

from __future__ import annotations

import streamlit as st

from breakhis_core import registry

UPLOAD_TYPES = ["png", "jpg", "jpeg", "tif", "tiff", "bmp", "zip"]
"""File types offered by the image uploaders (a zip holds images of those types; ``breakhis_core.uploads``)."""
TRY_SAMPLE_KEY = "diagnose_sample"
"""Session key: True from a "try the sample images" button (Home, Diagnose) until the user uploads files."""


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


def card_markdown(run: registry.Run) -> str:
    """The run's model card as Markdown, headings demoted to fit inside a page."""
    text = registry.card_markdown(registry.build_card(run))
    return "\n".join("###" + line[1:] if line.startswith("# ") else "####" + line[2:] if line.startswith("## ") else line
                     for line in text.splitlines())
