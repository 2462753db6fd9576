"""Compare: two models side by side (a run's frozen and fine-tuned models, or any two) on test metrics,
calibration, training curves and uploaded images; and the pooled results of a cross-validation experiment."""

import numpy as np
import pandas as pd
import streamlit as st

from breakhis_core import CLASS_NAMES
from breakhis_core.training import crossval, jobs
from breakhis_core.runs import registry
from breakhis_core.cases.evaluation import evaluate_on_cases
from breakhis_core.config import DEFAULT_THRESHOLD, STAGE_LABELS, STAGES
from breakhis_core.errors import BreakHisError
from breakhis_core.evaluation.metrics import CLASS_METRIC_NAMES, METRIC_NAMES, PredictionColumn, roc_curve, stage_column
from breakhis_core.inference.explain import overlay
from breakhis_core.inference.outputs import comparison_report
from breakhis_core.inference.predict import ModelRouter
from breakhis_core.inference.service import DiagnosisOptions, DiagnosisService
from breakhis_core.data.uploads import decode_uploads, read_uploads
from ui import cases as case_store
from ui import charts, display, frame, models, reports, signin

frame.require_frame()
signin.require_role("viewer", "comparing models")

METHODS = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "scorecam": "Score-CAM (slow)"}
MAX_IMAGES = 24  # images compared at once (each is predicted and explained by both models)
HEADLINE = ("image_accuracy", "patient_recognition_rate", "patient_verdict_accuracy", "sensitivity", "specificity", "roc_auc",
            "patient_auc")

root = models.runs_root()
st.title("Compare models")


def calibration_section(entries: dict[str, dict | None], where: str, key: str) -> None:
    """ECE and Brier before/after temperature scaling and the reliability diagrams; ``entries``: label → summary."""
    entries = {label: summary for label, summary in entries.items() if summary}
    if not entries:
        st.caption("No calibration recorded (runs trained before calibration was added, or no validation patients).")
        return
    st.dataframe(pd.DataFrame({
        label: [f"{s['ece_before']:.3f} → {s['ece_after']:.3f}", f"{s['brier_before']:.3f} → {s['brier_after']:.3f}",
                s.get("n_images")]
        for label, s in entries.items()
    }, index=["expected calibration error (before → after)", "Brier score (before → after)", f"{where} images"]),
        width="stretch")
    after = st.toggle("After temperature scaling", True, key=f"{key}_after")
    curves = {label: s["reliability_after" if after else "reliability_before"] for label, s in entries.items()}
    st.plotly_chart(charts.reliability_diagram(curves), key=f"{key}_reliability", config={"displayModeBar": False})


def experiment_view(experiments: list) -> None:
    """Pooled out-of-fold metrics, the operating point, calibration and per-fold figures of one experiment."""
    ids = [e.experiment_id for e in experiments]
    experiment = next(e for e in experiments if e.experiment_id == st.selectbox("Experiment", ids, key="compare_experiment"))
    metrics = experiment.metrics
    if not metrics:
        st.info(f"Experiment status {experiment.status}: pooled results appear when every fold has finished.",
                icon=":material/hourglass_top:")
        return
    patients = metrics["patients"]
    fold_runs = {run.run_id: run for run in experiment.runs()}
    for run in fold_runs.values():
        for stage in reversed(STAGES):
            if stage in run.models and run.learning(stage).needs_confirmation:
                st.warning(f"{experiment.role(run.run_id).capitalize()}: "
                           + run.learning(stage).warning(registry.model_id(run, stage)), icon=":material/warning:")
    st.markdown(f"{experiment.n_folds}-fold patient-wise cross-validation (patient key: {metrics['group_by']}): "
                f"**{patients['predicted']} patients**, each predicted once by the fold model that did not train on it. "
                "95 % confidence intervals from resampling patients.")
    stages = list(metrics["pooled"])
    table = pd.DataFrame({
        STAGE_LABELS[stage]: [display.metric_text(metrics["pooled"][stage]["overall"].get(name)) for name in METRIC_NAMES]
        + [f"{metrics['pooled'][stage]['overall']['n_images']} / {metrics['pooled'][stage]['overall']['n_patients']}"]
        for stage in stages
    }, index=[charts.METRIC_LABELS[n] for n in METRIC_NAMES] + ["images / patients"])
    st.markdown(f"**Pooled out-of-fold** (threshold {DEFAULT_THRESHOLD:g}, uncalibrated probabilities)")
    st.dataframe(table, width="stretch")
    st.markdown("**Across folds** (mean ± standard deviation of the folds' test metrics)")

    def mean_sd(entry: dict) -> str:
        if entry["mean"] is None:
            return "n/a"
        return f"{entry['mean']:.3f}" + (f" ± {entry['sd']:.3f}" if entry["sd"] is not None else "")

    st.dataframe(pd.DataFrame({STAGE_LABELS[stage]: [mean_sd(metrics["across_folds"][stage][name]) for name in METRIC_NAMES]
                               for stage in stages}, index=[charts.METRIC_LABELS[n] for n in METRIC_NAMES]),
                 width="stretch")
    st.markdown("**Operating point**: each fold's calibrated probabilities and its own threshold, chosen on its "
                f"validation patients (rule: {experiment.config.threshold_rule})")
    st.dataframe(pd.DataFrame({STAGE_LABELS[stage]: [display.metric_text(metrics["pooled_operating_point"][stage][name])
                                                     for name in crossval.OPERATING_METRICS] for stage in stages},
                              index=[charts.METRIC_LABELS[n] for n in crossval.OPERATING_METRICS]), width="stretch")
    st.markdown("**Calibration** (pooled out-of-fold, each fold's temperature fitted on its validation patients)")
    calibration_section({STAGE_LABELS[s]: metrics["pooled_calibration"].get(s) for s in stages}, "pooled", "compare_cv")
    st.markdown("**Per fold** (each fold's own test patients)")
    st.dataframe(pd.DataFrame([
        {"fold": f["fold"], "run": f["run_id"], "stage": stage,
         **{charts.METRIC_LABELS[n]: display.metric_text(((f["models"].get(stage) or {}).get("overall") or {}).get(n))
            for n in ("image_accuracy", "patient_recognition_rate", "roc_auc", "patient_auc")},
         "learning check": fold_runs[f["run_id"]].learning(stage).label if f["run_id"] in fold_runs else "n/a",
         "temperature": round(f["calibration"][stage]["temperature"], 3),
         "threshold": round(f["calibration"][stage]["threshold"], 3),
         "calibration": "fitted" if f["calibration"][stage].get("fitted", True) else "not fitted (too few patients)"}
        for f in metrics["folds"] for stage in stages
    ]), hide_index=True, width="stretch")
    st.caption("Choose which model to deploy (one fold's, or the final model trained on all patients) on the Models page.")


def type_metrics_section(models_by_label: dict[str, tuple[registry.Run, str]]) -> None:
    """The tumour-type metrics (``metrics.CLASS_METRIC_NAMES`` with their CIs) beside the binary ones when every model
    is a subtype model with them; otherwise, when a subtype model is among them, why only the binary ones compare."""
    tasks = {label: run.task for label, (run, _) in models_by_label.items()}
    if all(task.is_binary for task in tasks.values()):
        return
    classes = {label: (((run.metrics or {}).get("classes") or {}).get(stage))
               for label, (run, stage) in models_by_label.items()}
    if all(not task.is_binary for task in tasks.values()) and all(classes.values()):
        st.markdown("**Tumour types** (test split, a type predicted by the most probable of the 8; the figures above "
                    "are on P(malignant), the sum of the malignant types' probabilities)")
        st.dataframe(pd.DataFrame({
            label: [display.metric_text(values.get(name)) for name in CLASS_METRIC_NAMES]
            for label, values in classes.items()
        }, index=[charts.METRIC_LABELS[n] for n in CLASS_METRIC_NAMES]), width="stretch")
        return
    kinds = ", ".join(f"{label}: {task.name}" for label, task in tasks.items())
    st.caption(f"The binary (benign/malignant) metrics are compared ({kinds}; a subtype model's P(malignant) is the "
               "sum of its malignant types' probabilities): tumour-type metrics compare only between two subtype "
               "models that have them.")


runs = registry.list_runs(root)
choices = models.model_choices(runs)
experiments = crossval.list_experiments(root)
if experiments and st.toggle("Cross-validation experiment", False, key="compare_cv_mode",
                             help="Pooled out-of-fold results of a K-fold cross-validation instead of two models."):
    experiment_view(experiments)
    st.stop()
if len(choices) < 2:
    st.info("Comparing needs two models, e.g. the frozen and fine-tuned models of a finished training run. "
            "Train one on the Train page.", icon=":material/lightbulb:")
    if signin.may("trainer"):
        st.page_link("pages/train.py", label="Train a model", icon=":material/model_training:")
    st.stop()

by_id = {run.run_id: run for run in runs}
two_stage = [run.run_id for run in runs if set(STAGES) <= set(run.models) and run.run_id in {c.split(":")[0] for c in choices}]
mode = st.segmented_control("Compare", ["stages", "any"], default="stages" if two_stage else "any", key="compare_mode",
                            format_func={"stages": "Both stages of one run", "any": "Any two models"}.get, required=True)
if mode == "stages" and two_stage:
    current = models.session_model()
    default = two_stage.index(current[0].run_id) if current and current[0].run_id in two_stage else 0
    run_id = st.selectbox("Run", two_stage, index=default, key="compare_run")
    refs = [f"{run_id}:frozen", f"{run_id}:finetuned"]
else:
    if mode == "stages":
        st.caption("No run has both stages' models; pick any two models.")
    a, b = st.columns(2)
    ref_a = a.selectbox("Model A", choices, index=0, key="compare_a")
    ref_b = b.selectbox("Model B", choices, index=1, key="compare_b")
    refs = [ref_a, ref_b]

pair = []  # (label, run, stage)
same_run = refs[0].split(":")[0] == refs[1].split(":")[0]
for ref in refs:
    run_id, stage = registry.parse_model_ref(ref)
    run = by_id[run_id]
    pair.append((STAGE_LABELS[stage] if same_run else ref, run, stage))
if refs[0] == refs[1]:
    st.warning("Both sides are the same model.", icon=":material/warning:")
labels = [m[0] for m in pair]
if not same_run:
    st.caption("A: `" + refs[0] + "` · B: `" + refs[1] + "`")

metrics_tab, calibration_tab, curves_tab, images_tab, cases_tab = st.tabs(
    ["Test metrics", "Calibration", "Training curves", "On your images", "On reviewed cases"])

# ----------------------------------------------------------------------------- test metrics

with metrics_tab:
    stats = {label: (((run.metrics or {}).get("models") or {}).get(stage)) for label, run, stage in pair}
    missing = [label for label, m in stats.items() if not m]
    if missing:
        st.info(f"No test metrics for {', '.join(missing)} (imported models and unevaluated runs have none).",
                icon=":material/info:")
    stats = {label: m for label, m in stats.items() if m}
    if stats:
        if not same_run:
            st.caption("The two models come from different runs, so they were tested on different test splits; "
                       "compare with care.")
        protocols = {label: run.protocol for label, run, _ in pair if label in stats}
        leaky = [label for label, run, _ in pair if label in stats and run.leaky]
        st.markdown("Test split, protocol " + ", ".join(f"{p}" for p in sorted(set(filter(None, protocols.values()))))
                    + "; 95 % confidence intervals from resampling patients.")
        if leaky:
            st.warning("Image-level (leaky) split: patients' images are in training and test, so accuracies are optimistic.",
                       icon=":material/warning:")
        for label, run, stage in pair:
            if label in stats:
                display.learning_notice(run.learning(stage), registry.model_id(run, stage))
        table = pd.DataFrame({
            label: [display.metric_text(m["overall"].get(name)) for name in METRIC_NAMES]
            + [f"{m['overall'].get('n_images')} / {m['overall'].get('n_patients')}"]
            for label, m in stats.items()
        }, index=[charts.METRIC_LABELS[n] for n in METRIC_NAMES] + ["test images / patients"])
        st.dataframe(table, width="stretch")
        type_metrics_section({label: (run, stage) for label, run, stage in pair if label in stats})
        st.plotly_chart(charts.metric_bars({label: m["overall"] for label, m in stats.items()}, HEADLINE),
                        key="compare_bars", config={"displayModeBar": False})

        st.markdown("**Per magnification**")
        per_mag = {label: m.get("by_magnification") or {} for label, m in stats.items()}
        if any(per_mag.values()):
            metric = st.selectbox("Metric", HEADLINE, format_func=charts.METRIC_LABELS.get, key="compare_mag_metric")
            st.plotly_chart(charts.by_magnification(per_mag, metric), key="compare_mag", config={"displayModeBar": False})
            mags = sorted({mag for values in per_mag.values() for mag in values}, key=int)
            st.dataframe(pd.DataFrame({
                label: [display.metric_text((values.get(mag) or {}).get(metric)) for mag in mags]
                for label, values in per_mag.items()
            }, index=[f"{mag}X" for mag in mags]), width="stretch")
        else:
            st.caption("The test images have no known magnification.")

        st.markdown(f"**Confusion matrices** (test split, threshold {DEFAULT_THRESHOLD:g})")
        cols = st.columns(len(stats))
        for col, (label, m) in zip(cols, stats.items()):
            col.plotly_chart(charts.confusion_matrix(m["overall"]["confusion_matrix"], label), key=f"cm_{label}",
                             config={"displayModeBar": False})

        st.markdown("**ROC curves**")
        curves = {}
        for label, run, stage in pair:
            test_table = models.test_predictions(run)
            column = stage_column(stage)
            if label in stats and test_table is not None and column in test_table and test_table[column].notna().all():
                fpr, tpr, _ = roc_curve(test_table[PredictionColumn.LABEL].to_numpy(), test_table[column].to_numpy())
                if np.isfinite(fpr).all() and np.isfinite(tpr).all():
                    curves[label] = (fpr, tpr, (stats[label]["overall"].get("roc_auc") or {}).get("value"))
        if curves:
            st.plotly_chart(charts.roc_curves(curves), key="compare_roc", config={"displayModeBar": False})
        else:
            st.caption("No ROC curve: the test predictions are missing or hold a single class.")

# ----------------------------------------------------------------------------- calibration

with calibration_tab:
    st.caption("Temperature scaling and the decision threshold were fitted on each run's validation patients; "
               "these figures are on its test patients.")
    fitted = {label: ((models.calibration(run) or {}).get("stages") or {}).get(stage) for label, run, stage in pair}
    for label, f in fitted.items():
        if f and not f.get("fitted", True):
            st.info(f"{label}: calibration and threshold {f['fitted_on']} — the figures below show no calibration "
                    "gain because none was applied.", icon=":material/info:")
    calibration_section({label: (f or {}).get("test") for label, f in fitted.items()}, "test", "compare_run")
    points = {label: f for label, f in fitted.items() if f and f.get("test")}
    if points:
        st.markdown("**Operating point** on the test patients (calibrated probabilities)")
        st.dataframe(pd.DataFrame({
            label: [f"{f['threshold']:.3f} ({f['rule']})", f"{f['temperature']:.3f}", f.get("fitted_on") or "n/a"]
            + [display.metric_text(f["test"]["operating_point"][n]) for n in crossval.OPERATING_METRICS]
            for label, f in points.items()
        }, index=["threshold (rule)", "temperature", "fitted on"]
            + [charts.METRIC_LABELS[n] for n in crossval.OPERATING_METRICS]),
            width="stretch")

# ----------------------------------------------------------------------------- training curves

with curves_tab:
    shown = []
    for label, run, stage in pair:
        if run.run_id in shown:
            continue
        shown.append(run.run_id)
        if run.imported:
            st.caption(f"`{run.run_id}` was imported: no training history.")
            continue
        history = jobs.job_state(run.path).history
        if not any(history.values()):
            st.caption(f"`{run.run_id}`: no training history recorded.")
            continue
        if not same_run:
            st.markdown(f"**`{run.run_id}`**")
        a, b = st.columns(2)
        a.plotly_chart(charts.training_curves(history, "accuracy", "Accuracy per epoch"), key=f"acc_{run.run_id}",
                       config={"displayModeBar": False})
        b.plotly_chart(charts.training_curves(history, "loss", "Loss per epoch"), key=f"loss_{run.run_id}",
                       config={"displayModeBar": False})
        kept_epochs = run.info.get("kept_epochs") or {}
        kept = {}
        for s, records in history.items():
            if records:
                number = (kept_epochs.get(s) or {}).get("epoch", records[-1].get("epoch"))
                kept[s] = next((r for r in records if r.get("epoch") == number), records[-1])
        if kept:
            st.markdown("**Kept epoch of each stage** (the deployed model of each stage, before and after fine-tuning)")
            st.dataframe(pd.DataFrame([
                {"stage": STAGE_LABELS[s], "kept epoch": r.get("epoch"), "epochs run": len(history[s]),
                 "why": (kept_epochs.get(s) or {}).get("reason", "the last epoch (no record of a choice)"),
                 "training accuracy": display.percent(r.get("accuracy")),
                 "validation accuracy": display.percent(r.get("val_accuracy")),
                 "training loss": r.get("loss"), "validation loss": r.get("val_loss")}
                for s, r in kept.items()
            ]), hide_index=True, width="stretch")
        with st.expander("Loss and accuracy per epoch (table)"):
            st.dataframe(pd.DataFrame([
                {"stage": STAGE_LABELS[s], "epoch": r.get("epoch"), "loss": r.get("loss"),
                 "accuracy": r.get("accuracy"), "val_loss": r.get("val_loss"), "val_accuracy": r.get("val_accuracy"),
                 "learning rate": r.get("lr"), "seconds": r.get("seconds")}
                for s in STAGES for r in history.get(s) or []
            ]), hide_index=True, width="stretch")

# ----------------------------------------------------------------------------- uploaded images

with images_tab:
    files = st.file_uploader(f"Images to compare (up to {MAX_IMAGES}; PNG, JPEG, TIFF, BMP or a zip)",
                             type=display.UPLOAD_TYPES, accept_multiple_files=True, key="compare_files")
    for label, run, stage in pair:
        display.learning_notice(run.learning(stage), registry.model_id(run, stage))
    c1, c2 = st.columns(2)
    method = c1.selectbox("Heat map", list(METHODS), format_func=METHODS.get, key="compare_method",
                          help="Regions that are evidence for malignancy (whatever the verdict).")
    alpha = c2.slider("Heat-map opacity", 0.0, 1.0, 0.4, 0.05, key="compare_alpha")
    if files:
        uploads, problems = read_uploads(files)
        if len(uploads) > MAX_IMAGES:
            problems += [(u.label, f"more than {MAX_IMAGES} images; not compared") for u in uploads[MAX_IMAGES:]]
            uploads = uploads[:MAX_IMAGES]
        good, undecodable = decode_uploads(uploads)
        problems += undecodable
        if problems:
            st.warning(f"{len(problems)} file(s) could not be used:\n" + "\n".join(f"- **{l}**: {r}" for l, r in problems),
                       icon=":material/warning:")
        digests = [item.sha256 for item in good]
        key = (tuple(refs), tuple(str(run.models[stage]) for _, run, stage in pair), tuple(digests), method)
        cached = st.session_state.get("compare_results")
        results = cached["results"] if cached and cached["key"] == key else {}
        if not results and good:
            try:
                with st.spinner("Running both models…"):
                    for label, run, stage in pair:  # each model's passes take turns across sessions (model_turn)
                        service = DiagnosisService(ModelRouter.serving(models.predictor_for(run, stage)), "app-compare",
                                                   runs_root=root, user=signin.current_user())
                        results[label] = service.diagnose(good, options=DiagnosisOptions(cam=method),
                                                          turn=models.model_turn).predictions
                st.session_state["compare_results"] = {"key": key, "results": results}
            except BreakHisError as exc:
                display.show_error(exc)
                results = {}
        if results and good:
            agree = sum(results[labels[0]][i].verdict == results[labels[1]][i].verdict for i in range(len(good)))
            st.markdown(f"The two models agree on **{agree} of {len(good)}** image(s).")
            display.heatmap_legend()
            compared = ([item.image for item in good], [item.label for item in good], results, alpha)
            r1, r2 = st.columns(2)
            r1.download_button("Download comparison (HTML)", lambda: comparison_report(*compared),
                               file_name="breakhis_comparison.html", mime="text/html", icon=":material/description:",
                               on_click="ignore", key="compare_html")
            reports.pdf_download("Download comparison (PDF)", lambda: comparison_report(*compared),
                                   "breakhis_comparison.pdf", "compare_pdf", r2)
            for i, item in enumerate(good):
                image = item.image
                with st.container(border=True):
                    st.markdown(f"**{item.label}**")
                    cols = st.columns(3)
                    cols[0].image(image, caption="original", width="stretch")
                    for col, label in zip(cols[1:], labels):
                        p = results[label][i]
                        colour = "red" if p.verdict == "malignant" else "blue"
                        col.image(overlay(image, p.heatmap, alpha), width="stretch",
                                  caption=f"{label}: {p.verdict}, P(malignant) {100 * p.p_malignant:.1f} %; "
                                          f"{METHODS.get(p.cam_method, p.cam_method)}: evidence for “{CLASS_NAMES[p.cam_class]}”")
                        col.markdown(f":{colour}[**{p.verdict}**] · P(malignant) {100 * p.p_malignant:.1f} % · "
                                     + (f"tumour type: {p.top_type_text} · " if p.top_type_text else "")
                                     + f"learning check: {p.learning.label}"
                                     + (f"  \n:orange[low confidence: {p.low_confidence_reason}]" if p.low_confidence else ""))

# ----------------------------------------------------------------------------- reviewed cases

with cases_tab:
    st.caption("Each model on the lab's reviewed cases it never trained on (the run records the cases it trained on), "
               "with the reviewers' final labels as the truth and the model's own decision threshold.")
    if st.button("Evaluate on reviewed cases", key="compare_cases", icon=":material/fact_check:"):
        evaluations = {}
        try:
            service = case_store.case_service()
            reviewed = service.reviewed_cases("evaluate")
            with st.spinner("Running both models on the reviewed cases…"):
                for label, run, stage in pair:
                    evaluations[label] = evaluate_on_cases(models.predictor_for(run, stage), registry.model_id(run, stage),
                                                           reviewed, run.info.get("cases"), service.image_path)
        except BreakHisError as exc:
            display.show_error(exc)
        st.session_state["compare_case_results"] = {"key": tuple(refs), "results": evaluations}
    outcome = st.session_state.get("compare_case_results")
    if outcome and outcome["key"] == tuple(refs) and outcome["results"]:
        evaluations = outcome["results"]
        st.dataframe(pd.DataFrame({
            label: [display.metric_text(e.metrics["overall"].get(name)) for name in METRIC_NAMES]
            + [f"{e.n_images} / {e.n_cases}", str(e.left_out), f"{e.threshold:.2f}"]
            for label, e in evaluations.items()
        }, index=[charts.METRIC_LABELS[n] for n in METRIC_NAMES]
            + ["images / cases", "cases left out (trained on)", "decision threshold"]), width="stretch")
