"""Train: configure a two-stage training run, start it as a background process, follow it live, cancel it."""

from pathlib import Path

import streamlit as st

from breakhis_core.training import crossval, jobs
from breakhis_core.runs import default_model, registry
from breakhis_core.lab import paths
from breakhis_core.cases.dataset import export_dataset
from breakhis_core.cases.layout import cases_dir, datasets_dir
from breakhis_core.config import DEFAULT_THRESHOLD, DEVICES, NAMED_WEIGHTS, OFFICIAL_FOLDS, STAGES, TrainConfig, config_field
from breakhis_core.errors import BreakHisError
from breakhis_core.task import TASKS
from breakhis_core.models.backbones import BACKBONES, DEFAULT_BACKBONE
from breakhis_core.models.weights import imagenet_weights_cache
from breakhis_core.runs.rundir import RunDir
from breakhis_core.runs.status import LIVE, RunStatus
from ui import cases as case_store
from ui import charts, datasets, display, frame, models, signin
from ui.config_form import choice_field, flag_field, number_field

frame.require_frame()
signin.require_role("trainer", "training models")

RECIPE_LABELS = {"auto": "Automatic (scratch without pretrained weights)",
                 "paper": "The paper's (frozen base, then the last layers)",
                 "scratch": "From scratch (stage 2 trains every layer)"}
KEEP_LABELS = {"best_val_loss": "Best validation loss", "best_val_accuracy": "Best validation accuracy",
               "last": "Last epoch"}
BADGES = {RunStatus.QUEUED: "gray", RunStatus.RUNNING: "blue", RunStatus.DONE: "green", RunStatus.FAILED: "red",
          RunStatus.CANCELLED: "gray", RunStatus.INTERRUPTED: "orange"}
STAGE_TEXT = {
    "loading": "loading and resizing images",
    "caching": "computing the frozen layers' activations once (cached path)",
    "frozen": "stage 1 of 2: training the new classifier head on the frozen base",
    "finetuned": "stage 2 of 2: fine-tuning the last blocks of the base",
    "evaluating": "evaluating both models on the test split",
    "calibrating": "fitting calibration and the decision threshold on the validation patients",
    RunStatus.DONE: "finished",
    RunStatus.CANCELLED: RunStatus.CANCELLED,
}

root = models.runs_root()
st.title("Train a model")
st.caption("Two stages, as in the paper: first only a new classifier head learns on top of the frozen ImageNet "
           "network (VGG16 in the paper), then its last blocks are fine-tuned at a lower learning rate. Training runs in the "
           "background: you can leave or reload this page. One training job runs at a time.")


TIMING_LABELS = {"cache_s": "cache", "frozen_s": "stage 1", "finetuned_s": "stage 2", "evaluation_s": "evaluation",
                 "total_s": "total"}
"""run.json "timings" shown on the page, in that order."""


def duration(seconds) -> str:
    if seconds is None:
        return "…"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def draw_state(run_dir: Path, live: bool) -> None:
    """Status, progress, ETA and both stages' curves of one run (read from its folder)."""
    state = jobs.job_state(run_dir)
    status = state.status
    progress = state.progress
    experiment = state.experiment
    head, badge = st.columns([4, 1])
    head.markdown(f"**{'Cross-validation experiment' if experiment else 'Run'} `{state.run_id}`**")
    with badge:
        st.badge(status, color=BADGES.get(status, "gray"))
    total = progress.get("total_epochs") or 0
    done_epochs = progress.get("epochs_done") or 0
    batches, batch = progress.get("batches") or 0, progress.get("batch") or 0
    partial = batch / batches if batches and progress.get("stage") in STAGES and batch < batches else 0
    fraction = 1.0 if status == RunStatus.DONE else min(1.0, (done_epochs + partial) / total) if total else 0.0
    stage = STAGE_TEXT.get(progress.get("stage"), progress.get("stage") or "starting")
    if progress.get("stage") == "caching" and batches:  # its own bar: epochs have not started yet
        st.progress(min(1.0, batch / batches), text=f"{stage} · batch {batch} of {batches}")
    else:
        st.progress(fraction, text=f"{stage} · epoch {done_epochs} of {total} done" if total else stage)
    cols = st.columns(3)
    cols[0].metric("Elapsed", duration(progress.get("elapsed_s")))
    cols[1].metric("Time left (estimate)", duration(progress.get("eta_s")) if status in LIVE else "–")
    last = progress.get("last_epoch") or {}
    if last.get("val_accuracy") is not None:
        cols[2].metric("Last validation accuracy", display.percent(last["val_accuracy"]))
    if progress.get("message"):
        st.caption(progress["message"])
    if state.estimate is not None:
        measured = ", ".join(f"{TIMING_LABELS[k]} {duration(v)}" for k, v in state.timings.items() if k in TIMING_LABELS)
        st.caption(f"Estimated before training{' (this fold)' if experiment else ''}: {state.estimate.describe()}."
                   + (f" Measured so far: {measured}." if measured else ""))
    if experiment:
        st.caption("Folds: " + " · ".join(f"{r.role} `{r.run_id}` ({r.status})" for r in experiment.runs))
    history = state.history
    if any(history.values()):
        a, b = st.columns(2)
        a.plotly_chart(charts.training_curves(history, "accuracy", "Accuracy per epoch"), key=f"acc_{live}",
                       config={"displayModeBar": False})
        b.plotly_chart(charts.training_curves(history, "loss", "Loss per epoch"), key=f"loss_{live}",
                       config={"displayModeBar": False})
    if status in LIVE:
        if state.cancel_requested:
            st.info("Cancelling: training stops at the next batch; completed epochs are kept.", icon=":material/hourglass_top:")
        else:
            st.button("Cancel training", icon=":material/stop_circle:", key="cancel_job", on_click=jobs.cancel_job,
                      args=(run_dir,), help="Stops at the next batch; completed epochs are kept.")
    elif status == RunStatus.DONE and experiment:
        st.success("Cross-validation finished. Pooled out-of-fold results are on the Compare page; choose the model "
                   "to deploy on the Models page.", icon=":material/check_circle:")
        experiment_run = crossval.load_experiment(run_dir)
        row = experiment_run.headline()
        st.markdown(f"Pooled out-of-fold ({row['model']} model): patient-level accuracy "
                    f"**{display.percent(row['patient_recognition_rate'])}**, image-level accuracy "
                    f"**{display.percent(row['image_accuracy'])}**, AUC **{display.percent(row['roc_auc'])}**.")
        st.caption("Learning check of each fold's models: " + "; ".join(
            f"{experiment_run.role(run.run_id)}: " + ", ".join(f"{stage} {run.learning(stage).label}"
                                                              for stage in reversed(STAGES) if stage in run.models)
            for run in experiment_run.runs()) + ". No model of the experiment becomes active until you deploy one.")
        st.page_link("pages/compare.py", label="Open Compare", icon=":material/compare:")
    elif status == RunStatus.DONE:
        st.success("Training finished. The run and its model card are on the Models page.", icon=":material/check_circle:")
        try:
            run = registry.load_run(run_dir)
            row = run.headline()
            st.markdown(f"Test split: patient-level accuracy **{display.percent(row['patient_recognition_rate'])}**, "
                        f"image-level accuracy **{display.percent(row['image_accuracy'])}** ({row['model']} model).")
            for stage in reversed(STAGES):
                if stage in run.models:
                    display.learning_notice(run.learning(stage), registry.model_id(run, stage))
            current = models.active_model()
            best = run.best_stage
            if best and (current is None or registry.model_id(*current) != registry.model_id(run, best)):
                confirmed = display.confirmed_activation(run.learning(best), registry.model_id(run, best),
                                                         key=f"train_confirm_active_{run.run_id}")
                st.button("Use this model (set as active)", icon=":material/star:", key="use_new_model",
                          on_click=_set_active, args=(run.run_id, best), disabled=not confirmed)
        except BreakHisError as exc:
            display.show_error(exc)
        st.page_link("pages/models.py", label="Open Models", icon=":material/inventory_2:")
    elif status == RunStatus.FAILED:
        st.error(f"Training failed: {state.error or 'no reason recorded'}", icon=":material/error:")
        log = RunDir(run_dir).train_log
        if log.is_file():
            with st.expander("Training log (last lines)"):
                st.code("\n".join(log.read_text(errors="replace").splitlines()[-40:]) or "(empty)")
    elif status == RunStatus.CANCELLED:
        st.info("Cancelled. Completed epochs are kept; resume continues from the last completed epoch.",
                icon=":material/info:")
    elif status == RunStatus.INTERRUPTED:
        st.warning("The training process stopped unexpectedly (for example the server restarted). Completed "
                   "epochs are kept; resume continues from the last completed epoch.", icon=":material/warning:")
    if status in (RunStatus.CANCELLED, RunStatus.INTERRUPTED, RunStatus.FAILED) and not live:
        st.button("Resume training", icon=":material/play_circle:", key="resume_job", on_click=_resume,
                  args=(run_dir,), help=f"Same as `python -m breakhis_core resume {run_dir}`.")


def _resume(run_dir: Path) -> None:
    try:
        jobs.resume_job(run_dir, root, user=signin.current_user())
        st.session_state["train_run"] = str(run_dir)
    except BreakHisError as exc:
        st.session_state["train_error"] = str(exc)


def _set_active(run_id: str, stage: str) -> None:
    try:
        default_model.set_default(run_id, stage, root)
        models.set_session_model()
        st.toast(f"{run_id}:{stage} is now the active model.", icon=":material/star:")
    except BreakHisError as exc:
        st.session_state["train_error"] = str(exc)


@st.fragment(run_every="2s")
def live_panel(run_dir: str) -> None:
    job = jobs.current_job(root)
    draw_state(Path(run_dir), live=True)
    if job is None or job.run_dir != run_dir:
        st.rerun()  # the job ended: redraw the whole page once, without polling


@st.fragment(run_every="5s")
def watch_for_job() -> None:
    """While no job runs: notice one started from another browser session, and redraw the page live."""
    if jobs.current_job(root) is not None:
        st.rerun()


def panel_run() -> tuple[str | None, bool]:
    """(run folder to show, whether it is the live job): the running job, else this session's last run,
    else the newest trained run (the experiment folder when that run is part of a cross-validation experiment)."""
    job = jobs.current_job(root)
    if job and job.run_dir:
        return job.run_dir, True
    mine = st.session_state.get("train_run")
    if mine and Path(mine).is_dir():
        return mine, False
    for run in registry.list_runs(root):
        if not run.imported:
            experiment = crossval.experiment_of(run)  # a fold or final run: show its experiment's pooled result
            return str(experiment.path if experiment else run.path), False
    return None, False


if "train_error" in st.session_state:
    display.show_error(st.session_state.pop("train_error"))

run_dir, live = panel_run()
if not live:
    watch_for_job()
if run_dir:
    st.subheader("Training job" if live else "Latest run")
    with st.container(border=True):
        if live:
            live_panel(run_dir)
        else:
            draw_state(Path(run_dir), live=False)

# ----------------------------------------------------------------------------- the form

st.subheader("New training run")
roots = paths.data_roots()
if not roots:
    st.warning("No data folder exists. Put BreakHis images in `./data` (beside the app) or set "
               f"`{paths.DATA_ROOTS_ENV}` to the folders that hold them, then reload.", icon=":material/folder_off:")
    st.stop()
with st.expander("Reviewed cases as a data set"):
    st.caption("Every case with a reviewer's final label becomes a manifest (one row per image, the patient reference "
               "as the patient) under the runs folder's cases/datasets/, listed below as a data set. A run trained on "
               "it records which cases and images it saw.")
    if st.button("Export the reviewed cases", key="train_export_cases", icon=":material/dataset:"):
        try:
            service = case_store.case_service()
            exported = export_dataset(service.reviewed_cases("export-dataset"), service.image_path,
                                      datasets_dir(root), service.actor.user)
        except BreakHisError as exc:
            display.show_error(exc)
        else:
            datasets.discover.clear()
            st.success(f"{exported.n_images} image(s) of {len(exported.cases)} case(s): {exported.manifest.name}",
                       icon=":material/check_circle:")
reviewed_cases = datasets_dir(root)
candidates = datasets.discover(tuple(str(r) for r in roots) + ((str(reviewed_cases),) if reviewed_cases.is_dir() else ()))
data_sets = [c for c in candidates if c.kind in ("folder", "manifest")]
folds_files = [c for c in candidates if c.kind == "folds"]
weight_files = [c for c in candidates if c.kind == "weights"]
machine = models.device_info()
gpu = bool(machine.gpus)
backbone_name = choice_field(
    st, "backbone", "train_backbone",
    format_func=lambda name: BACKBONES[name].label + (" (the paper's)" if name == DEFAULT_BACKBONE else ""),
    help="The network the classifier stands on. The paper's recipe is VGG16; the others are for comparison. "
    "Chosen outside the form below, since the number of blocks that can be unfrozen depends on it.")
backbone = BACKBONES[backbone_name]
imagenet_file = imagenet_weights_cache(backbone)
imagenet_cached = imagenet_file.is_file()

with st.form("train_form"):
    st.markdown("**Data**")
    dataset = st.selectbox(
        "Dataset", [c.path for c in data_sets], format_func={c.path: c.label for c in data_sets}.get, key="train_data",
        index=None if not data_sets else 0, placeholder="No image folder or manifest found under the data folders",
        help="Folders with BreakHis-named images (any layout) and manifest CSVs (path,label[,patient][,magnification]) "
        f"found under the data folders: {', '.join(str(r) for r in roots)}.",
    )
    other = st.text_input("…or another folder / manifest CSV inside a data folder (optional)", key="train_other",
                          placeholder="e.g. BreaKHis_v1/histology_slides/breast")
    c1, c2 = st.columns(2)
    magnification = choice_field(c1, "magnification", "train_mag",
                                 format_func=lambda m: "All magnifications" if m == "all" else f"{m}X only")
    split = choice_field(
        c2, "split", "train_split",
        format_func={"patient": "By patient (recommended)", "image": "By image (the paper's; leaky)",
                     "folds": "Official BreakHis fold (Folds.csv)", "cv": "Cross-validate (K folds, by patient)"}.get,
        help="By patient: no patient's images are in both training and test. By image (the paper's protocol): "
        "images of one patient can be on both sides, so test accuracy is optimistic. Cross-validate: every patient "
        "is tested once, by one of K models that did not train on it (K trainings, one after another); the pooled "
        "figures are far steadier than one small test split.",
    )
    k1, k2 = st.columns(2)
    cv_folds = number_field(k1, "cv_folds", "train_cv_folds")
    final_model = k2.checkbox("Then train a final model on all patients", False, key="train_final_model",
                              help="Cross-validation only: one more training on every patient (validation patients "
                                   "carved out, no test split); its estimate of performance is the cross-validation's.")
    f1, f2 = st.columns(2)
    folds_csv = f1.selectbox("Folds.csv (for the official fold)", [c.path for c in folds_files], key="train_folds_csv",
                             index=None if not folds_files else 0, format_func={c.path: c.label for c in folds_files}.get,
                             placeholder="No Folds.csv found under the data folders")
    fold = number_field(f2, "fold", "train_fold", max_value=OFFICIAL_FOLDS)

    st.markdown("**Model and training**")
    task = choice_field(st, "task", "train_task", format_func=lambda name: f"{name}: {TASKS[name].description}",
                        help="malignancy: benign or malignant (the paper's). subtype: the 8 BreakHis tumour types, "
                        "which needs each image's type (BreakHis file names, or a tumour_type column in a manifest) "
                        "and training images of every type; its P(malignant) is the sum of the malignant types.")
    weight_options = [*NAMED_WEIGHTS, *[c.path for c in weight_files]]
    weight_labels = {"imagenet": "ImageNet (pretrained; recommended)" + ("" if imagenet_cached else ", will be downloaded"),
                     "none": "None (random start: random features unless every layer trains; needs far more data)", **{c.path: c.label for c in weight_files}}
    weights = st.selectbox(f"Starting weights of the {backbone.label} base", weight_options, format_func=weight_labels.get,
                           key="train_weights",
                           help=None if imagenet_cached else f"The ImageNet file {backbone.weights_file} is not in the Keras cache "
                           f"({imagenet_file.parent}); without internet access, copy it there first.")
    r1, r2 = st.columns(2)
    recipe = choice_field(
        r1, "recipe", "train_recipe", format_func=RECIPE_LABELS.get,
        help="The paper's recipe freezes the base in stage 1 and trains only its last blocks in stage 2: "
        "that assumes pretrained (ImageNet) weights. With random starting weights a frozen base computes only "
        "random features, so the scratch recipe trains every base layer in stage 2 (slower: no feature caching). "
        "Automatic picks scratch when the starting weights are None, the paper's recipe otherwise.")
    keep_epoch = choice_field(
        r2, "keep_epoch", "train_keep_epoch", format_func=KEEP_LABELS.get,
        help="Which epoch of each stage becomes its model: the one with the best validation loss (default) or "
        "accuracy, or the last one. Stage 2 starts from stage 1's kept epoch. Without a validation split the "
        "last epoch is kept. In a cross-validation the epoch is chosen once all folds have finished, on the "
        "validation patients of every fold pooled (fold k's test patients left out), and the final model trains "
        "that many epochs.")
    e1, e2, e3, e4 = st.columns(4)
    epochs_frozen = number_field(e1, "epochs_frozen", "train_epochs_frozen")
    epochs_finetune = number_field(e2, "epochs_finetune", "train_epochs_finetune")
    lr_frozen = number_field(e3, "lr_frozen", "train_lr_frozen", format="%.1e")
    lr_finetune = number_field(e4, "lr_finetune", "train_lr_finetune", format="%.1e")
    b1, b2, b3, b4 = st.columns(4)
    batch_size = number_field(b1, "batch_size", "train_batch")
    unfreeze = number_field(b2, "unfreeze", "train_unfreeze", max_value=len(backbone.blocks),  # the backbone's bound
                            help=f"The last N of {backbone.label}'s {len(backbone.blocks)} blocks "
                                 f"({', '.join(b.name for b in backbone.blocks)}); 1 = {backbone.blocks[-1].name}.")
    device = b3.selectbox("Device", DEVICES if gpu else [d for d in DEVICES if d != "gpu"], key="train_device",
                          format_func={"auto": "Automatic", "cpu": "CPU", "gpu": "GPU"}.get,
                          help=None if gpu else "No GPU was found, so training runs on the CPU.")
    augment = flag_field(b4, "augment", "train_augment")

    with st.expander("Advanced"):
        a1, a2, a3, a4 = st.columns(4)
        input_size = number_field(a1, "input_size", "train_input_size")
        group_by = choice_field(a2, "group_by", "train_group_by",
                                format_func={"slide": "Slide id (official)", "case": "Case number (stricter)"}.get)
        stain_norm = choice_field(a3, "stain_norm", "train_stain")
        seed = number_field(a4, "seed", "train_seed")
        a5, a6, a7, a8 = st.columns(4)
        train_fraction = number_field(a5, "train_fraction", "train_ftrain")
        val_fraction = number_field(a6, "val_fraction", "train_fval")
        test_fraction = number_field(a7, "test_fraction", "train_ftest")
        patience = number_field(a8, "early_stopping_patience", "train_patience")
        a9, a10, a11, a12 = st.columns(4)
        class_weights = flag_field(a9, "class_weights", "train_class_weights")
        cache = choice_field(a10, "cache", "train_cache")
        head_units = number_field(a11, "head_units", "train_head_units")
        dropout = number_field(a12, "dropout", "train_dropout")
        a13, a14 = st.columns([1, 3])
        cache_views = number_field(
            a13, "cache_views", "train_cache_views",
            help="With feature caching: how many augmented versions of each training image are computed once. "
                 f"{config_field('cache_views').default} (default) covers every flip/rotation, as on-the-fly "
                 "augmentation does; fewer views train faster "
                 "(on a 2-core CPU about 4-5x faster than without caching at 8, 6-10x at 2, more on larger data sets) "
                 "but each image is seen in fewer orientations, crops and colour shifts, which cost accuracy in our "
                 "tests. Ignored without caching or without augmentation.")
        a15, a16 = st.columns(2)
        threshold_rule = choice_field(
            a15, "threshold_rule", "train_threshold_rule",
            format_func={"fixed": f"{DEFAULT_THRESHOLD:g} (the paper's)", "youden": "Youden's J (best sensitivity + specificity)",
                         "sensitivity": "Sensitivity at least X (screening)"}.get,
            help="Chosen on the validation patients after training, on calibrated probabilities; the predictor, case "
                 "verdicts and reports use it. Its sensitivity/specificity on the test patients is on the model card.")
        target_sensitivity = number_field(a16, "target_sensitivity", "train_target_sensitivity")
        mixed_precision = choice_field(
            a14, "mixed_precision", "train_mixed",
            help="auto: float16 on a GPU, bfloat16 on CPUs with bf16 instructions (avx512_bf16 / amx_bf16, about "
                 "twice as fast), float32 on other CPUs; on: mixed precision anywhere; off: float32. Saved models are "
                 f"float32 either way. Here auto gives {machine.precision.policy}.")

    submitted = st.form_submit_button("Start training", type="primary", icon=":material/play_arrow:")

if submitted:
    running = jobs.current_job(root)
    if running:
        st.warning(f"A training job is already running: run {running.run_id or '(starting)'} "
                   f"(started {running.started or '?'}). Wait for it to finish or cancel it, then start again.",
                   icon=":material/block:")
    else:
        try:
            source = other.strip() if other and other.strip() else dataset
            if not source:
                raise BreakHisError("choose a dataset first")
            if split == "folds" and not folds_csv:
                raise BreakHisError("the official fold needs a Folds.csv under the data folders")
            config = TrainConfig(
                data=str(source), magnification=magnification, split=split, fold=1 if split == "cv" else int(fold),
                folds_csv=folds_csv if split == "folds" else "",
                group_by=group_by, train_fraction=float(train_fraction), val_fraction=float(val_fraction),
                test_fraction=float(test_fraction), task=task, backbone=backbone.name, weights=weights,
                input_size=int(input_size),
                head_units=int(head_units), dropout=float(dropout), epochs_frozen=int(epochs_frozen),
                epochs_finetune=int(epochs_finetune), lr_frozen=float(lr_frozen), lr_finetune=float(lr_finetune),
                unfreeze=int(unfreeze), recipe=recipe, keep_epoch=keep_epoch, batch_size=int(batch_size),
                augment=bool(augment),
                class_weights=bool(class_weights), early_stopping_patience=int(patience), stain_norm=stain_norm,
                cache=cache, cache_views=int(cache_views), device=device, seed=int(seed),
                mixed_precision=mixed_precision, cv_folds=int(cv_folds),
                threshold_rule=threshold_rule, target_sensitivity=float(target_sensitivity),
            ).validate()
            with st.spinner("Checking the data and preparing the run…"):
                new_run = jobs.start_job(config, root, data_roots=[*roots, cases_dir(root)],  # refuses paths outside them
                                         final_model=split == "cv" and bool(final_model), user=signin.current_user())
            st.session_state["train_run"] = str(new_run)
            st.rerun()
        except BreakHisError as exc:
            display.show_error(exc)
