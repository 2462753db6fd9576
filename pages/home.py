"""Home: the model in use and its card summary, the device, where data and runs live, first steps."""

import streamlit as st

from breakhis_core.training import jobs
from breakhis_core.lab import paths
from breakhis_core.runs import registry
from breakhis_core.errors import BreakHisError
from ui import display, frame, models, signin

frame.require_frame()
signin.require_role("viewer", "using the app")

st.title("Breast histopathology: benign or malignant")
st.markdown(
    "Upload microscopy images of breast tissue (BreakHis style, H&E at 40×–400×) on **Diagnose**: "
    "a VGG16 network gives the probability that each image is malignant, and a heat map (Grad-CAM) "
    "shows which regions drove that estimate."
)

chosen = models.session_model()
left, right = st.columns([3, 2], gap="large")

with left:
    st.subheader("Model in use")
    if chosen is None and display.no_active_model_notice():
        st.page_link("pages/models.py", label="Open Models", icon=":material/inventory_2:")
    elif chosen is None:
        st.info("There is no model yet. Diagnose needs one: train a model or import a `.keras` file.",
                icon=":material/lightbulb:")
        st.markdown(
            "**What to do first**\n\n"
            "1. **Train** a model on a BreakHis folder under one of the data folders listed on the right "
            "(the app's own sample, `breakhis` in the `samples` folder, works for a first try), or\n"
            "2. **Import** a trained `.keras` model file on the Models page (it is checked and loaded in safe mode).\n\n"
            "Until you choose one on the Models page, the newest finished model whose learning check did not fail (a "
            "model that did not learn, or whose learning is undetermined, never becomes active by itself) is the "
            "active one; then open **Diagnose**."
        )
        if signin.may("trainer"):
            a, b = st.columns(2)
            a.page_link("pages/train.py", label="Train a model", icon=":material/model_training:")
            b.page_link("pages/models.py", label="Import a .keras file", icon=":material/upload_file:")
        else:
            st.caption("Training and importing need the trainer role: ask the lab's administrator.")
    else:
        run, stage = chosen
        st.markdown(f"**`{registry.model_id(run, stage)}`**")
        display.learning_notice(run.learning(stage), registry.model_id(run, stage))
        try:
            card = registry.build_card(run)
            card_text = display.card_markdown(run)
        except BreakHisError as exc:
            display.show_error(exc)
            card = {}
        stage_metrics = ((run.metrics or {}).get("models") or {}).get(stage) or {}
        overall = stage_metrics.get("overall") or {}
        if run.imported:
            imported = run.info.get("imported") or {}
            st.caption(f"Imported from `{imported.get('source_file', '?')}`: its training data, split and test "
                       "metrics are unknown, so its accuracy cannot be shown.")
        elif not overall:
            st.caption("This model has no test metrics (the run was not evaluated).")
        else:
            a, b = st.columns(2)
            patient = overall.get("patient_recognition_rate")
            image = overall.get("image_accuracy")
            a.metric("Patient-level accuracy", display.percent((patient or {}).get("value")),
                     help="Patient recognition rate on the test split: each patient's share of correctly "
                     "classified images, averaged over patients. " + display.metric_text(patient))
            b.metric("Image-level accuracy", display.percent((image or {}).get("value")),
                     help="Correctly classified test images / all test images. " + display.metric_text(image))
            st.caption(f"95 % confidence intervals (patients resampled): patient-level {display.metric_text(patient)}; "
                       f"image-level {display.metric_text(image)}. Test split: {overall.get('n_images')} images "
                       f"of {overall.get('n_patients')} patients.")
        split = card.get("split") or {}
        if split:
            st.markdown(f"**Split protocol:** {split.get('description')}")
            if split.get("leaky"):
                st.warning("Image-level split: images of one patient were in training and test, so these "
                           "accuracies are optimistic.", icon=":material/warning:")
        data = card.get("data") or {}
        if data:
            st.markdown(f"**Trained on:** {data.get('images')} images of {data.get('patients')} patients, "
                        f"magnification {data.get('magnification')}; created {run.created[:16].replace('T', ' ')}.")
        a, b = st.columns(2)
        a.page_link("pages/diagnose.py", label="Diagnose images with this model", icon=":material/biotech:")
        if b.button("Try it on the sample images", icon=":material/science:", key="home_try_sample",
                    help="Opens Diagnose on 8 real BreakHis images shipped with the app."):
            st.session_state[display.TRY_SAMPLE_KEY] = True
            st.switch_page("pages/diagnose.py")
        with st.expander("Full model card"):
            if card:
                st.markdown(card_text)

with right:
    st.subheader("This installation")
    device = models.device_info()
    st.markdown(f"**Device:** {device.summary}")
    st.markdown(f"**Compute precision** (mixed precision *auto*, for training and diagnosis): "
                f"`{device.precision.policy}` — {device.precision.reason}. Saved models stay float32; "
                "choose *off* on the Train page for float32.")
    root = models.runs_root()
    runs = registry.list_runs(root)
    st.markdown(f"**Runs and models:** `{root}` ({len(runs)} run{'s' if len(runs) != 1 else ''})")
    roots = paths.configured_data_roots()
    lines = "\n".join(f"- `{r}`" + ("" if r.is_dir() else " (missing)") for r in roots)
    st.markdown(f"**Data folders** (training reads only from these):\n{lines}")
    st.markdown(f"**App folder** (data, runs, cases, logs): `{paths.app_home()}`")
    st.caption(f"Set with the environment variables `{paths.HOME_ENV}`, `{paths.RUNS_ENV}` and "
               f"`{paths.DATA_ROOTS_ENV}`.")
    job = jobs.current_job(root)
    if job:
        st.info(f"A training job is running: run `{job.run_id}`.", icon=":material/hourglass_top:")
        if signin.may("trainer"):
            st.page_link("pages/train.py", label="Follow it on Train", icon=":material/monitoring:")
