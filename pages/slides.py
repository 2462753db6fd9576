"""Slides: analyse a whole-slide image tile by tile in the background; the slide in a zoom-and-pan viewer with the
heat map and tissue mask as overlays (a click shows that tile's Grad-CAM), the verdict, the most suspicious tiles
with Grad-CAM, and the tile table / QuPath GeoJSON / heat map downloads."""

from pathlib import Path

import pandas as pd
import streamlit as st

from breakhis_core.runs import registry
from breakhis_core.slides import jobs as slide_jobs
from breakhis_core.errors import BreakHisError
from breakhis_core.inference.explain import overlay
from breakhis_core.lab.paths import data_roots
from breakhis_core.data.pixelsize import DEFAULT_SLIDE_MAGNIFICATION
from breakhis_core.slides.predict import TilePlan, TypeDistribution, explain_tiles
from breakhis_core.inference.report import load_lab_profile
from breakhis_core.slides.export import blend, coverage_text, load_slide_outputs, slide_report
from breakhis_core.runs.status import LIVE
from breakhis_core.slides.analysisdir import SlideAnalysisDir
from breakhis_core.task import TOP_TYPE_COLUMN
from ui import display, frame, models, signin
from ui.slide_viewer import show_viewer

frame.require_frame()
signin.require_role("viewer", "analysing slides")

GALLERY = 6  # most suspicious tiles shown with their Grad-CAM
UPLOAD_SUFFIXES = ["svs", "tif", "tiff", "ndpi", "scn", "bif", "svslide"]  # single-file formats (.mrxs needs its folder)

root = models.runs_root()
st.title("Slides")

chosen = models.session_model()
if chosen is None and display.no_active_model_notice():
    st.stop()
if chosen is None:
    st.info("There is no model yet: train one on the Train page or import a `.keras` file on the Models page.",
            icon=":material/lightbulb:")
    st.stop()
run, stage = chosen
model_ref = registry.model_id(run, stage)
trained_on = run.config.magnification_filter if run.config else None
display.learning_notice(run.learning(stage), model_ref)

# ----------------------------------------------------------------------------- choose and start


def choose_slide() -> Path | None:
    source = st.radio("Slide", ["folder", "upload"], horizontal=True, key="slides_source",
                      format_func={"folder": "From the slides folder", "upload": "Upload a small slide"}.get)
    if source == "folder":
        roots = data_roots()
        found = slide_jobs.find_slides(roots)
        if not found:
            where = ", ".join(f"`{r / slide_jobs.SLIDES_FOLDER}`" for r in roots) or "a data root"
            st.caption(f"No slide found. Put slide files (.svs, .ndpi, .mrxs, pyramidal .tiff, …) in {where}.")
            return None
        return st.selectbox("Slide file", found, key="slides_file", format_func=lambda p: f"{p.parent.name}/{p.name}")
    upload = st.file_uploader("Slide file (up to the upload limit; large slides belong in the slides folder)",
                              type=UPLOAD_SUFFIXES, key="slides_upload",
                              help="An uploaded slide is stored under the runs folder, because OpenSlide reads files.")
    return slide_jobs.save_upload(upload.getvalue(), upload.name, root) if upload is not None else None


with st.container(border=True):
    slide = choose_slide()
    c1, c2, c3 = st.columns(3)
    if trained_on is None:
        magnification = c1.selectbox("Match the field of", [40, 100, 200, 400], key="slides_mag",
                                     index=[40, 100, 200, 400].index(DEFAULT_SLIDE_MAGNIFICATION),
                                     format_func=lambda m: f"BreakHis {m}X",
                                     help="A tile covers the same area of glass as one training image at this magnification.")
    else:
        magnification = None
        c1.caption(f"Tiles match the model's {trained_on}X training field.")
    mpp = c2.number_input("Slide pixel size (µm/px)", 0.0, 100.0, 0.0, 0.01, key="slides_mpp",
                          help="0: read from the slide's metadata. Needed for slides that do not record it.")
    auto = c3.toggle("Automatic tissue threshold (Otsu)", True, key="slides_auto_threshold")
    threshold = None if auto else c3.slider("Saturation threshold", 0.0, 1.0, 0.1, 0.01, key="slides_threshold")
    if st.button("Analyse slide", type="primary", icon=":material/play_arrow:", disabled=slide is None, key="slides_start"):
        try:
            folder = str(slide_jobs.start_job(slide, model_ref, root, magnification, mpp or None, threshold))
            st.session_state["slides_folder"] = st.session_state["slides_shown"] = folder
        except BreakHisError as exc:
            display.show_error(exc)

previous = slide_jobs.list_analyses(root)
if previous:
    folders = [str(s.folder) for s in previous]
    current = st.session_state.get("slides_folder")
    labels = {str(s.folder): f"{Path(s.request.get('slide', '?')).name} · {s.request.get('model')} · {s.status}"
              for s in previous}
    shown = st.selectbox("Analyses", folders, index=folders.index(current) if current in folders else 0,
                         format_func=labels.get, key="slides_shown")
else:
    shown = None
    st.caption("No slide analysed yet.")

# ----------------------------------------------------------------------------- live job


@st.fragment(run_every="2s")
def live_panel(folder: str) -> None:
    state = slide_jobs.job_state(folder)
    if state.status not in LIVE:
        st.rerun()
    progress = state.progress
    done, total = progress.get("done", 0), progress.get("total") or 0
    st.progress(done / total if total else 0.0, text=progress.get("message") or "Reading the slide…")
    st.button("Cancel analysis", icon=":material/stop_circle:", key="slides_cancel",
              on_click=slide_jobs.cancel_job, args=(folder,), disabled=state.cancel_requested)


def tile_images(folder: str, plan: TilePlan, cells: tuple, request: dict):
    """The tiles' pixels and Grad-CAM (kept for the session, per analysis and tile)."""
    cache = st.session_state.setdefault("slides_cams", {})
    missing = [cell for cell in cells if (folder, cell) not in cache]
    if missing:
        tile_run, tile_stage = registry.resolve_model(request["model"], root)
        predictor = models.predictor_for(tile_run, tile_stage)
        for cell, pair in zip(missing, explain_tiles(request["slide"], plan, predictor, missing,
                                                      request.get("mpp"))):
            cache[(folder, cell)] = pair
    return [cache[(folder, cell)] for cell in cells]


def viewer_panel(folder: str, request: dict, saved, tile_plan: TilePlan, opacity: float) -> None:
    """The slide in the zoom-and-pan viewer; the tile clicked there with its Grad-CAM. A slide that cannot be read
    (moved, deleted, damaged) is said so; the rest of the analysis still shows."""
    st.subheader("Whole-slide viewer")
    try:
        clicked = show_viewer(request["slide"], request.get("mpp"), saved.heatmap, saved.mask, opacity,
                              key=f"slides_viewer_{folder}")
    except (BreakHisError, OSError) as exc:
        st.warning(f"The viewer cannot show this slide: {exc}", icon=":material/warning:")
        return
    if not clicked:
        return
    x, y = clicked["x"], clicked["y"]
    under = [t for t in saved.tiles if t["x"] <= x < t["x"] + t["w"] and t["y"] <= y < t["y"] + t["h"]]
    if not under:
        st.caption(f"No analysed tile at level-0 ({x}, {y}): no tissue there on the mask.")
        return
    tile = under[-1]  # where tiles overlap, the heat map shows the last one
    try:
        ((image, heatmap),) = tile_images(folder, tile_plan, (tile_plan.cell_of(tile["x"], tile["y"]),), request)
    except BreakHisError as exc:
        display.show_error(exc)
        return
    a, b = st.columns(2)
    a.image(image, caption=f"Tile clicked: level-0 ({tile['x']}, {tile['y']}), {tile_text(tile)}", width="stretch")
    b.image(overlay(image, heatmap, 0.4), caption="Grad-CAM of the tile clicked", width="stretch")


def types_panel(types: TypeDistribution | None) -> None:
    """A subtype model's tumour types over the tiles counted in the verdict: one row per type."""
    if types is None:
        return
    st.markdown(f"**Tumour types** over the {types.tiles} tiles counted in the verdict (the verdict itself rests on "
                "P(malignant), the sum of the malignant types' probabilities)")
    st.dataframe(pd.DataFrame({
        "type": [f"{name} ({code})" for code, name in zip(types.codes, types.names)],
        "tiles (most probable type)": types.top_tiles,
        "share of tiles": types.shares,
        "mean probability": types.mean_probability,
    }), hide_index=True, width="stretch", column_config={
        "share of tiles": st.column_config.ProgressColumn(format="percent", min_value=0, max_value=1),
        "mean probability": st.column_config.NumberColumn(format="%.3f"),
    })


def tile_text(tile: dict) -> str:
    """A tile's P(malignant), and its most probable type for a subtype model."""
    return f"P(malignant) {tile['p_malignant']:.2f}" + (f" · {tile[TOP_TYPE_COLUMN]}" if TOP_TYPE_COLUMN in tile else "")


def draw_result(folder: str, request: dict) -> None:
    saved = load_slide_outputs(folder)
    summary, verdict = saved.summary, saved.verdict
    info, plan = summary["slide"], summary["plan"]
    st.subheader(f"{info['name']}: {verdict['verdict']}")
    display.learning_notice(saved.learning, summary["model_id"])  # the analysis' own model, as recorded then
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Slide verdict", verdict["verdict"])
    m2.metric(f"Mean P(malignant), top {verdict['top_k']}", f"{verdict['top_k_mean']:.2f}")
    m3.metric("Tiles above threshold", f"{verdict['malignant_tiles']} / {verdict['tissue_tiles']}",
              f"{verdict['share_above_threshold']:.0%}", delta_color="off")
    m4.metric("Tiles per second", f"{summary['tiles_per_s']:.1f}")
    st.caption(f"Rule: {verdict['rule']}.")
    st.caption(f"Tissue analysed: {coverage_text(summary)}.")
    types_panel(saved.types)
    if verdict.get("flag"):
        st.warning(f"Review this verdict: {verdict['flag']}.", icon=":material/warning:")
    st.caption(f"Tiles: {summary['tile_rule']}. Slide {info['width']}×{info['height']} px at {info['mpp_x']:g} µm/px "
               f"({info['mpp_source']}), {info['level_count']} levels, {info['vendor']}. Model `{summary['model_id']}`, "
               f"learning check: {saved.learning.text}.")
    opacity = st.slider("Heat-map opacity", 0.0, 1.0, 0.5, 0.05, key="slides_opacity")
    tile_plan = TilePlan.from_dict(plan)
    viewer_panel(folder, request, saved, tile_plan, opacity)
    left, right = st.columns(2)
    left.image(blend(saved.thumbnail, saved.heatmap, opacity), caption="P(malignant) per tissue tile (blue 0 … red 1)",
               width="stretch")
    tissue = summary["tissue"]
    right.image(saved.mask.astype("uint8") * 255, caption=f"Tissue mask (saturation > {tissue['threshold']:.2f}, "
                f"{tissue['method']}): {tissue['tissue_tiles']} of {tissue['grid_tiles']} tiles predicted",
                width="stretch")

    tiles = sorted(saved.tiles, key=lambda t: -t["p_malignant"])
    cells = [tile_plan.cell_of(t["x"], t["y"]) for t in tiles]
    st.subheader(f"The {min(GALLERY, len(tiles))} most suspicious tiles, with Grad-CAM for “malignant”")
    display.heatmap_legend()
    try:
        pairs = tile_images(folder, tile_plan, tuple(cells[:GALLERY]), request)
    except BreakHisError as exc:
        display.show_error(exc)
        pairs = []
    columns = st.columns(3)
    for index, ((image, heatmap), tile) in enumerate(zip(pairs, tiles)):
        columns[index % 3].image(overlay(image, heatmap, 0.4), width="stretch",
                                 caption=f"{tile_text(tile)} at level-0 ({tile['x']}, {tile['y']})")

    with st.expander("Open any tile"):
        table = pd.DataFrame(tiles)
        choice = st.selectbox("Tile", range(len(tiles)), key="slides_tile",
                              format_func=lambda i: f"({tiles[i]['x']}, {tiles[i]['y']}) P(malignant) {tiles[i]['p_malignant']:.3f}")
        if choice is not None:
            try:
                (image, heatmap), = tile_images(folder, tile_plan, (cells[choice],), request)
                a, b = st.columns(2)
                a.image(image, caption="Tile as read", width="stretch")
                b.image(overlay(image, heatmap, 0.4), caption="Grad-CAM: evidence for “malignant”", width="stretch")
            except BreakHisError as exc:
                display.show_error(exc)
        st.dataframe(table, hide_index=True, width="stretch")

    d1, d2, d3, d4, d5 = st.columns(5)
    files = SlideAnalysisDir(folder)
    for column, path, mime in ((d1, files.tiles_csv, "text/csv"), (d2, files.tiles_geojson, "application/geo+json"),
                               (d3, files.heatmap, "image/png"), (d4, files.summary, "application/json")):
        column.download_button(path.name, path.read_bytes(), file_name=f"{Path(info['name']).stem}-{path.name}",
                               mime=mime, key=f"slides_download_{path.name}")
    try:
        d5.download_button("report.html", slide_report(saved, load_lab_profile(runs_root=models.runs_root())),
                           file_name=f"{Path(info['name']).stem}-report.html", mime="text/html",
                           key="slides_download_report.html")
    except BreakHisError as exc:  # a bad lab profile (lab.toml)
        d5.caption(f"No report: {exc}")


if shown:
    state = slide_jobs.job_state(shown)
    if state.status in LIVE:
        live_panel(shown)
    elif state.done:
        draw_result(shown, state.request)
    else:
        st.error(f"Analysis {state.status}: {state.error or 'no reason recorded'}", icon=":material/error:")
        if slide_jobs.current_job(root) is not None:
            st.caption("Another slide analysis is running.")
