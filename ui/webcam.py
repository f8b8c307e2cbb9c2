"""Live webcam for the Predict page: streamlit-webrtc frames through ``emotion.video.VideoPredictor``.

Each browser session gets its own :class:`LiveAnnotator` (face tracks, the
detector every k frames, per-face moving averages) over the shared, read-only
predictor; frames come back with the smoothed labels drawn on them.

Browsers give a page the camera only over HTTPS or on localhost.  WebRTC
needs a TURN server to relay the video when the server sits behind NAT (a
Hugging Face Space, most clouds): :func:`rtc_configuration` reads it from the
environment (see the README), else streamlit-webrtc picks its own servers.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any, Mapping, Optional

import numpy as np
import streamlit as st
from PIL import Image

from emotion.inference import ImagePrediction, Predictor
from emotion.video import VideoConfig, VideoPredictor
from ui.predict import annotate, run_key

logger = logging.getLogger(__name__)

try:  # optional: the snapshot and upload modes work without it
    import av
    from streamlit_webrtc import WebRtcMode, webrtc_streamer

    WEBRTC_ERROR: Optional[str] = None
except Exception as exc:  # noqa: BLE001 - ImportError, or a broken binary wheel (av, aiortc)
    av = None  # type: ignore[assignment]
    WEBRTC_ERROR = f"{type(exc).__name__}: {exc}"

ICE_SERVERS_ENV = "EMOTION_ICE_SERVERS"  # a JSON list of RTCIceServer objects
TURN_URL_ENV = "EMOTION_TURN_URL"  # turn:host:3478 (comma-separated for several)
TURN_USERNAME_ENV = "EMOTION_TURN_USERNAME"
TURN_CREDENTIAL_ENV = "EMOTION_TURN_CREDENTIAL"
PUBLIC_STUN = "stun:stun.l.google.com:19302"


def rtc_configuration(env: Optional[Mapping[str, str]] = None) -> Optional[dict[str, Any]]:
    """The WebRTC configuration from the environment, or None to let streamlit-webrtc choose.

    ``EMOTION_ICE_SERVERS``: a JSON list such as
    ``[{"urls": ["turn:turn.example.org:3478"], "username": "u", "credential": "p"}]``;
    else ``EMOTION_TURN_URL`` with ``EMOTION_TURN_USERNAME`` and ``EMOTION_TURN_CREDENTIAL``
    (a public STUN server is added).  With neither, None: streamlit-webrtc then uses
    the TURN credentials it knows (``HF_TOKEN`` on Hugging Face, ``TWILIO_ACCOUNT_SID`` /
    ``TWILIO_AUTH_TOKEN``, ``CLOUDFLARE_TURN_KEY_ID`` / ``CLOUDFLARE_TURN_KEY_API_TOKEN``)
    or only a public STUN server, which suffices on localhost and a LAN.
    Raises ValueError naming the variable when one is malformed.
    """
    env = os.environ if env is None else env
    raw = (env.get(ICE_SERVERS_ENV) or "").strip()
    if raw:
        try:
            servers = json.loads(raw)
        except ValueError as exc:
            raise ValueError(f"{ICE_SERVERS_ENV} is not valid JSON ({exc}); expected a list like "
                             '[{"urls": ["turn:host:3478"], "username": "u", "credential": "p"}]') from None
        if isinstance(servers, dict):
            servers = [servers]
        if not isinstance(servers, list) or not all(isinstance(s, dict) and s.get("urls") for s in servers):
            raise ValueError(f"{ICE_SERVERS_ENV} must be a JSON list of objects, each with 'urls'")
        return {"iceServers": servers}
    url = (env.get(TURN_URL_ENV) or "").strip()
    if url:
        user, credential = env.get(TURN_USERNAME_ENV, ""), env.get(TURN_CREDENTIAL_ENV, "")
        if not user or not credential:
            raise ValueError(f"{TURN_URL_ENV} is set but {TURN_USERNAME_ENV} or {TURN_CREDENTIAL_ENV} is "
                             "empty: a TURN server needs both")
        urls = [u.strip() for u in url.split(",") if u.strip()]
        return {"iceServers": [{"urls": [PUBLIC_STUN]},
                               {"urls": urls, "username": user, "credential": credential}]}
    return None


class LiveAnnotator:
    """Frame in, frame out: one session's face tracks and smoothed labels, drawn on the frame.

    Called from streamlit-webrtc's worker thread; a lock keeps frames in order.
    A failing frame is passed through unchanged and the error kept in ``error``.
    """

    def __init__(self, predictor: Predictor, config: Optional[VideoConfig] = None) -> None:
        self.video = VideoPredictor(predictor, config)
        self.lock = threading.Lock()
        self.last: Optional[ImagePrediction] = None
        self.frames = 0
        self.error: Optional[str] = None

    def process(self, rgb: np.ndarray) -> np.ndarray:
        """An HxWx3 uint8 RGB frame with each tracked face's box and smoothed label drawn."""
        with self.lock:
            result = self.video.update(rgb)
            self.last, self.frames = result, self.frames + 1
        return np.asarray(annotate(Image.fromarray(rgb), result))

    def __call__(self, frame: "av.VideoFrame") -> "av.VideoFrame":
        rgb = frame.to_ndarray(format="rgb24")
        try:
            out = self.process(rgb)
        except Exception as exc:  # noqa: BLE001 - keep the stream alive; the page shows the error
            if self.error is None:
                logger.exception("live prediction failed")
            self.error = f"{type(exc).__name__}: {exc}"
            out = rgb
        return av.VideoFrame.from_ndarray(out, format="rgb24")


def live_panel(predictor: Predictor, key: str = "predict_live") -> None:
    """The live-webcam section: smoothing settings and the WebRTC streamer (or why it is unavailable)."""
    if WEBRTC_ERROR is not None:
        st.info("Live video needs the `streamlit-webrtc` package (`pip install streamlit-webrtc`), which "
                f"could not be imported here ({WEBRTC_ERROR}). Uploads and webcam snapshots work without it.")
        return
    try:
        rtc = rtc_configuration()
    except ValueError as exc:
        st.error(f"WebRTC settings: {exc}")
        return
    c1, c2 = st.columns(2)
    alpha = c1.slider("Smoothing (weight of the newest frame)", 0.1, 1.0, 0.4, 0.05, key=f"{key}_alpha",
                      help="each face's probabilities are a moving average; 1 = no smoothing, lower = "
                           "steadier labels that react more slowly")
    every = c2.slider("Detect faces every k frames", 1, 15, 5, key=f"{key}_every",
                      help="frames in between reuse the tracked boxes (much faster); a face that moves a lot "
                           "triggers detection early")
    signature = (run_key(predictor), alpha, every)
    holder = st.session_state.get(f"{key}_annotator")
    if holder is None or holder[0] != signature:
        annotator = LiveAnnotator(predictor, VideoConfig(redetect_every=int(every), ema_alpha=float(alpha)))
        st.session_state[f"{key}_annotator"] = (signature, annotator)
    else:
        annotator = holder[1]
    try:
        ctx = webrtc_streamer(key=key, mode=WebRtcMode.SENDRECV, rtc_configuration=rtc,
                              media_stream_constraints={"video": True, "audio": False},
                              video_frame_callback=annotator, async_processing=True)
    except Exception as exc:  # noqa: BLE001 - it reaches into Streamlit internals; degrade, don't crash
        logger.exception("streamlit-webrtc failed")
        st.warning(f"The live webcam could not start here ({type(exc).__name__}: {exc}). Uploads and webcam "
                   "snapshots still work.")
        return
    st.caption("Press **START** and allow the camera. Browsers give a page the camera only over **https** or "
               "on **localhost**; a remote server behind NAT (e.g. a Hugging Face Space) also needs a TURN "
               "server (see the README, *Webcam*).")
    if annotator.error:
        st.error(f"Live prediction failed: {annotator.error}")
    if ctx.state.playing and annotator.last is not None:
        st.caption(f"{annotator.frames} frames · detector ran {annotator.video.detections} times · "
                   f"last frame {annotator.last.timings_ms.get('total', 0):.0f} ms")
