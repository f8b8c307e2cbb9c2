"""Predict-page helpers: checking uploads, drawing labelled faces, showing one image's result.

``check_upload`` and ``annotate`` are plain functions (tests and the live
webcam call them); ``show_prediction`` draws one image's result on the page.
"""

from __future__ import annotations

import functools
import hashlib
import io
from pathlib import Path
from typing import Optional, Sequence

import streamlit as st
from PIL import Image, ImageDraw, ImageFont

from emotion.images import ImageLoadError, load_image
from emotion.inference import ImagePrediction, Predictor
from emotion.runs import WEIGHTS_FILE

MAX_UPLOAD_MB = 10  # per image, explained in words; .streamlit/config.toml caps a transfer at 200 MB
MAX_FILES = 24  # images classified per upload batch (the rest are listed, not classified)
IMAGE_TYPES = ["png", "jpg", "jpeg", "bmp", "gif", "webp", "tif", "tiff"]
# one colour per class index (boxes and label backgrounds); cycles past ten classes
PALETTE = [(230, 57, 70), (42, 157, 143), (69, 123, 157), (244, 162, 97), (131, 56, 236), (255, 183, 3),
           (106, 153, 78), (214, 40, 57), (0, 119, 182), (120, 120, 120)]


SAMPLE_SOURCE = "Sample photo"
SAMPLE_NAME = "astronaut.png"
SAMPLE_CREDIT = ("Eileen Collins, NASA astronaut (public domain), the sample photo that ships with "
                 "scikit-image")


@functools.lru_cache(maxsize=1)
def sample_photo() -> bytes:
    """A real face to try the model on with no upload: scikit-image's astronaut, as PNG bytes."""
    from skimage import data  # its sample photos ship inside the wheel: no download

    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buffer, format="PNG")
    return buffer.getvalue()


def show_sample_photo() -> tuple[str, bytes]:
    """The sample photo as an upload (name, bytes), with its credit shown under the source choice."""
    st.caption(SAMPLE_CREDIT)
    return SAMPLE_NAME, sample_photo()


def check_upload(name: str, data: bytes, max_mb: float = MAX_UPLOAD_MB) -> tuple[Optional[Image.Image], str]:
    """(image, '') for a readable upload, else (None, a message saying what is wrong and what to do)."""
    size_mb = len(data) / 2 ** 20
    if size_mb > max_mb:
        return None, (f"**{name}** is {size_mb:.1f} MB, more than the {max_mb:g} MB this page accepts per "
                      "image: downscale it or save it as JPEG, then upload it again.")
    try:
        return load_image(data), ""
    except ImageLoadError as exc:
        return None, (f"**{name}** could not be read as an image ({exc}). Upload a PNG, JPEG, BMP, GIF, "
                      "WebP or TIFF file.")


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run_key(predictor: Predictor) -> str:
    """Changes when the predictor's run or its weights change (a cache key part)."""
    path = Path(predictor.run.path) if predictor.run is not None else Path("?")
    weights = path / WEIGHTS_FILE
    stamp = weights.stat().st_mtime_ns if weights.exists() else 0
    return f"{path.resolve()}|{stamp}|{predictor.model_config.name}|{getattr(predictor, 'backend', 'torch')}"


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def face_text(index: int, face) -> str:
    """The label drawn on a face: its number (or track id), top class and confidence."""
    tag = f"#{face.track_id}" if face.track_id is not None else str(index)
    return f"{tag} {face.label} {face.confidence:.0%}"


def annotate(image: Image.Image, prediction: ImagePrediction, numbered: bool = True) -> Image.Image:
    """A copy of ``image`` with each face's box and a legible label (number, class, confidence).

    Box and label colours follow the predicted class; text scales with the image.
    A whole-image result gets its label in the top-left corner and no box.
    """
    img = load_image(image).copy()
    draw = ImageDraw.Draw(img)
    side = max(img.size)
    lw = max(2, round(side / 250))
    font = _font(max(11, round(side / 32)))
    labels = list(prediction.labels)
    for i, face in enumerate(prediction.faces, start=1):
        color = PALETTE[labels.index(face.label) % len(PALETTE)] if face.label in labels else PALETTE[-1]
        text = face_text(i, face) if numbered else f"{face.label} {face.confidence:.0%}"
        if face.source == "whole":
            x, y = lw, lw
        else:
            x1, y1, x2, y2 = face.box
            draw.rectangle((x1, y1, x2, y2), outline=color, width=lw)
            for (px, py) in face.face.landmarks:
                r = lw
                draw.ellipse((px - r, py - r, px + r, py + r), fill=(255, 255, 255))
            x, y = x1, y1
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        pad = max(2, lw)
        y = y - th - 2 * pad if y - th - 2 * pad >= 0 else y  # above the box, inside when no room
        x = min(max(0, x), max(0, img.width - tw - 2 * pad))
        draw.rectangle((x, y, x + tw + 2 * pad, y + th + 2 * pad), fill=color)
        draw.text((x + pad - left, y + pad - top), text, fill=(255, 255, 255), font=font)
    return img


def show_prediction(name: str, image: Image.Image, prediction: ImagePrediction, predictor: Predictor,
                    key: str, on_whole_image=None) -> None:
    """One image's result: the annotated image, then per face its crop, label and probability bars.

    ``on_whole_image``: callback of the "Classify the whole image" button shown when
    no face was found.
    """
    with st.container(border=True):
        st.markdown(f"**{name}** · {image.width}×{image.height} · {prediction.message}")
        if prediction.no_face and not prediction.whole_image:
            st.warning(f"No face found in **{name}**. If it is already a tight face crop (like FER2013's "
                       "48×48 images), classify the whole image instead.")
            st.button("Classify the whole image", key=f"{key}_whole", on_click=on_whole_image,
                      help="turns on 'Classify the whole image when no face is found' for every image")
            st.image(image, width=min(320, image.width))
            return
        if prediction.whole_image:
            st.info("No face found: the **whole image** was classified (right for tight face crops; on a "
                    "wider photo the answer means little).")
        left, right = st.columns([3, 2])
        left.image(annotate(image, prediction), width="stretch")
        with right:
            for i, face in enumerate(prediction.faces, start=1):
                crop_col, bars_col = st.columns([1, 3])
                crop = predictor.crop(image, face.face if face.source == "face" else None)
                crop_col.image(crop, width=72, caption=f"face {i}" if face.source == "face" else "whole")
                bars_col.markdown(f"**{i}: {face.label}** · {face.confidence:.0%}")
                for label, p in face.probabilities.items():
                    bars_col.progress(min(1.0, max(0.0, float(p))), text=f"{label} {p:.1%}")


def results_json(items: Sequence[tuple[str, ImagePrediction]], predictor: Predictor) -> dict:
    """What the download button hands out: the model and every image's faces."""
    return {**predictor.describe(), "images": [{"file": name, **pred.to_dict()} for name, pred in items]}
