"""Cases: the stored cases (list, search, filter), one case with its images, heat maps, review form, sign-off and
addenda, and its report. ``?case=<accession number>`` opens a case, so a link can be sent to a colleague; what they
may do is their role's (``breakhis_core.cases.service`` enforces it)."""

from datetime import datetime, time, timezone

import pandas as pd
import streamlit as st

from breakhis_core import CLASS_NAMES
from breakhis_core.lab import access
from breakhis_core.cases.records import CaseFilter, CaseRecord, Review
from breakhis_core.cases.report import case_report
from breakhis_core.cases.service import SIGNED, STATUSES
from breakhis_core.task import TUMOUR_TYPES
from breakhis_core.errors import BreakHisError, CaseConflictError
from breakhis_core.inference.explain import overlay
from breakhis_core.data.images import read_image
from ui import cases, display, frame, reports, signin

frame.require_frame()
signin.require_role("viewer", "reading cases")

ANY = "any"
AGREEMENT = {"not said": None, "agree": True, "disagree": False}
NO_LABEL, NO_TYPE = "—", "—"

st.title("Cases")
try:
    service = cases.case_service()
except BreakHisError as exc:
    display.show_error(exc)
    st.stop()
may_review = access.allows(signin.current_role(), access.PATHOLOGIST)


def open_case(accession: str) -> None:
    st.query_params[cases.CASE_PARAM] = accession


def close_case() -> None:
    st.query_params.pop(cases.CASE_PARAM, None)


def type_options(label: str | None) -> list[str]:
    return [NO_TYPE] + [code for code, (_, index) in TUMOUR_TYPES.items() if label is None or CLASS_NAMES[index] == label]


def review_inputs(review: Review, key: str, container) -> Review:
    """Agreement, final label, type and comment; the widgets keep what was typed across reruns and conflicts."""
    a, b, c = container.columns([1, 1, 1])
    agreement = a.radio("Agree with the model?", list(AGREEMENT), key=f"{key}_agree", horizontal=True,
                        index=[v for v in AGREEMENT.values()].index(review.agrees))
    label = b.selectbox("Final label", [NO_LABEL, *CLASS_NAMES], key=f"{key}_label",
                        index=([NO_LABEL, *CLASS_NAMES]).index(review.final_label or NO_LABEL))
    chosen_label = None if label == NO_LABEL else label
    types = type_options(chosen_label)
    kind = c.selectbox("Type", types, key=f"{key}_type", format_func=lambda code: code if code == NO_TYPE else
                       f"{code} ({TUMOUR_TYPES[code][0]})",
                       index=types.index(review.final_type) if review.final_type in types else 0)
    comment = container.text_area("Comment", review.comment, key=f"{key}_comment", height=80)
    return Review(AGREEMENT[agreement], chosen_label, None if kind == NO_TYPE else kind, comment)


# ----------------------------------------------------------------------------- one case


def show_case(ref: str) -> None:
    st.button("All cases", icon=":material/arrow_back:", on_click=close_case, key="case_back")
    try:
        case = service.get_case(ref)
    except BreakHisError as exc:
        display.show_error(exc)
        st.stop()
    version_key = f"case_version_{case.id}"
    st.session_state.setdefault(version_key, case.version)
    colour = {"open": "orange", "reviewed": "blue", "signed": "green"}[case.status]
    st.subheader(f"Case {case.accession} · :{colour}[{case.status}]")
    st.caption(f"Patient {case.patient_ref} · created {case.created_at:%Y-%m-%d %H:%M} UTC by {case.created_by} · "
               f"version {case.version} · link for a colleague: `?{cases.CASE_PARAM}={case.accession}` on this page")
    prediction = case.prediction
    if prediction:
        st.markdown(f"**Model {prediction.model_id}** ({prediction.task}): **{prediction.verdict}**, mean "
                    f"P(malignant) {display.percent(prediction.p_malignant)} ({prediction.rule} rule, threshold "
                    f"{prediction.threshold:.2f}, temperature {prediction.temperature:.2f})")
    if case.signed_by:
        st.success(f"Signed by {case.signed_by} on {case.signed_at:%Y-%m-%d %H:%M} UTC: final label "
                   f"**{case.review.final_label}**{f' ({case.review.final_type})' if case.review.final_type else ''}.",
                   icon=":material/verified:")
    for addendum in case.addenda:
        change = f" New final label: **{addendum.review.final_label}**." if addendum.review and addendum.review.final_label else ""
        st.info(f"Addendum by {addendum.author}, {addendum.created_at:%Y-%m-%d %H:%M} UTC: {addendum.text}{change}",
                icon=":material/edit_note:")

    editable = may_review and case.status != SIGNED
    image_reviews = {}
    for image in case.images:
        with st.container(border=True):
            p = image.prediction
            shared = f" · also in case {', '.join(image.also_in)}" if image.also_in else ""
            st.markdown(f"**{image.name}** · {image.magnification or '?'}X"
                        + (f" · model: {p.verdict}, P(malignant) {display.percent(p.p_malignant)}" if p else "") + shared)
            left, right = st.columns(2)
            try:
                pixels = read_image(service.image_path(image))
            except BreakHisError as exc:  # the file is gone from cases/images (restored without it)
                left.warning(f"The stored image cannot be shown: {exc}. Restore the cases/images folder from the "
                             "backup.", icon=":material/broken_image:")
            else:
                left.image(pixels, caption="original", width="stretch")
                heatmap = service.heatmap(image)
                if heatmap is not None:
                    right.image(overlay(pixels, heatmap, 0.4), caption="heat map", width="stretch")
            if editable:
                image_reviews[image.sha256] = review_inputs(image.review, f"img_{case.id}_{image.sha256[:12]}", st)
            elif image.review != Review():
                st.caption(f"Review: {image.review.final_label or '—'} · {image.review.comment}")

    if editable:
        with st.container(border=True):
            st.markdown("**Case review**")
            case_review = review_inputs(case.review, f"case_{case.id}", st)
            save, sign = st.columns(2)
            if save.button("Save review", type="primary", key="case_save", icon=":material/save:"):
                changed = {sha: r for sha, r in image_reviews.items()
                           if r != next(i.review for i in case.images if i.sha256 == sha)}
                try:
                    saved = service.review(case.id, st.session_state[version_key], case_review, changed)
                except CaseConflictError as exc:
                    display.show_error(exc)
                    st.button("Reload the case (your text stays in the form)", key="case_reload",
                              on_click=lambda: st.session_state.update({version_key: service.get_case(case.id).version}))
                    st.stop()
                except BreakHisError as exc:
                    display.show_error(exc)
                    st.stop()
                st.session_state[version_key] = saved.version
                st.rerun()
            if case.status == "reviewed" and sign.button("Sign the case", key="case_sign", icon=":material/verified:"):
                try:
                    signed = service.sign(case.id, st.session_state[version_key])
                except BreakHisError as exc:
                    display.show_error(exc)
                    st.stop()
                st.session_state[version_key] = signed.version
                st.rerun()
    elif case.status == SIGNED and may_review:
        with st.form(f"addendum_{case.id}", border=True):
            st.markdown("**Addendum** (the signed review stays as signed)")
            text = st.text_area("Text", key=f"addendum_text_{case.id}")
            label = st.selectbox("New final label (optional)", [NO_LABEL, *CLASS_NAMES], key=f"addendum_label_{case.id}")
            if st.form_submit_button("Add addendum"):
                review = None if label == NO_LABEL else Review(None, label)
                try:
                    added = service.add_addendum(case.id, st.session_state[version_key], text, review)
                except BreakHisError as exc:
                    display.show_error(exc)
                    st.stop()
                st.session_state[version_key] = added.version
                st.rerun()
    elif not may_review:
        st.caption("Reviewing and signing need the pathologist role.")
    case_downloads(case)


def case_downloads(case: CaseRecord) -> None:
    def page() -> str:
        return case_report(case, service.image_path, service.heatmap)

    a, b = st.columns(2)
    a.download_button("Download report (HTML)", page, file_name=f"case_{case.accession}.html", mime="text/html",
                      icon=":material/description:", on_click="ignore", key="case_report_html")
    reports.pdf_download("Download report (PDF)", page, f"case_{case.accession}.pdf", "case_report_pdf", b)


# ----------------------------------------------------------------------------- the list


def day_bound(day, end: bool) -> datetime | None:
    return None if day is None else datetime.combine(day, time.max if end else time.min, tzinfo=timezone.utc)


def show_list() -> None:
    a, b, c, d = st.columns([2, 1, 1, 2])
    text = a.text_input("Search", key="cases_search", placeholder="accession number or patient reference")
    status = b.selectbox("Status", [ANY, *STATUSES], key="cases_status")
    verdict = c.selectbox("Model verdict", [ANY, *CLASS_NAMES], key="cases_verdict")
    reviewer = d.text_input("Reviewer", key="cases_reviewer", placeholder="e-mail address")
    e, f = st.columns(2)
    since = e.date_input("Created from", value=None, key="cases_since")
    until = f.date_input("Created until", value=None, key="cases_until")
    where = CaseFilter(text=text, status=None if status == ANY else status, verdict=None if verdict == ANY else verdict,
                       reviewer=reviewer.strip() or None, since=day_bound(since, False), until=day_bound(until, True))
    try:
        found = service.list_cases(where)
    except BreakHisError as exc:
        display.show_error(exc)
        st.stop()
    if not found:
        st.info("No case matches." if where != CaseFilter() else
                "No cases yet: save one from the Diagnose page.", icon=":material/folder_open:")
        return
    st.dataframe(pd.DataFrame([{"accession": c.accession, "patient": c.patient_ref, "status": c.status,
                                "created (UTC)": f"{c.created_at:%Y-%m-%d %H:%M}", "model verdict": c.verdict,
                                "final label": c.final_label, "reviewer": c.reviewed_by, "images": c.n_images}
                               for c in found]), hide_index=True, width="stretch")
    chosen = st.selectbox("Open a case", [c.accession for c in found], key="cases_open_choice")
    st.button("Open", key="cases_open", on_click=open_case, args=(chosen,), icon=":material/folder_open:")


requested = st.query_params.get(cases.CASE_PARAM)
if requested:
    show_case(requested)
else:
    show_list()
