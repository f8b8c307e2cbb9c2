"""Explain-page helpers: method names and options, cached explanations, the ROAD comparison table.

Explanations never change the shared model (``emotion.explain`` borrows it and
restores hooks, modes and gradient flags), so the cached predictor from
``emotion.inference.get_predictor`` is used directly.
"""

from __future__ import annotations

import json
from typing import Any, Optional

import streamlit as st
from PIL import Image

from emotion.explain import HEAD_FUSIONS, Explanation, explain, patch_grid
from emotion.faces import Face
from emotion.inference import Predictor

# method -> (display name, what it shows)
METHOD_HELP: dict[str, tuple[str, str]] = {
    "gradcam": ("Grad-CAM", "gradients of the class score weight the last feature maps"),
    "gradcam++": ("Grad-CAM++", "Grad-CAM with higher-order weights; sharper with several relevant regions"),
    "eigencam": ("EigenCAM", "first principal component of the last feature maps (not class-specific)"),
    "scorecam": ("Score-CAM", "each feature map masks the input; weighted by the class score it keeps "
                              "(gradient-free, slower)"),
    "rollout": ("Attention rollout", "attention carried through every transformer block to the class token"),
    "featuremaps": ("Feature maps", "activation energy of the deepest feature layer (not class-specific)"),
}
SCORECAM_CHANNELS = 32  # Faster Score-CAM: the most varied channels only, one forward pass each


def options_for(method: str, key: Optional[str]) -> dict[str, Any]:
    """The method's options: widgets when ``key`` is given (a widget-key prefix), else the defaults."""
    if method == "rollout":
        if key is None:
            return {"head_fusion": "mean", "discard_ratio": 0.9}
        c1, c2 = st.columns(2)
        fusion = c1.selectbox("Head fusion", HEAD_FUSIONS, key=f"{key}_fusion",
                              help="how the attention heads of a block are combined")
        discard = c2.slider("Discard ratio", 0.0, 0.99, 0.9, 0.01, key=f"{key}_discard",
                            help="share of the weakest attention weights dropped in every block")
        return {"head_fusion": fusion, "discard_ratio": float(discard)}
    if method == "scorecam":
        if key is None:
            return {"max_channels": SCORECAM_CHANNELS}
        channels = st.select_slider("Channels scored", [8, 16, 32, 64, 128, 256, 512], SCORECAM_CHANNELS,
                                    key=f"{key}_channels",
                                    help="the most varied feature channels; each costs one forward pass")
        return {"max_channels": int(channels)}
    return {}


@st.cache_data(max_entries=128, show_spinner=False)
def explain_cached(crop_key: str, model_key: str, method: str, target: Optional[int], options_json: str,
                   _predictor: Predictor, _crop: Image.Image) -> Explanation:
    """``emotion.explain.explain`` of one face crop, cached by crop, model, method, target and options."""
    return explain(_predictor, _crop, method, target=target, **json.loads(options_json))


@st.cache_data(max_entries=32, show_spinner=False)
def patch_grid_cached(crop_key: str, model_key: str, _predictor: Predictor, _crop: Image.Image
                      ) -> tuple[Image.Image, dict[str, Any]]:
    return patch_grid(_predictor, _crop)


def view_image(result: Explanation, size: int = 224) -> Image.Image:
    """What the model saw, enlarged to sit beside the overlay."""
    return Image.fromarray(result.image).resize((size, size), Image.Resampling.BICUBIC)


def face_choice_label(index: int, face: Face, largest: int) -> str:
    x1, y1, x2, y2 = face.box
    largest_note = " · largest" if index == largest else ""
    return f"face {index} (left to right) · {x2 - x1:.0f}×{y2 - y1:.0f} px{largest_note}"


def road_rows(results: dict[str, Explanation]) -> list[dict[str, Any]]:
    """One row per method, best ROAD first (methods without a score last)."""
    rows = [{"method": METHOD_HELP.get(m, (m,))[0],
             "ROAD": r.road.combined if r.road else None,
             "MoRF": r.road.morf if r.road else None,
             "LeRF": r.road.lerf if r.road else None,
             "class-specific": r.class_specific,
             "seconds": round(r.seconds, 2)} for m, r in results.items()]
    return sorted(rows, key=lambda row: (row["ROAD"] is None, -(row["ROAD"] or 0.0)))
