"""Plotly figures of the pages: probability bars, training curves, metrics, confusion matrices, ROC curves,
reliability diagrams.

Figures only: every number comes from ``breakhis_core`` (predictions, ``metrics.json``,
``history_*.jsonl``, ``evaluate.roc_curve``). Class order is benign, malignant everywhere.
"""

from __future__ import annotations

import plotly.graph_objects as go

from breakhis_core import CLASS_NAMES
from breakhis_core.config import DEFAULT_THRESHOLD, STAGE_LABELS, STAGES
from breakhis_core.inference.predict import LOW_CONFIDENCE_MARGIN

BENIGN = "#2f7f9e"
MALIGNANT = "#b8235a"
MODEL_COLOURS = ("#7a3b8f", "#d9822b")
"""Model A, model B on the Compare page."""
METRIC_LABELS = {
    "image_accuracy": "Image-level accuracy",
    "patient_recognition_rate": "Patient-level accuracy (recognition rate)",
    "patient_verdict_accuracy": "Patient verdict accuracy",
    "sensitivity": "Sensitivity (malignant found)",
    "specificity": "Specificity (benign found)",
    "precision": "Precision",
    "f1": "F1",
    "roc_auc": "ROC AUC",
    "patient_auc": "Patient-level AUC (mean P(malignant) per patient)",
    "balanced_accuracy": "Balanced accuracy (tumour types)",
    "macro_f1": "Macro-F1 (tumour types)",
    "macro_auc": "Macro one-vs-rest AUC (tumour types)",
    "patient_balanced_accuracy": "Patient-level balanced accuracy (tumour types)",
    "patient_macro_f1": "Patient-level macro-F1 (tumour types)",
}


def _layout(fig: go.Figure, height: int, **kwargs) -> go.Figure:
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=30 if kwargs.get("title") else 10, b=10),
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0), **kwargs)
    return fig


def probability_bar(p_malignant: float, low_confidence: bool = False, threshold: float = DEFAULT_THRESHOLD) -> go.Figure:
    """One horizontal bar: P(malignant) on a 0–100 % track, the model's decision threshold and the low-confidence band."""
    colour = MALIGNANT if p_malignant >= threshold else BENIGN
    fig = go.Figure()
    fig.add_vrect(x0=max(0.0, threshold - LOW_CONFIDENCE_MARGIN), x1=min(1.0, threshold + LOW_CONFIDENCE_MARGIN),
                  fillcolor="#f2c94c", opacity=0.25 if low_confidence else 0.12, line_width=0, layer="below")
    fig.add_trace(go.Bar(x=[1.0], y=[""], orientation="h", marker_color="#ece7ef", hoverinfo="skip", showlegend=False))
    fig.add_trace(go.Bar(
        x=[p_malignant], y=[""], orientation="h", marker_color=colour, showlegend=False,
        text=[f"P(malignant) {100 * p_malignant:.1f} %"], textposition="inside" if p_malignant > 0.35 else "outside",
        insidetextanchor="start", hovertemplate="P(malignant) %{x:.1%}<extra></extra>",
    ))
    fig.add_vline(x=threshold, line_dash="dot", line_color="#555")
    fig.update_layout(barmode="overlay", bargap=0.15)
    fig.update_xaxes(range=[0, 1], tickformat=".0%", tickvals=[0, 0.25, 0.5, 0.75, 1], fixedrange=True)
    fig.update_yaxes(visible=False, fixedrange=True)
    fig.update_layout(height=95, margin=dict(l=12, r=22, t=5, b=30))
    return fig


def probabilities_overview(names: list[str], p_malignant: list[float]) -> go.Figure:
    """All images of a group as horizontal bars of P(malignant), coloured by verdict."""
    colours = [MALIGNANT if p >= DEFAULT_THRESHOLD else BENIGN for p in p_malignant]
    fig = go.Figure(go.Bar(x=p_malignant, y=names, orientation="h", marker_color=colours,
                           hovertemplate="%{y}: P(malignant) %{x:.1%}<extra></extra>"))
    fig.add_vrect(x0=DEFAULT_THRESHOLD - LOW_CONFIDENCE_MARGIN, x1=DEFAULT_THRESHOLD + LOW_CONFIDENCE_MARGIN,
                  fillcolor="#f2c94c", opacity=0.15, line_width=0, layer="below")
    fig.add_vline(x=DEFAULT_THRESHOLD, line_dash="dot", line_color="#555")
    fig.update_xaxes(range=[0, 1], tickformat=".0%", title="P(malignant)")
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(height=60 + 26 * len(names), margin=dict(l=10, r=30, t=10, b=10))
    return fig


def training_curves(history: dict[str, list[dict]], metric: str, title: str | None = None) -> go.Figure:
    """``metric`` ("accuracy" or "loss") per epoch, training and validation, stage 2 continuing stage 1.

    Args:
        history: stage → records of ``history_<stage>.jsonl`` (epoch, loss, accuracy, val_loss, val_accuracy, …).
    """
    fig = go.Figure()
    offset = 0
    palette = {"frozen": ("#7a3b8f", "#b58ac4"), "finetuned": ("#d9822b", "#f0b77a")}
    for stage in STAGES:
        records = history.get(stage) or []
        if not records:
            continue
        epochs = [offset + r["epoch"] for r in records]
        for key, name, colour, dash in ((metric, "training", palette[stage][0], "solid"),
                                        (f"val_{metric}", "validation", palette[stage][1], "dash")):
            values = [r.get(key) for r in records]
            if any(v is not None for v in values):
                fig.add_trace(go.Scatter(x=epochs, y=values, mode="lines+markers", name=f"{STAGE_LABELS[stage]}, {name}",
                                         line=dict(color=colour, dash=dash)))
        if stage == "frozen" and history.get("finetuned"):
            fig.add_vline(x=epochs[-1] + 0.5, line_dash="dot", line_color="#888")
        offset = epochs[-1]
    fig.update_xaxes(title="epoch (stage 2 continues stage 1)", dtick=1 if offset <= 30 else None)
    fig.update_yaxes(title=metric, tickformat=".0%" if metric == "accuracy" else None,
                     range=[0, 1.02] if metric == "accuracy" else None)
    fig.update_layout(height=380, title=title, margin=dict(l=10, r=10, t=40, b=10),
                      legend=dict(orientation="h", yanchor="top", y=-0.25, xanchor="left", x=0))
    return fig


def metric_bars(models: dict[str, dict], names: tuple[str, ...]) -> go.Figure:
    """Grouped bars of metrics (``{"value", "ci"}``) per model, with the 95 % CI as error bars.

    Args:
        models: model label → summary S (``metrics.json`` "overall" or one magnification).
    """
    fig = go.Figure()
    labels = [METRIC_LABELS.get(n, n) for n in names]
    for i, (label, summary) in enumerate(models.items()):
        values, low, high = [], [], []
        for name in names:
            metric = summary.get(name) or {}
            value, ci = metric.get("value"), metric.get("ci")
            values.append(value)
            low.append(value - ci[0] if value is not None and ci else 0)
            high.append(ci[1] - value if value is not None and ci else 0)
        fig.add_trace(go.Bar(
            x=labels, y=values, name=label, marker_color=MODEL_COLOURS[i % 2],
            error_y=dict(type="data", symmetric=False, array=high, arrayminus=low, thickness=1.2, width=4),
            hovertemplate="%{x}: %{y:.1%}<extra>" + label + "</extra>",
        ))
    fig.update_yaxes(range=[0, 1.05], tickformat=".0%")
    return _layout(fig, 340, barmode="group")


def by_magnification(models: dict[str, dict], metric: str) -> go.Figure:
    """One metric per magnification, grouped by model (``models``: label → M["by_magnification"])."""
    fig = go.Figure()
    for i, (label, per_mag) in enumerate(models.items()):
        mags = sorted(per_mag, key=int)
        values = [(per_mag[m].get(metric) or {}).get("value") for m in mags]
        cis = [(per_mag[m].get(metric) or {}).get("ci") for m in mags]
        fig.add_trace(go.Bar(
            x=[f"{m}X" for m in mags], y=values, name=label, marker_color=MODEL_COLOURS[i % 2],
            error_y=dict(type="data", symmetric=False,
                         array=[(c[1] - v) if c and v is not None else 0 for c, v in zip(cis, values)],
                         arrayminus=[(v - c[0]) if c and v is not None else 0 for c, v in zip(cis, values)]),
            hovertemplate="%{x}: %{y:.1%}<extra>" + label + "</extra>",
        ))
    fig.update_yaxes(range=[0, 1.05], tickformat=".0%", title=METRIC_LABELS.get(metric, metric))
    return _layout(fig, 300, barmode="group")


def confusion_matrix(matrix: list[list[int]], title: str) -> go.Figure:
    """``[[tn, fp], [fn, tp]]`` as an annotated heat map (rows: true class, columns: predicted)."""
    fig = go.Figure(go.Heatmap(
        z=matrix, x=[f"predicted {c}" for c in CLASS_NAMES], y=[f"true {c}" for c in CLASS_NAMES],
        colorscale=[[0, "#f6f1f7"], [1, "#7a3b8f"]], showscale=False, text=matrix, texttemplate="%{text}",
        textfont=dict(size=18), hovertemplate="%{y}, %{x}: %{z}<extra></extra>",
    ))
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, 260, title=title)


def roc_curves(curves: dict[str, tuple]) -> go.Figure:
    """ROC curves: label → (fpr, tpr, auc or None); the chance diagonal dotted."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="#aaa"), name="chance"))
    for i, (label, (fpr, tpr, auc)) in enumerate(curves.items()):
        name = label + (f" (AUC {auc:.3f})" if auc is not None else "")
        fig.add_trace(go.Scatter(x=list(fpr), y=list(tpr), mode="lines", name=name, line=dict(color=MODEL_COLOURS[i % 2], width=2),
                                 line_shape="hv"))
    fig.update_xaxes(title="1 − specificity (benign called malignant)", range=[0, 1])
    fig.update_yaxes(title="sensitivity (malignant found)", range=[0, 1.02])
    return _layout(fig, 380)


def reliability_diagram(curves: dict[str, dict]) -> go.Figure:
    """Reliability diagrams: label → ``calibration.Reliability.to_dict()`` (mean predicted vs observed per bin,
    marker size by image count); the diagonal is perfect calibration."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="#aaa"), name="perfectly calibrated"))
    for i, (label, curve) in enumerate(curves.items()):
        counts = curve.get("count") or []
        largest = max(counts) if counts else 1
        fig.add_trace(go.Scatter(
            x=curve.get("mean_predicted") or [], y=curve.get("observed") or [], mode="lines+markers", name=label,
            line=dict(color=MODEL_COLOURS[i % 2], width=2, dash="solid" if i % 2 else "dash"),
            marker=dict(size=[6 + 14 * c / largest for c in counts]), customdata=counts,
            hovertemplate="mean P(malignant) %{x:.2f}<br>observed malignant %{y:.2f}<br>%{customdata} images<extra></extra>",
        ))
    fig.update_xaxes(title="mean predicted P(malignant) in the bin", range=[0, 1])
    fig.update_yaxes(title="fraction malignant in the bin", range=[0, 1.02])
    return _layout(fig, 360)
