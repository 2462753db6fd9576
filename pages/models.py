"""Models: the registry as a table, model cards, the active model, import of a .keras file, export, delete,
the activation cache's disk use, and cross-validation experiments (one row each) with the choice of the model
to deploy from them."""

import tempfile
from pathlib import Path

import pandas as pd
import streamlit as st

from breakhis_core.runs import default_model, registry, transfer
from breakhis_core.training import cleanup
from breakhis_core.training import crossval
from breakhis_core.files import format_bytes
from breakhis_core.config import STAGE_LABELS, STAGES
from breakhis_core.errors import BreakHisError
from breakhis_core.runs.status import RunStatus
from ui import display, frame, models, signin

frame.require_frame()
signin.require_role("trainer", "managing models (import, export, delete, set active)")

root = models.runs_root()
st.title("Models")
st.caption(f"Every training run and imported model in `{root}`. A model is named `<run>:<stage>`: "
           "*frozen* after stage 1, *finetuned* after stage 2.")

for message in st.session_state.pop("models_messages", []):
    kind, text = message
    (st.success if kind == "ok" else st.error)(text)


def _set_active(run_id: str, stage: str) -> None:
    try:
        default_model.set_default(run_id, stage, root)
        models.set_session_model()
        st.session_state["models_messages"] = [("ok", f"`{run_id}:{stage}` is now the active model.")]
    except BreakHisError as exc:
        st.session_state["models_messages"] = [("error", str(exc))]


def _delete(run_id: str) -> None:
    try:
        freed = cleanup.delete_run(run_id, root)
        freed_text = f", with {format_bytes(freed)} of activation cache that only it used" if freed else ""
        st.session_state["models_messages"] = [("ok", f"Run `{run_id}` was deleted{freed_text}.")]
        st.session_state.pop("models_selected", None)
    except BreakHisError as exc:
        st.session_state["models_messages"] = [("error", str(exc))]


def _deploy(experiment_id: str, ref: str) -> None:
    try:
        run_id, stage = registry.parse_model_ref(ref)
        chosen = crossval.choose_deployable(crossval.load_experiment(experiment_id, root), run_id, stage)
        models.set_session_model()
        st.session_state["models_messages"] = [("ok", f"`{ref}` ({chosen['role']}) is now the active model; the model "
                                                      "cards of the experiment say so.")]
    except BreakHisError as exc:
        st.session_state["models_messages"] = [("error", str(exc))]


def _clear_cache() -> None:
    try:
        freed = cleanup.clear_cache(root)
        st.session_state["models_messages"] = [("ok", f"Activation cache deleted: {format_bytes(freed)} freed.")]
    except BreakHisError as exc:
        st.session_state["models_messages"] = [("error", str(exc))]


# ----------------------------------------------------------------------------- import

with st.expander("Import a .keras model file", icon=":material/upload_file:"):
    st.caption("The file is checked before it is registered: it is loaded in Keras safe mode (no code is run), "
               "and must take RGB images and return benign/malignant probabilities.")
    uploaded = st.file_uploader("Model file (.keras)", type=["keras"], key="models_import_file")
    name = st.text_input("Name (optional)", key="models_import_name", placeholder="e.g. lab-vgg16-2024")
    if st.button("Import", icon=":material/download_done:", disabled=uploaded is None, key="models_import"):
        with tempfile.TemporaryDirectory(prefix="breakhis-import-") as folder:
            path = Path(folder) / Path(uploaded.name).name
            path.write_bytes(uploaded.getvalue())
            try:
                with st.spinner("Checking the model…"):
                    run = transfer.import_model(path, root, name=name.strip() or None)
                st.session_state["models_messages"] = [("ok", f"Imported as `{registry.model_id(run, 'finetuned')}`.")]
                st.session_state["models_selected"] = run.run_id
                st.rerun()
            except BreakHisError as exc:
                display.show_error(exc)

cache_folder, cache_parts, cache_bytes = cleanup.cache_usage(root)
if cache_parts:
    with st.expander(f"Activation cache: {format_bytes(cache_bytes)} on disk", icon=":material/storage:"):
        st.caption(f"The cached training path stores the frozen layers' activations in `{cache_folder}` "
                   f"({cache_parts} part(s)), so that a rerun on the same images and weights skips that work. "
                   "Deleting a run deletes the parts only it used; this button deletes all of them "
                   "(a later run rebuilds what it needs). Refused while training runs.")
        st.button("Delete the activation cache", icon=":material/delete_sweep:", key="models_clear_cache",
                  on_click=_clear_cache)

# ----------------------------------------------------------------------------- table

runs = registry.list_runs(root)
if not runs:
    st.info("No runs yet: train a model on the Train page, or import a `.keras` file above.", icon=":material/lightbulb:")
    st.page_link("pages/train.py", label="Train a model", icon=":material/model_training:")
    st.stop()

active = models.active_model()
active_id = registry.model_id(*active) if active else None
rows = []
for run in runs:
    row = run.headline()
    rows.append({
        "active": "★" if active and active[0].run_id == run.run_id else "",
        "run": row["run"],
        "task": row["task"],
        "status": row["status"],
        "date": row["date"],
        "data": row["data"],
        "magnification": row["magnification"] or "",
        "split": (row["split"] or "") + (" (leaky)" if row["leaky"] else ""),
        "learned": row["learning_check"] or "",
        "patient-level accuracy": row["patient_recognition_rate"],
        "image-level accuracy": row["image_accuracy"],
    })
st.dataframe(
    pd.DataFrame(rows), hide_index=True, width="stretch",
    column_config={
        "active": st.column_config.TextColumn("", width=30, help="The active model's run"),
        "status": st.column_config.TextColumn(width="small"),
        "task": st.column_config.TextColumn(
            width="small", help="malignancy: benign or malignant; subtype: the 8 BreakHis tumour types (its accuracies "
            "here are on P(malignant), the sum of the malignant types; the model card gives the type metrics)"),
        "magnification": st.column_config.TextColumn("mag.", width="small"),
        "learned": st.column_config.TextColumn(
            "learning check", help="Judged on the held-out patients: a model whose predictions are all one class, or "
            "whose ROC AUC's patient-resampled 95 % CI lies at or below 0.55, did not learn; with too few patients "
            "(or a CI reaching 0.5) it is undetermined. Neither is made the active model automatically."),
        "patient-level accuracy": st.column_config.ProgressColumn(
            "patient acc.", format="percent", min_value=0, max_value=1, width="small",
            help="Patient-level accuracy (recognition rate) on the test split; finetuned model, else frozen"),
        "image-level accuracy": st.column_config.ProgressColumn(
            "image acc.", format="percent", min_value=0, max_value=1, width="small",
            help="Image-level accuracy on the test split; finetuned model, else frozen"),
    },
)
if active_id:
    st.caption(f"Active model: `{active_id}` (used by everyone unless they pick another in the sidebar).")

# ----------------------------------------------------------------------------- experiments

experiments = crossval.list_experiments(root)
if experiments:
    st.subheader("Cross-validation experiments")
    st.caption("One row per experiment: accuracies are pooled out-of-fold (every patient predicted once, by the fold "
               "model that did not train on it). Its fold runs (split `cvK:k`) and final model are rows of the table above.")
    st.dataframe(pd.DataFrame([
        {k: v for k, v in e.headline().items() if k != "model"} for e in experiments
    ]), hide_index=True, width="stretch", column_config={
        "patient_recognition_rate": st.column_config.ProgressColumn("patient acc.", format="percent", min_value=0,
                                                                    max_value=1, width="small"),
        "image_accuracy": st.column_config.ProgressColumn("image acc.", format="percent", min_value=0, max_value=1,
                                                          width="small"),
        "roc_auc": st.column_config.NumberColumn("AUC", format="%.3f", width="small"),
    })
    chosen_id = st.selectbox("Experiment", [e.experiment_id for e in experiments], key="models_experiment")
    experiment = next(e for e in experiments if e.experiment_id == chosen_id)
    refs = {f"{run.run_id}:{stage}": f"{experiment.role(run.run_id)}: {run.run_id}:{stage}"
            for run in experiment.runs() for stage in reversed(STAGES) if stage in run.models}
    if refs and experiment.status == RunStatus.DONE:
        d1, d2 = st.columns([3, 1], vertical_alignment="bottom")
        pick = d1.selectbox("Model to deploy from this experiment", list(refs), format_func=refs.get,
                            key=f"models_deploy_{chosen_id}",
                            help="A fold's model was tested on its own fold's patients; a final model trained on all "
                                 "patients has no test split, and the pooled cross-validation figures are its estimate.")
        picked_run, picked_stage = registry.parse_model_ref(pick)
        picked = next(r for r in experiment.runs() if r.run_id == picked_run).learning(picked_stage)
        display.learning_notice(picked, pick)
        deployable = display.confirmed_activation(picked, pick, key=f"models_confirm_deploy_{pick}")
        d2.button("Deploy", icon=":material/rocket_launch:", key="models_deploy", on_click=_deploy,
                  args=(chosen_id, pick), width="stretch", disabled=not deployable)
        if experiment.deployed:
            st.caption(f"Deployed from this experiment: `{experiment.deployed['run_id']}:{experiment.deployed['stage']}` "
                       f"({experiment.deployed['role']}, chosen {experiment.deployed['chosen'][:16].replace('T', ' ')}).")
    else:
        st.caption(f"Status {experiment.status}: a model can be deployed when every fold has finished.")

# ----------------------------------------------------------------------------- one run

ids = [run.run_id for run in runs]
if st.session_state.get("models_selected") not in ids:
    st.session_state["models_selected"] = active[0].run_id if active else ids[0]
selected = st.selectbox("Run", ids, key="models_selected")
run = next(r for r in runs if r.run_id == selected)

left, right = st.columns([3, 1], gap="large")
with right:
    st.markdown("**Actions**")
    if run.models:
        stages = list(reversed([s for s in STAGES if s in run.models]))
        stage = st.radio("Model", stages, key=f"models_stage_{run.run_id}", horizontal=True,
                         format_func=STAGE_LABELS.get)
        is_active = active_id == registry.model_id(run, stage)
        learning = run.learning(stage)
        display.learning_notice(learning, registry.model_id(run, stage), brief=True)
        confirmed = is_active or display.confirmed_activation(learning, registry.model_id(run, stage),
                                                              key=f"models_confirm_active_{run.run_id}_{stage}")
        st.button("Active model" if is_active else "Set as active", icon=":material/star:",
                  disabled=is_active or not confirmed, key="models_set_active", on_click=_set_active,
                  args=(run.run_id, stage), width="stretch")
    else:
        st.caption(f"This run has no model file yet (status {run.status}).")
    st.download_button("Export (.zip)", lambda r=run: transfer.export_run(r), file_name=f"{run.run_id}.zip",
                       mime="application/zip", icon=":material/archive:", key="models_export", on_click="ignore",
                       width="stretch", help="The run folder without checkpoints: models, config, metrics, card.")
    with st.container(border=True):
        confirm = st.checkbox(f"Delete run {run.run_id} and its models", key=f"models_confirm_{run.run_id}")
        st.button("Delete", icon=":material/delete:", type="primary", disabled=not confirm, key="models_delete",
                  on_click=_delete, args=(run.run_id,), width="stretch")
with left:
    if run.error:
        st.warning(f"{run.status}: {run.error}", icon=":material/warning:")
    try:
        with st.container(height=720, border=True):
            st.markdown(display.card_markdown(run))
    except BreakHisError as exc:
        display.show_error(exc)
