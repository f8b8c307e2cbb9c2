"""Video uploads for the Predict page: the file through ``emotion.video_files``, a timeline per face track.

The work is :func:`emotion.video_files.predict_video` (the command line's
``predict`` on a video): frames decoded one at a time, faces tracked and
smoothed as on the live webcam.  This module only saves the upload to a
temporary file, shows progress, and draws the result; the result is kept in
``st.session_state`` so reruns (a download click, a widget) do not analyse
the video again.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import streamlit as st

from emotion.inference import Predictor
from emotion.video_files import (
    VideoDecodeError,
    VideoError,
    check_video_output,
    file_video_config,
    predict_video,
    rows_to_text,
    track_summary,
)
from ui.charts import emotion_timeline_figure
from ui.predict import digest, run_key

logger = logging.getLogger(__name__)

VIDEO_TYPES = ["mp4", "webm", "avi", "mov", "mkv"]
MAX_VIDEO_MB = 200  # .streamlit/config.toml's maxUploadSize
DEFAULT_EVERY = 5  # 30 fps video: 6 analysed frames a second, enough for an expression's course
MAX_TIMELINES = 6  # longest tracks drawn; the table lists them all


def analyse_upload(predictor: Predictor, name: str, data: bytes, every: int, alpha: float,
                   annotated: bool) -> dict[str, Any]:
    """Run the upload through ``predict_video`` with a progress bar; rows, header, problem, annotated bytes."""
    suffix = Path(name).suffix.lower() or ".mp4"
    workdir = Path(tempfile.mkdtemp(prefix="emotion-video-"))
    source, out = workdir / f"upload{suffix}", workdir / "annotated.mp4"
    source.write_bytes(data)
    bar = st.progress(0.0, text=f"Analysing {name}…")
    last = [0.0]

    def progress(done: int, total: Optional[int]) -> None:
        now = time.monotonic()
        if now - last[0] < 0.25:  # a progress message per frame would flood the browser
            return
        last[0] = now
        fraction = min(1.0, done / total) if total else 0.0
        bar.progress(fraction, text=f"Analysing {name}: frame {done}" + (f" of {total}" if total else ""))

    rows: list[dict[str, Any]] = []
    result: dict[str, Any] = {"name": name, "rows": rows, "problem": None, "error": None, "frames": 0,
                              "video": None}
    try:
        frames = predict_video(predictor, source, every=every, config=file_video_config(ema_alpha=alpha),
                               annotate=check_video_output(out) if annotated else None, progress=progress)
        try:
            for frame in frames:
                result["frames"] += 1
                rows.extend(dict(row, source=name) for row in frame.rows())
        except VideoDecodeError as exc:
            result["problem"] = str(exc).replace(str(source), name)
        if annotated and out.exists():
            result["video"] = out.read_bytes()
    except VideoError as exc:
        result["error"] = str(exc).replace(str(source), name)
    finally:
        bar.empty()
        for path in (source, out):
            path.unlink(missing_ok=True)
        os.rmdir(workdir)
    return result


def show_video_result(result: dict[str, Any], labels: list[str], every: int, key: str) -> None:
    """The timelines (one per face track), the track table, the CSV download and the annotated video."""
    name, rows = result["name"], result["rows"]
    tracks = sorted(track_summary(rows, labels), key=lambda t: -t["frames"])
    st.markdown(f"**{name}** · {result['frames']} frames analysed"
                f"{'' if every == 1 else f' (one in {every})'} · "
                f"{len(rows)} face rows · {len(tracks)} face track{'s' if len(tracks) != 1 else ''}")
    if result["problem"]:
        st.warning(f"The video stopped early: {result['problem']}")
    if not rows:
        st.warning(f"No face found in any analysed frame of **{name}**.")
        return
    for t in tracks[:MAX_TIMELINES]:
        mine = [r for r in rows if r["track"] == t["track"]]
        title = (f"Face #{t['track']}: {t['label']} in {t['label_share']:.0%} of its {t['frames']} frames "
                 f"({t['start_s']:.1f}–{t['end_s']:.1f} s)")
        st.plotly_chart(emotion_timeline_figure(mine, labels, title=title), key=f"{key}_timeline_{t['track']}")
    if len(tracks) > MAX_TIMELINES:
        st.caption(f"{len(tracks) - MAX_TIMELINES} shorter tracks are in the table, not drawn.")
    st.dataframe(tracks, hide_index=True)
    with st.expander(f"All {len(rows)} rows"):
        st.dataframe(rows, hide_index=True)
    st.download_button("Download the rows (CSV)", rows_to_text(rows, labels), mime="text/csv",
                       file_name=f"{Path(name).stem}-emotions.csv", key=f"{key}_csv")
    if result["video"]:
        st.video(result["video"], format="video/mp4")
        st.download_button("Download the annotated video", result["video"], mime="video/mp4",
                           file_name=f"{Path(name).stem}-annotated.mp4", key=f"{key}_mp4")


def video_panel(predictor: Predictor, key: str = "predict_video") -> None:
    """The Video source: an upload, how densely to analyse it, then the result (cached per settings)."""
    upload = st.file_uploader(f"A video ({', '.join(t.upper() for t in VIDEO_TYPES)}; up to {MAX_VIDEO_MB} MB)",
                              type=VIDEO_TYPES, key=f"{key}_file")
    c1, c2, c3 = st.columns(3)
    every = int(c1.number_input("Analyse every k-th frame", min_value=1, max_value=300, value=DEFAULT_EVERY,
                                key=f"{key}_every", help="1 analyses every frame (slowest); faces are still "
                                "tracked across the analysed frames"))
    alpha = float(c2.slider("Smoothing (weight of the newest frame)", 0.1, 1.0, file_video_config().ema_alpha,
                            0.05, key=f"{key}_alpha",
                            help="each face's probabilities are a moving average over its track, as on the "
                                 "live webcam; 1 = no smoothing"))
    annotated = c3.toggle("Make an annotated video", key=f"{key}_annotated",
                          help="the analysed frames with each face's box and label, to play here and download")
    if upload is None:
        st.info("Upload a video with faces: each face is tracked through it and its emotions drawn over time, "
                "with a CSV of every face in every analysed frame. The command line does the same for video "
                "files and folders: `python -m emotion predict clip.mp4 --out rows.csv`.")
        return
    data = upload.getvalue()
    signature = (digest(data), run_key(predictor), every, alpha, annotated)
    held = st.session_state.get(f"{key}_result")
    if held is None or held[0] != signature:
        held = (signature, analyse_upload(predictor, upload.name, data, every, alpha, annotated))
        st.session_state[f"{key}_result"] = held
    result = held[1]
    if result["error"]:
        st.error(f"**{upload.name}** could not be read as a video ({result['error']}). Upload an MP4, WebM, "
                 "AVI, MOV or MKV file.")
        return
    show_video_result(result, list(predictor.labels), every, key)
