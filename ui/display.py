"""What every page draws the same way: errors, percentages, metrics with their CIs, model cards, uploader file types,
a model's learning-check state, the confirmation to activate a model not seen to learn, the heat-map legend."""

from __future__ import annotations

import streamlit as st

from breakhis_core.runs import registry
from breakhis_core.evaluation.learning_check import LearningStatus
from breakhis_core.runs.status import RunStatus
from ui.models import runs_root

UPLOAD_TYPES = ["png", "jpg", "jpeg", "tif", "tiff", "bmp", "zip"]
"""File types offered by the image uploaders (a zip holds images of those types; ``breakhis_core.data.uploads``)."""
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


def learning_notice(status: LearningStatus, model: str, brief: bool = False) -> None:
    """A model's learning-check state where its verdicts are shown (``learning_check.LearningStatus``): a warning
    when it did not learn or is undetermined, a caption when it learned or was never checked. ``brief``: the state
    alone, for a narrow column beside the model card that gives the reasons."""
    if status.needs_confirmation and brief:
        st.warning(f"Learning check: **{status.label}** (the model card says why).", icon=":material/warning:")
    elif status.needs_confirmation:
        st.warning(status.warning(model), icon=":material/warning:")
    else:
        st.caption(status.warning(model) or f"Learning check of `{model}`: {status.text} (its held-out patients "
                                                "show that it ranks malignant above benign images).")


def heatmap_legend() -> None:
    """The heat maps' colour scale and what it means (``explain.colour_bar``, ``explain.LEGEND_TEXT``)."""
    from breakhis_core.inference.explain import LEGEND_TEXT, colour_bar

    st.image(colour_bar(), caption=LEGEND_TEXT.capitalize(), width=320)


def confirmed_activation(status: LearningStatus, model: str, key: str) -> bool:
    """Whether ``model`` may be made active now: always when its learning check needs no confirmation; otherwise
    only once the person ticks a box that names its state (so activating it is never a single click)."""
    if not status.needs_confirmation:
        return True
    return st.checkbox(f"Its learning check says “{status.label}”: make `{model}` the active model anyway", key=key)


def no_active_model_notice() -> bool:
    """When models exist but none is active because each one's learning check needs a confirmation, say so (a
    warning naming them and their state) and return True; return False (nothing drawn) otherwise."""
    waiting = [f"`{registry.model_id(run, run.best_stage)}` ({run.learning(run.best_stage).label})"
               for run in registry.list_runs(runs_root()) if run.status == RunStatus.DONE and run.best_stage and not run.learned_stage]
    if waiting:
        st.warning(f"No model is active: the learning check of each finished model says it did not learn or cannot "
                   f"tell ({', '.join(waiting)}), and such a model is never made active automatically. Train again "
                   "(more patients), pick one in the sidebar for this tab, or make one active on the Models page "
                   "after reading its card.", icon=":material/warning:")
    return bool(waiting)
