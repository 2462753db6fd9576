"""BreakHis decision support: the router and frame of the Streamlit app (`make run`).

Sets the page config, draws the shared sidebar model picker and the research-use notice,
then runs the page chosen in ``st.navigation``. Pages live in ``pages/``; they draw and call
``breakhis_core``, with the shared UI helpers of the ``ui`` package beside this file.
"""

import streamlit as st

from breakhis_core import runtime

runtime.load_tensorflow()  # once per server, before anything else imports it: TensorFlow's start-up lines stay off stderr
runtime.size_serving_thread_pools()  # model passes take turns (ui.models.model_turn), each on every core

from breakhis_core.lab import paths
from breakhis_core.runs import registry  # noqa: E402
from breakhis_core.errors import BreakHisError  # noqa: E402
from breakhis_core.lab.logs import setup_logging  # noqa: E402
from ui import frame, models, signin  # noqa: E402

ACTIVE = models.ACTIVE
st.set_page_config(page_title="BreakHis decision support", page_icon=str(frame.ASSETS / "icon.svg"), layout="wide")
st.logo(str(frame.ASSETS / "logo.svg"), icon_image=str(frame.ASSETS / "icon.svg"), size="large")
try:
    paths.ensure_app_home()  # data, runs (the case store in runs/cases) and logs live there
except BreakHisError as exc:
    st.error(f"The app cannot start: {exc}", icon=":material/error:")
    st.stop()
# the library's records on the server's stderr and in the app home's logs/app.log, at $BREAKHIS_LOG_LEVEL
setup_logging(log_file=paths.home_folder("logs") / "app.log")

signin.sign_in_gate()
page = st.navigation({
    section: [st.Page(entry.script, title=entry.title, icon=entry.icon, default=entry.script == frame.HOME)
              for entry in entries]
    for section, entries in frame.pages_for(signin.current_role()).items()
})


def model_picker() -> None:
    """The session's model: the active one (default) or any model of the registry."""
    try:
        runs = registry.list_runs(models.runs_root())
    except (BreakHisError, OSError) as exc:
        st.sidebar.error(f"Cannot read the runs folder: {exc}")
        return
    active = models.active_model()
    choices = models.model_choices(runs)
    if st.session_state.get("model_ref") not in [ACTIVE, *choices]:
        st.session_state["model_ref"] = ACTIVE
    active_id = registry.model_id(*active) if active else None

    by_id = {run.run_id: run for run in runs}

    def label(ref: str) -> str:
        if ref == ACTIVE:
            return f"Active model: {active_id}" if active_id else "Active model: none yet"
        run_id, stage = registry.parse_model_ref(ref)
        learning = by_id[run_id].learning(stage)
        return f"{ref} ({learning.label})" if learning.needs_confirmation else ref

    with st.sidebar:
        st.selectbox(
            "Model used on these pages", [ACTIVE, *choices], key="model_ref", format_func=label,
            help="Models are named <run>:<stage>. The active model is set on the Models page for everyone; "
            "a choice here applies to this browser tab only.",
        )
        if not choices:
            st.caption("No model yet: train one or import a .keras file.")


model_picker()
frame.notice()
with frame.framed():
    page.run()
