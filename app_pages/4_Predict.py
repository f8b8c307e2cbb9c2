"""Predict page: faces found and classified in uploaded photos, videos, webcam snapshots or live video."""

from __future__ import annotations

import json

import streamlit as st

from emotion.images import ImageLoadError
from emotion.inference import ImagePrediction, Predictor
from ui.models import model_page
from ui.predict import (
    IMAGE_TYPES,
    MAX_FILES,
    MAX_UPLOAD_MB,
    SAMPLE_SOURCE,
    check_upload,
    digest,
    results_json,
    run_key,
    show_prediction,
    show_sample_photo,
)
from ui.video_upload import video_panel
from ui.webcam import live_panel

st.set_page_config(page_title="Predict · Emotion Studio", page_icon="🙂", layout="wide")
st.title("Predict")
st.caption("Every face in a photo is found (MTCNN), cropped the way the model was trained, and classified. "
           "Nothing you upload is stored.")

dataset, spec, classes, predictor = model_page("predict_run", choose_backend=True)

WHOLE_KEY = "predict_whole"
st.session_state.setdefault(WHOLE_KEY, False)


def _whole_on() -> None:
    st.session_state[WHOLE_KEY] = True


st.toggle("Classify the whole image when no face is found", key=WHOLE_KEY,
          help="right for tight face crops (e.g. FER2013's 48×48 images), on which the face detector finds "
               "nothing")
whole = bool(st.session_state[WHOLE_KEY])


@st.cache_data(max_entries=256, show_spinner=False)
def _predict(image_digest: str, model_key: str, whole_image: bool, _predictor: Predictor,
             _data: bytes) -> ImagePrediction:
    return _predictor.predict(_data, whole_image=whole_image)


def _classify(items: list[tuple[str, bytes]], key: str) -> None:
    done: list[tuple[str, ImagePrediction]] = []
    model_key = run_key(predictor)
    for i, (name, data) in enumerate(items):
        image, problem = check_upload(name, data)
        if image is None:
            st.error(problem)
            continue
        with st.spinner(f"Finding and classifying faces in {name}…"):
            try:
                result = _predict(digest(data), model_key, whole, predictor, data)
            except (ImageLoadError, ValueError) as exc:
                st.error(f"**{name}**: {exc}")
                continue
        show_prediction(name, image, result, predictor, key=f"{key}_{i}", on_whole_image=_whole_on)
        done.append((name, result))
    if done:
        st.download_button("Download the results (JSON)", json.dumps(results_json(done, predictor), indent=2),
                           file_name="predictions.json", mime="application/json", key=f"{key}_json")


source = st.radio("Images from", ["Upload", SAMPLE_SOURCE, "Video", "Webcam snapshot", "Live webcam"],
                  horizontal=True, key="predict_source",
                  help="no photo at hand? the sample photo is a real face; Video: a video file, each face "
                       "tracked through it")

if source == SAMPLE_SOURCE:
    _classify([show_sample_photo()], key="sample")

elif source == "Upload":
    files = st.file_uploader(f"Photos (one or many, up to {MAX_UPLOAD_MB} MB each)", type=IMAGE_TYPES,
                             accept_multiple_files=True, key="predict_files")
    if not files:
        st.info("Upload one or more photos with faces; group photos work too (every face is classified).")
    else:
        if len(files) > MAX_FILES:
            st.warning(f"{len(files)} files uploaded: the first {MAX_FILES} are classified.")
        _classify([(f.name, f.getvalue()) for f in files[:MAX_FILES]], key="upload")

elif source == "Video":
    video_panel(predictor)

elif source == "Webcam snapshot":
    shot = st.camera_input("Take a snapshot", key="predict_camera",
                           help="your browser asks for the camera; it works over https or on localhost")
    if shot is None:
        st.info("Take a snapshot: the faces in it are classified.")
    else:
        _classify([("snapshot", shot.getvalue())], key="camera")

else:
    st.markdown("Live video: faces are tracked across frames, the detector runs every few frames, and each "
                "face's label is a moving average so it does not flicker.")
    live_panel(predictor)
