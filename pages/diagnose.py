"""Diagnose: upload images (or a zip), get a verdict, probability and heat map per image, grouped by
magnification, and a verdict per case; download the results as CSV and as a report."""

import pandas as pd
import streamlit as st

from breakhis_core import CLASS_NAMES
from breakhis_core.lab import access
from breakhis_core.runs import registry
from breakhis_core.data import samples
from breakhis_core.config import DEFAULT_THRESHOLD
from breakhis_core.cases.records import CasePrediction, ImagePrediction, NewCase, NewImage
from breakhis_core.errors import AccessionExistsError, BreakHisError, DatabaseError
from breakhis_core.inference.explain import overlay
from breakhis_core.inference.predict import ONE_CASE, magnification_from_name
from breakhis_core.inference.service import DiagnosisOptions, DiagnosisService, batch_digest
from breakhis_core.inference.outputs import heatmap_overlays, prediction_report, prediction_table, run_summary
from breakhis_core.data.uploads import decode_uploads, read_uploads
from ui import cases as case_store
from ui import charts, display, frame, models, reports, signin

frame.require_frame()
signin.require_role("viewer", "diagnosing images")

METHODS = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "scorecam": "Score-CAM (slow)"}
MAGNIFICATIONS = ["unknown", "40X", "100X", "200X", "400X"]
SOURCES = {"filename": "read from the file name", "given": "set by you", "unknown": "unknown"}
PAGE_SIZE = 12  # image cards shown at once per magnification (the overview chart shows all)

st.title("Diagnose")

chosen = models.session_model()
if chosen is None and display.no_active_model_notice():
    st.stop()
if chosen is None:
    st.info("There is no model yet: train one on the Train page or import a `.keras` file on the Models page.",
            icon=":material/lightbulb:")
    if signin.may("trainer"):
        st.page_link("pages/train.py", label="Train a model", icon=":material/model_training:")
        st.page_link("pages/models.py", label="Import a .keras file", icon=":material/upload_file:")
    st.stop()

run, stage = chosen
model_ref = registry.model_id(run, stage)
trained_on = run.config.magnification if run.config else None
try:
    router = models.router_for(run, stage)  # the CLI's router for --model: images go to the model by magnification
except BreakHisError as exc:
    display.show_error(exc)
    st.stop()
(predictor,) = router.predictors.values()  # one run's router holds its one model
display.learning_notice(run.learning(stage), model_ref)
scope = "all magnifications" if trained_on in (None, "all") else f"{trained_on}X images only"
st.caption(f"Model `{model_ref}`, trained on {scope if trained_on else 'unknown data (imported)'}; "
           f"input {predictor.input_size}×{predictor.input_size} px. Change it in the sidebar.")

files = st.file_uploader(
    "Microscopy images (PNG, JPEG, TIFF, BMP) or a zip of them", type=display.UPLOAD_TYPES,
    accept_multiple_files=True, key="diagnose_files",
    help="Files stay in memory and are not stored. BreakHis file names (e.g. SOB_M_DC-14-2523-40-010.png) "
    "give the magnification and the slide, used to group images into cases.",
)

c1, c2, c3, c4 = st.columns([1.2, 1.2, 1.4, 1.2])
method = c1.selectbox("Heat map", list(METHODS), format_func=METHODS.get, key="diagnose_method",
                      help="Which regions are evidence for malignancy (whatever the verdict). Grad-CAM is fast; "
                           "Score-CAM needs many model passes.")
alpha = c2.slider("Heat-map opacity", 0.0, 1.0, 0.4, 0.05, key="diagnose_alpha")
grouping = c3.selectbox("Cases", ["slide", "upload"], key="diagnose_grouping",
                        format_func={"slide": "One case per slide (from file names)", "upload": "All images are one case"}.get)
rule = c4.selectbox("Case verdict", ["mean", "majority"], key="diagnose_rule",
                    format_func={"mean": "Mean probability", "majority": "Majority of images"}.get)
t1, t2 = st.columns(2)
tta = t1.toggle("Check stability (8 flips/rotations, slower)", key="diagnose_tta",
                help="Averages the model over the 8 flips and rotations of each image; a large spread is flagged.")
tile = t2.toggle("Tile large images", key="diagnose_tile",
                 help="Images at least twice the BreakHis field (920 px shorter side) are cut into BreakHis-sized tiles.")

if st.button("Try the sample images", icon=":material/science:", key="diagnose_try_sample",
             help="8 real BreakHis images shipped with the app: one per tumour type, two per magnification."):
    st.session_state[display.TRY_SAMPLE_KEY] = True
if files:
    st.session_state[display.TRY_SAMPLE_KEY] = False
    uploads, problems = read_uploads(files)
elif st.session_state.get(display.TRY_SAMPLE_KEY):
    st.caption("Showing the sample images shipped with the app; upload your own above to replace them.")
    try:
        uploads, problems = samples.sample_uploads()
    except BreakHisError as exc:
        display.show_error(exc)
        st.stop()
else:
    st.caption("Drop one or more images above, or try the sample images. Results appear here, grouped by magnification.")
    st.stop()

# ----------------------------------------------------------------------------- decode

good, undecodable = decode_uploads(uploads)
problems += undecodable

if problems:
    with st.container(border=True):
        st.warning(f"{len(problems)} file(s) could not be used; the others are shown below.", icon=":material/warning:")
        st.markdown("\n".join(f"- **{label}**: {reason}" for label, reason in problems))
if not good:
    st.stop()

# Magnification: read from the name, editable per image.
digest = batch_digest(good)
from_name = [magnification_from_name(item.name) for item in good]
table = pd.DataFrame({
    "file": [item.label for item in good],
    "size": [f"{item.image.shape[1]}×{item.image.shape[0]}" for item in good],
    "magnification": [f"{m}X" if m else "unknown" for m in from_name],
})
with st.expander(f"Magnification of the {len(good)} image(s): read from the file names; correct it here",
                 expanded=any(m is None for m in from_name)):
    edited = st.data_editor(
        table, key=f"diagnose_mags_{digest}", hide_index=True, width="stretch", disabled=["file", "size"],
        column_config={"magnification": st.column_config.SelectboxColumn("magnification", options=MAGNIFICATIONS, required=True)},
    )
given = []
for value, name_value in zip(edited["magnification"], from_name):
    chosen_mag = None if value in (None, "unknown") else int(str(value).rstrip("X"))
    given.append(None if chosen_mag == name_value else chosen_mag)

# ----------------------------------------------------------------------------- route, as the CLI does

service = DiagnosisService(router, "app", runs_root=models.runs_root(), user=signin.current_user())
refusals = service.refusals(good, given)
if any(refusals):
    with st.container(border=True):
        st.warning(f"{sum(map(bool, refusals))} image(s) cannot be analysed with model `{model_ref}`: set their "
                   "magnification above or choose another model in the sidebar.", icon=":material/warning:")
        st.markdown("\n".join(f"- **{item.label}**: {reason}" for item, reason in zip(good, refusals) if reason))
if all(refusals):
    st.stop()

# ----------------------------------------------------------------------------- predict (cached per session)

key = (models.model_version(run, stage), digest, tuple(given), method, tta, tile)
cached = st.session_state.get("diagnose_results")
if not cached or cached["key"] != key:
    progress = st.progress(0.0, text="Analysing…")
    try:
        diagnosis = service.diagnose(  # one pass at a time across sessions (model_turn); a waiting page shows its place
            good, given, DiagnosisOptions(tta, method, tile), turn=models.model_turn,
            on_progress=lambda done, total: progress.progress(done / total, text=f"Analysed {done} of {total} image(s)"))
    except BreakHisError as exc:
        progress.empty()
        display.show_error(exc)
        st.stop()
    progress.empty()
    cached = {"key": key, "diagnosis": diagnosis}
    st.session_state["diagnose_results"] = cached
diagnosis = cached["diagnosis"]
predictions = diagnosis.predictions
images = [item.image for item in diagnosis.inputs]
labels = [item.label for item in diagnosis.inputs]
cases = diagnosis.cases(by=grouping, rule=rule)
thresholds = sorted({p.threshold for p in predictions})
threshold_text = " / ".join(f"{t:g}" if t == DEFAULT_THRESHOLD else f"{t:.2f}" for t in thresholds)

# ----------------------------------------------------------------------------- cases and downloads

st.subheader("Case verdict" if len(cases) == 1 else f"Case verdicts ({len(cases)} cases)")
if len(cases) == 1:
    case = cases[0]
    with st.container(border=True):
        a, b = st.columns([1, 2])
        colour = "red" if case.verdict == "malignant" else "blue"
        a.markdown(f"**{'All images' if case.case_id == ONE_CASE else 'Case ' + case.case_id}**  \n### :{colour}[{case.verdict}]")
        a.caption(f"mean P(malignant) {100 * case.p_malignant:.1f} % over {len(case.predictions)} image(s); "
                  f"model learning check: {run.learning(stage).label}")
        if case.low_confidence:
            a.warning(f"Low confidence: the case score is close to the {threshold_text if rule == 'mean' else '0.5'} "
                      "threshold.", icon=":material/help:")
        b.caption(f"Rule: {case.rule}")
        b.dataframe(
            pd.DataFrame(case.by_magnification), hide_index=True, width="stretch",
            column_config={"mean_p_malignant": st.column_config.ProgressColumn("mean P(malignant)", format="percent",
                                                                               min_value=0, max_value=1),
                           "malignant_images": "malignant images"},
        )
else:
    st.dataframe(
        pd.DataFrame([{
            "case": case.case_id, "verdict": case.verdict, "mean P(malignant)": case.p_malignant,
            "images": len(case.predictions),
            "low confidence": f"yes: score close to {threshold_text if rule == 'mean' else '0.5'}" if case.low_confidence else "",
            "by magnification": "; ".join(f"{r['magnification']}: {r['malignant_images']}/{r['images']} malignant"
                                          for r in case.by_magnification),
        } for case in cases]),
        hide_index=True, width="stretch",
        column_config={"mean P(malignant)": st.column_config.ProgressColumn(format="percent", min_value=0, max_value=1)},
    )
    st.caption("A case is a slide id read from the BreakHis file names; it is malignant when "
               + (f"the mean P(malignant) of its images is at least {threshold_text} (the model's decision threshold, "
                  "chosen on its validation patients)." if rule == "mean"
                  else "at least half of its images are malignant."))


def report_page() -> str:
    """The batch's HTML report, made when a report is downloaded."""
    overlays = heatmap_overlays(images, predictions, alpha)
    return prediction_report(predictions, cases, images, overlays, run_summary(run, stage), labels)


d1, d2, d3 = st.columns(3)
d1.download_button("Download results (CSV)", prediction_table(predictions, cases, labels).encode(),
                   file_name="breakhis_predictions.csv", mime="text/csv", icon=":material/download:", on_click="ignore")
d2.download_button(
    "Download report (HTML)", report_page, file_name="breakhis_report.html", mime="text/html",
    icon=":material/description:", on_click="ignore",
    help="One self-contained page with thumbnails, heat maps, verdicts and a sign-off block.",
)
reports.pdf_download("Download report (PDF)", report_page, "breakhis_report.pdf", "diagnose_pdf", d3)

# ----------------------------------------------------------------------------- save as a case


def save_case(accession: str, patient_ref: str) -> None:
    """Store the analysed images, their predictions and heat maps as one case; the outcome stays in the session."""
    whole = diagnosis.cases(by="upload", rule=rule)[0]
    new = NewCase(patient_ref, tuple(NewImage(item.label, item.data, p.magnification, ImagePrediction.from_prediction(p),
                                              p.heatmap)
                                     for item, p in zip(diagnosis.inputs, predictions)),
                  accession or None, CasePrediction.from_case(whole, rule))
    try:
        case_store.keep_upload(new)
        saved = case_store.case_service().create_case(new)
    except AccessionExistsError as exc:
        st.session_state["diagnose_saved"] = {"key": key, "error": str(exc), "existing": accession.strip()}
        return
    except DatabaseError as exc:
        st.session_state["diagnose_saved"] = {"key": key, "error": f"{exc} The case was not saved; the images are "
                                              "kept and stay in this page: save again when the database is back."}
        return
    except BreakHisError as exc:
        st.session_state["diagnose_saved"] = {"key": key, "error": str(exc)}
        return
    st.session_state["diagnose_saved"] = {"key": key, "accession": saved.accession, "images": len(saved.images),
                                          "linked": sum(bool(image.also_in) for image in saved.images)}


if access.allows(signin.current_role(), access.PATHOLOGIST):
    with st.form("diagnose_case", border=True):
        st.markdown("**Save as a case**: these images, their verdicts and heat maps, for review and sign-off on the "
                    "Cases page.")
        a, b = st.columns(2)
        accession_text = a.text_input("Accession number", key="diagnose_accession",
                                      placeholder="empty: one is generated")
        patient_text = b.text_input("Patient reference (a pseudonym, no names)", key="diagnose_patient",
                                    placeholder="e.g. P-2024-0113")
        if st.form_submit_button("Save case", icon=":material/save:"):
            save_case(accession_text, patient_text)
    outcome = st.session_state.get("diagnose_saved")
    if outcome and outcome["key"] == key:
        if "error" in outcome:
            st.error(outcome["error"], icon=":material/error:")
            if outcome.get("existing"):
                st.page_link("pages/cases.py", label=f"Open case {outcome['existing']}", icon=":material/folder_open:",
                             query_params={case_store.CASE_PARAM: outcome["existing"]})
        else:
            linked = f"; {outcome['linked']} image(s) were already stored and are linked" if outcome["linked"] else ""
            st.success(f"Saved as case {outcome['accession']} ({outcome['images']} image(s){linked}).",
                       icon=":material/check_circle:")
            st.page_link("pages/cases.py", label=f"Open case {outcome['accession']}", icon=":material/folder_open:",
                         query_params={case_store.CASE_PARAM: outcome["accession"]})

# ----------------------------------------------------------------------------- per magnification


def image_card(index: int) -> None:
    p, image, label = predictions[index], images[index], labels[index]
    with st.container(border=True):
        colour = "red" if p.verdict == "malignant" else "blue"
        st.markdown(f"**{label}** · :{colour}[**{p.verdict}**] · P(malignant) {100 * p.p_malignant:.1f} %"
                    + (f" · tumour type: {p.top_type_text}" if p.top_type_text else ""))
        left, middle, right = st.columns([1, 1, 1])
        left.image(image, caption="original", width="stretch")
        if p.heatmap is not None:
            middle.image(overlay(image, p.heatmap, alpha), width="stretch",
                         caption=f"{METHODS.get(p.cam_method, p.cam_method)}: evidence for “{CLASS_NAMES[p.cam_class]}”")
        with right:
            st.plotly_chart(charts.probability_bar(p.p_malignant, p.low_confidence, p.threshold), key=f"bar_{index}",
                            config={"displayModeBar": False})
            if p.low_confidence:
                st.warning(f"Low confidence: {p.low_confidence_reason}.", icon=":material/help:")
            mag = f"{p.magnification}X" if p.magnification else "unknown"
            st.caption(f"Magnification {mag} ({SOURCES.get(p.magnification_source, p.magnification_source)})")
            with st.expander("Details"):
                st.markdown(f"- Model: `{p.model_id}`\n- Route: {p.route}\n- Input: {p.input_rule}\n"
                            f"- Image: {p.image_size[1]}×{p.image_size[0]} px"
                            + (f"\n- Spread over flips/rotations (std): {p.tta_std:.3f}" if p.tta_std is not None else ""))


if method:
    display.heatmap_legend()
groups: dict[str, list[int]] = {}
for i, p in enumerate(predictions):
    groups.setdefault(f"{p.magnification}X" if p.magnification else "unknown magnification", []).append(i)
order = sorted(groups, key=lambda g: (not g[0].isdigit(), int(g[:-1]) if g[0].isdigit() else 0))
for group in order:
    indices = groups[group]
    n_malignant = sum(predictions[i].verdict == "malignant" for i in indices)
    st.subheader(f"{group}: {len(indices)} image(s), {n_malignant} malignant")
    if len(indices) > 1:
        st.plotly_chart(charts.probabilities_overview([labels[i] for i in indices], [predictions[i].p_malignant for i in indices]),
                        key=f"overview_{group}", config={"displayModeBar": False})
    shown = indices
    if len(indices) > PAGE_SIZE:
        pages = [indices[s : s + PAGE_SIZE] for s in range(0, len(indices), PAGE_SIZE)]
        page = st.selectbox(f"Images of {group}", range(len(pages)), key=f"page_{group}_{digest}",
                            format_func=lambda k, n=len(indices): f"{k * PAGE_SIZE + 1}–{min((k + 1) * PAGE_SIZE, n)} of {n}")
        shown = pages[page]
    for i in shown:
        image_card(i)
