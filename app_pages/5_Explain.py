"""Explain page: which parts of a face made the model decide, with a faithfulness score per method."""

from __future__ import annotations

import json
import random

import pandas as pd
import streamlit as st

from emotion.explain import ExplainError, Explanation, available_methods
from ui.explain import (
    METHOD_HELP,
    explain_cached,
    face_choice_label,
    options_for,
    patch_grid_cached,
    road_rows,
    view_image,
)
from ui.models import model_page
from ui.predict import (IMAGE_TYPES, MAX_UPLOAD_MB, SAMPLE_SOURCE, check_upload, digest, run_key,
                        show_sample_photo)

st.set_page_config(page_title="Explain · Emotion Studio", page_icon="🧠", layout="wide")
st.title("Explain")
st.caption("Why the model said what it said: heatmaps of the pixels that drove its answer (Grad-CAM family, "
           "attention rollout for transformers, feature maps), each with a ROAD score — how much the "
           "confidence drops when the highlighted pixels are removed — so methods can be compared by number.")

dataset, spec, classes, predictor = model_page("explain_run")
CFG = predictor.model_config
MODEL_KEY = run_key(predictor)
METHOD_LIST = available_methods(CFG)

# ----------------------------------------------------------------------------- image
source = st.radio("Image from", [SAMPLE_SOURCE, "Dataset sample", "Upload", "Webcam snapshot"], horizontal=True,
                  key="explain_source", help="the sample photo is a real face; dataset samples come from the "
                                             "dataset in the sidebar")
name, data = None, None
if source == SAMPLE_SOURCE:
    name, data = show_sample_photo()
elif source == "Dataset sample":
    if dataset is None:
        st.info("Choose a dataset in the sidebar, or upload an image.")
        st.stop()
    splits = list(dataset.splits)
    c1, c2, c3, c4 = st.columns([1, 1, 1, 1])
    split = c1.selectbox("Split", splits, index=splits.index(dataset.eval_split) if "test" in splits
                         or "val" in splits else 0, key="explain_split")
    cls = c2.selectbox("Class", ["any"] + list(dataset.classes), key="explain_class")
    pool = [s for s in dataset.splits[split] if cls == "any" or dataset.classes[s.label] == cls]
    if not pool:
        st.info(f"No {cls} images in the {split} split.")
        st.stop()
    st.session_state.setdefault("explain_index", 0)
    if st.session_state["explain_index"] >= len(pool):
        st.session_state["explain_index"] = 0

    def _shuffle(n: int = len(pool)) -> None:
        st.session_state["explain_index"] = random.randrange(n)

    c3.number_input(f"Image (0–{len(pool) - 1})", 0, len(pool) - 1, key="explain_index")
    c4.button("Random image", key="explain_random", on_click=_shuffle)
    sample = pool[int(st.session_state["explain_index"])]
    try:
        data = sample.path.read_bytes()
    except OSError as exc:
        st.error(f"Cannot read {sample.path}: {exc}")
        st.stop()
    name = f"{sample.path.name} (labelled {dataset.classes[sample.label]})"
elif source == "Upload":
    up = st.file_uploader(f"An image with a face (up to {MAX_UPLOAD_MB} MB)", type=IMAGE_TYPES,
                          key="explain_file")
    if up is not None:
        name, data = up.name, up.getvalue()
else:
    shot = st.camera_input("Take a snapshot", key="explain_camera")
    if shot is not None:
        name, data = "snapshot", shot.getvalue()

if data is None:
    st.info("Upload an image or take a snapshot to explain it.")
    st.stop()
image, problem = check_upload(name, data)
if image is None:
    st.error(problem)
    st.stop()

detect = st.toggle("Find the face first", value=source != "Dataset sample", key=f"explain_detect_{source}",
                   help="on: detect faces and explain one crop, as Predict does; off: explain the whole "
                        "image (right for dataset face crops)")
face = None
if detect:
    with st.spinner("Finding faces…"):
        faces = predictor.detect(image)
    if not faces:
        st.info("No face found: the whole image is explained (right for tight face crops).")
    else:
        largest = max(range(len(faces)), key=lambda i: faces[i].area)
        if st.session_state.get("explain_face", 0) not in range(len(faces)):
            st.session_state.pop("explain_face", None)
        pick = st.selectbox("Face", range(len(faces)), index=largest, key="explain_face",
                            format_func=lambda i: face_choice_label(i, faces[i], largest),
                            disabled=len(faces) == 1)
        face = faces[int(pick)]
crop = predictor.crop(image, face)
crop_key = digest(crop.tobytes())
probs = predictor.classify([crop])[0]
labels = list(predictor.labels)
predicted = int(probs.argmax())

# ----------------------------------------------------------------------------- method and target
# another run may have other methods or classes: forget choices it does not offer
if st.session_state.get("explain_method") not in METHOD_LIST:
    st.session_state.pop("explain_method", None)
if st.session_state.get("explain_target", -1) not in range(-1, len(labels)):
    st.session_state.pop("explain_target", None)
c1, c2, c3 = st.columns([1, 1, 1])
method = c1.selectbox("Method", METHOD_LIST, key="explain_method", format_func=lambda m: METHOD_HELP[m][0],
                      help="methods that apply to this model; " + "; ".join(
                          f"{METHOD_HELP[m][0]}: {METHOD_HELP[m][1]}" for m in METHOD_LIST))
PREDICTED = -1  # the option "whatever the model predicts" (None would make the box clearable)
choice = c2.selectbox(
    "Class to explain", [PREDICTED] + list(range(len(labels))), key="explain_target",
    format_func=lambda t: (f"predicted: {labels[predicted]} ({probs[predicted]:.0%})" if t == PREDICTED
                           else f"{labels[t]} ({probs[t]:.0%})"))
target = None if choice == PREDICTED else int(choice)
with c3:
    options = options_for(method, key="explain")

try:
    with st.spinner(f"{METHOD_HELP[method][0]} on {CFG.name}…"):
        result: Explanation = explain_cached(crop_key, MODEL_KEY, method, target, json.dumps(options),
                                             predictor, crop)
except ExplainError as exc:
    st.error(str(exc))
    st.stop()

st.subheader(f"{METHOD_HELP[method][0]} for “{result.target_label}”")
left, middle, right = st.columns([1, 1, 1])
left.image(view_image(result), caption=f"{name}: what the model sees ({CFG.input_size} px)", width="stretch")
middle.image(result.overlay(224), caption=f"{METHOD_HELP[method][0]} overlay (red = most relevant)",
             width="stretch")
with right:
    # the predictor's probabilities (temperature applied), as the class box above and the Predict page show
    st.metric("Predicted", f"{labels[predicted]} · {probs[predicted]:.0%}")
    if result.road is not None:
        st.metric("ROAD score", f"{result.road.combined:+.3f}",
                  help="(LeRF − MoRF) / 2 over 10–90 % of pixels removed: confidence lost removing the most "
                       "relevant pixels first versus the least relevant. Higher = the map is more faithful.")
        st.caption(f"MoRF {result.road.morf:+.3f} (removing the most relevant first; lower is better) · "
                   f"LeRF {result.road.lerf:+.3f} (least relevant first; higher is better) · "
                   f"{result.seconds:.1f} s")
    if not result.class_specific:
        st.caption("This method's map is the same whatever the class asked for.")
    st.caption(" · ".join(f"{lab} {p:.0%}" for lab, p in zip(labels, probs)))

# ----------------------------------------------------------------------------- model-specific views
if CFG.family == "vit":
    st.subheader("Transformer: attention rollout beside Grad-CAM, and the patch grid")
    cols = st.columns(3)
    for col, m in zip(cols, ("rollout", "gradcam")):
        try:
            other = explain_cached(crop_key, MODEL_KEY, m, target, json.dumps(options_for(m, key=None)),
                                   predictor, crop)
        except ExplainError as exc:
            col.error(str(exc))
            continue
        road = f" · ROAD {other.road.combined:+.3f}" if other.road else ""
        col.image(other.overlay(224), caption=f"{METHOD_HELP[m][0]}{road}", width="stretch")
    grid, info = patch_grid_cached(crop_key, MODEL_KEY, predictor, crop)
    cols[2].image(grid, width="stretch",
                  caption=f"{info['grid'][0]}×{info['grid'][1]} patches of {info['patch_pixels'][0]} px + "
                          f"{info['prefix_tokens']} class token(s) = {info['tokens']} tokens")
if method == "featuremaps" or CFG.name.startswith("vgg"):
    st.subheader("Feature maps: early, middle and deep layers")
    st.caption("Per layer: the activation energy over the face, then its strongest channels. Early layers "
               "see edges and texture, deep layers the parts that decide.")
    fm = result if method == "featuremaps" else explain_cached(
        crop_key, MODEL_KEY, "featuremaps", target, json.dumps({}), predictor, crop)
    st.image(fm.figure(224), width="content")

# ----------------------------------------------------------------------------- compare
st.subheader("Compare all methods")
compare_key = f"explain_compare::{MODEL_KEY}::{crop_key}::{target}"
if st.button("Compare all methods", key="explain_compare",
             help="every method for this image and class, ranked by ROAD score"):
    results = {}
    bar = st.progress(0.0, text="Explaining…")
    for i, m in enumerate(METHOD_LIST):
        bar.progress(i / len(METHOD_LIST), text=f"{METHOD_HELP[m][0]}…")
        try:
            results[m] = explain_cached(crop_key, MODEL_KEY, m, target, json.dumps(options_for(m, key=None)),
                                        predictor, crop)
        except ExplainError as exc:
            st.warning(f"{m}: {exc}")
    bar.empty()
    st.session_state[compare_key] = results
compared: dict = st.session_state.get(compare_key) or {}
if not compared:
    st.caption(f"Runs {', '.join(METHOD_LIST)} on this face and ranks them by ROAD score (higher is more "
               "faithful).")
else:
    st.dataframe(pd.DataFrame(road_rows(compared)), hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(c, format="%+.3f")
                                for c in ("ROAD", "MoRF", "LeRF")})
    cols = st.columns(len(compared))
    for col, (m, r) in zip(cols, compared.items()):
        col.image(r.overlay(160), caption=METHOD_HELP[m][0], width="stretch")
