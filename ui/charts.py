"""Plotly figures shared by the pages (no Streamlit here: each returns a figure)."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import plotly.express as px
import plotly.graph_objects as go


def confusion_figure(matrix: Sequence[Sequence[float]], classes: Sequence[str], normalized: bool,
                     title: str = "") -> go.Figure:
    """Heatmap, rows true and columns predicted; counts or row-normalised recall shares."""
    fig = px.imshow(
        matrix, x=list(classes), y=list(classes), text_auto=".2f" if normalized else True,
        color_continuous_scale="Blues", zmin=0, zmax=1 if normalized else None, aspect="equal",
        labels={"x": "predicted", "y": "true", "color": "share" if normalized else "images"},
        title=title or ("Confusion matrix (share of each true class)" if normalized else "Confusion matrix"),
    )
    fig.update_layout(margin=dict(l=10, r=10, t=40, b=10), height=360)
    return fig


def recall_figure(per_class: dict[str, dict[str, Any]], title: str = "Recall per class") -> go.Figure:
    names = list(per_class)
    fig = px.bar(x=names, y=[per_class[c]["recall"] for c in names], labels={"x": "class", "y": "recall"},
                 range_y=[0, 1], title=title, text_auto=".2f")
    fig.update_layout(margin=dict(l=10, r=10, t=40, b=10), height=320)
    return fig


def reliability_figure(calibration: dict[str, Any], title: str = "Reliability diagram") -> go.Figure:
    """Accuracy against confidence per bin (before and, if fitted, after temperature scaling)."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                             line=dict(dash="dash", color="gray")))
    curves = [("reliability", f"model (ECE {calibration.get('ece', 0):.3f})")]
    if calibration.get("reliability_calibrated"):
        t, ece = calibration.get("temperature", 1), calibration.get("ece_calibrated", 0)
        curves.append(("reliability_calibrated", f"T = {t:.2f} (ECE {ece:.3f})"))
    for key, name in curves:
        rel = calibration[key]
        pts = [(c, a, n) for c, a, n in zip(rel["confidence"], rel["accuracy"], rel["count"]) if n]
        fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers",
                                 name=name, text=[f"{p[2]} images" for p in pts], marker=dict(size=8)))
    fig.update_layout(title=title, xaxis_title="confidence", yaxis_title="accuracy", height=360,
                      xaxis=dict(range=[0, 1]), yaxis=dict(range=[0, 1]), margin=dict(l=10, r=10, t=40, b=10),
                      legend=dict(orientation="h", y=-0.25))
    return fig


def curves_figure(curves: dict[str, list[dict]], metric: str = "loss") -> Optional[go.Figure]:
    """Training-loss and validation curves against step; None before the first logged step."""
    train, evals = curves.get("train") or [], curves.get("eval") or []
    fig = go.Figure()
    if metric == "loss":
        if train:
            fig.add_trace(go.Scatter(x=[r["step"] for r in train], y=[r["loss"] for r in train],
                                     mode="lines", name="train loss"))
        pts = [r for r in evals if r.get("loss") is not None]
        if pts:
            fig.add_trace(go.Scatter(x=[r["step"] for r in pts], y=[r["loss"] for r in pts],
                                     mode="lines+markers", name="validation loss"))
        title, y = "Loss", "loss"
    else:
        for key, name in (("accuracy", "validation accuracy"), ("macro_f1", "validation macro-F1")):
            pts = [r for r in evals if r.get(key) is not None]
            if pts:
                fig.add_trace(go.Scatter(x=[r["step"] for r in pts], y=[r[key] for r in pts],
                                         mode="lines+markers", name=name))
        title, y = "Validation accuracy and macro-F1", "score"
    if not fig.data:
        return None
    fig.update_layout(title=title, xaxis_title="step", yaxis_title=y, height=300,
                      margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.3))
    return fig


def counts_figure(counts: dict[str, dict[str, int]], title: str = "Images per class") -> go.Figure:
    """Grouped bars of images per class, one colour per split."""
    rows = [{"split": split, "class": c, "images": n}
            for split, per in counts.items() for c, n in per.items()]
    fig = px.bar(rows, x="class", y="images", color="split", barmode="group", title=title, text_auto=True)
    fig.update_layout(margin=dict(l=10, r=10, t=40, b=10))
    return fig


def emotion_timeline_figure(rows: Sequence[dict[str, Any]], labels: Sequence[str], title: str = "") -> go.Figure:
    """One face track over a video: each class's probability (smoothed, as labelled) against time.

    ``rows`` are :func:`emotion.video_files.prediction_rows` rows of one track, in time order;
    the top label of each frame is in the hover text.
    """
    times = [r["time_s"] for r in rows]
    fig = go.Figure()
    for name in labels:
        fig.add_trace(go.Scatter(x=times, y=[r[f"p_{name}"] for r in rows], mode="lines", name=name,
                                 customdata=[r["label"] for r in rows],
                                 hovertemplate="%{x:.2f} s: " + name + " %{y:.0%} (top: %{customdata})"
                                               "<extra></extra>"))
    fig.update_layout(title=title or "Emotion over time", xaxis_title="time (s)", yaxis_title="probability",
                      yaxis=dict(range=[0, 1], tickformat=".0%"), height=280, hovermode="x unified",
                      margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.3))
    return fig
