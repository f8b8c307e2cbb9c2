"""Live webcam for the Predict page: streamlit-webrtc frames through ``emotion.video.VideoPredictor``.

Each browser session gets its own :class:`LiveAnnotator` (face tracks, the
detector every k frames, per-face moving averages) over the shared, read-only
predictor; frames come back with the smoothed labels drawn on them.

Browsers give a page the camera only over HTTPS or on localhost.  WebRTC
needs a TURN server to relay the video when the server sits behind NAT (a
Hugging Face Space, most clouds): :func:`rtc_configuration` reads it from the
environment (see the README); a server bound to a loopback address (the browser
is on the same machine) uses no STUN/TURN server at all, so it works offline;
else streamlit-webrtc picks its own servers.

While a stream plays, a fragment refreshes a status line every second (faces,
tracks, frames per second, server time per frame) from the annotator's shared
state: users see it, and the browser tests read it.
"""

from __future__ import annotations

import collections
import ipaddress
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
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
LOCAL_ONLY: dict[str, Any] = {"iceServers": []}  # host candidates only: same machine or LAN, no internet


def is_loopback(address: Optional[str]) -> bool:
    """Whether Streamlit's ``server.address`` only accepts connections from this machine."""
    host = (address or "").strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def rtc_configuration(env: Optional[Mapping[str, str]] = None,
                      server_address: Optional[str] = None) -> Optional[dict[str, Any]]:
    """The WebRTC configuration from the environment, or None to let streamlit-webrtc choose.

    ``EMOTION_ICE_SERVERS``: a JSON list such as
    ``[{"urls": ["turn:turn.example.org:3478"], "username": "u", "credential": "p"}]``;
    else ``EMOTION_TURN_URL`` with ``EMOTION_TURN_USERNAME`` and ``EMOTION_TURN_CREDENTIAL``
    (a public STUN server is added).  ``EMOTION_ICE_SERVERS=[]`` means no STUN/TURN server
    at all: localhost and a LAN work with no internet.  With neither variable and a
    ``server_address`` on loopback (``streamlit run app.py --server.address 127.0.0.1``)
    the browser runs on this machine, so no server is needed either (:data:`LOCAL_ONLY`):
    nothing waits on an unreachable STUN server or fetches TURN credentials offline.
    Else None: streamlit-webrtc then uses the TURN credentials it knows (``HF_TOKEN`` on
    Hugging Face, ``TWILIO_ACCOUNT_SID`` / ``TWILIO_AUTH_TOKEN``, ``CLOUDFLARE_TURN_KEY_ID`` /
    ``CLOUDFLARE_TURN_KEY_API_TOKEN``) or only a public STUN server.
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
    if is_loopback(server_address):
        return {"iceServers": list(LOCAL_ONLY["iceServers"])}
    return None


NO_FRAME_WARN_S = 5.0  # a stream this old with no frame (or none for this long): say so on the page
RATE_WINDOW_S = 3.0  # frames per second and time per frame are over the last few seconds
STATUS_REFRESH_S = 1.0  # the status line under the video, while it plays


@dataclass(frozen=True)
class TrackStatus:
    """One tracked face as the status shows it: its track id, smoothed label and box (frame pixels)."""

    id: int
    label: str
    confidence: float
    box: tuple[int, int, int, int]


@dataclass(frozen=True)
class LiveStatus:
    """A snapshot of one session's stream, safe to read from the page while frames arrive."""

    frames: int  # frames of the current stream that came back annotated
    fps: float  # frames per second the server sent back, over the last few seconds
    ms_per_frame: float  # median server time per frame: to RGB, detect or track, classify, draw, back
    faces: tuple[TrackStatus, ...]
    size: Optional[tuple[int, int]]  # (width, height) of the last frame: WebRTC lowers it under load
    detections: int  # how often the detector ran (all streams)
    idle_s: Optional[float]  # seconds since the last frame; None before the first
    streaming_s: Optional[float]  # seconds since the page saw the stream start; None if it never did
    error: Optional[str]

    @property
    def stalled_s(self) -> Optional[float]:
        """Seconds without a frame when that is long enough to tell the user (:data:`NO_FRAME_WARN_S`)."""
        waited = self.idle_s if self.frames else self.streaming_s
        return waited if waited is not None and waited > NO_FRAME_WARN_S else None

    def text(self) -> str:
        """The status line, e.g. ``Live · 1 face: #1 happy 93% · 640×480 at 7.9 fps · 95 ms a frame …``."""
        if self.frames == 0:
            return "Live · waiting for the first video frame…"
        if self.faces:
            tags = ", ".join(f"#{f.id} {f.label} {f.confidence:.0%}" for f in self.faces)
            seen = f"{len(self.faces)} face{'s' if len(self.faces) != 1 else ''}: {tags}"
        else:
            seen = "no face in view"
        size = f"{self.size[0]}×{self.size[1]} at " if self.size else ""
        return (f"Live · {seen} · {size}{self.fps:.1f} fps · {self.ms_per_frame:.0f} ms a frame on the "
                f"server · {self.frames} frames, detector ran {self.detections} times")


class LiveAnnotator:
    """Frame in, frame out: one session's face tracks and smoothed labels, drawn on the frame.

    Called from streamlit-webrtc's worker thread; a lock keeps frames in order and
    lets the page read :meth:`status` meanwhile.  The page calls
    :meth:`start_stream` when the video starts playing (again): new tracks, new
    rates.  A failing frame is passed through unchanged and the error kept in
    ``error``.
    """

    def __init__(self, predictor: Predictor, config: Optional[VideoConfig] = None) -> None:
        self.video = VideoPredictor(predictor, config)
        self.lock = threading.Lock()
        self.last: Optional[ImagePrediction] = None
        self.frames = 0
        self.error: Optional[str] = None
        self.stream_frames = 0
        self._recent: collections.deque[tuple[float, float]] = collections.deque()  # (done at, seconds)
        self._last_frame_at: Optional[float] = None
        self._started_at: Optional[float] = None

    def process(self, rgb: np.ndarray) -> np.ndarray:
        """An HxWx3 uint8 RGB frame with each tracked face's box and smoothed label drawn."""
        with self.lock:
            result = self.video.update(rgb)
            self.last, self.frames = result, self.frames + 1
        return np.asarray(annotate(Image.fromarray(rgb), result))

    def start_stream(self) -> None:
        """A new stream (START pressed): forget the tracks, the rates and the previous error."""
        with self.lock:
            self.video.reset()
            self.last, self.stream_frames, self.error = None, 0, None
            self._recent.clear()
            self._last_frame_at, self._started_at = None, time.monotonic()

    def _done(self, started: float) -> None:
        now = time.monotonic()
        with self.lock:
            self.stream_frames += 1
            self._last_frame_at = now
            self._recent.append((now, now - started))
            while self._recent and now - self._recent[0][0] > RATE_WINDOW_S:
                self._recent.popleft()

    def __call__(self, frame: "av.VideoFrame") -> "av.VideoFrame":
        started = time.monotonic()
        rgb = frame.to_ndarray(format="rgb24")
        try:
            out = self.process(rgb)
        except Exception as exc:  # noqa: BLE001 - keep the stream alive; the page shows the error
            if self.error is None:
                logger.exception("live prediction failed")
            self.error = f"{type(exc).__name__}: {exc}"
            out = rgb
        result = av.VideoFrame.from_ndarray(out, format="rgb24")  # streamlit-webrtc copies the timestamps
        self._done(started)
        return result

    def status(self) -> LiveStatus:
        """The current stream's faces, rate and server time per frame (see :class:`LiveStatus`)."""
        now = time.monotonic()
        with self.lock:
            recent = list(self._recent)
            last, frames, error = self.last, self.stream_frames, self.error
            idle = None if self._last_frame_at is None else now - self._last_frame_at
            since = None if self._started_at is None else now - self._started_at
            detections = self.video.detections
        if len(recent) >= 2 and recent[-1][0] > recent[0][0]:
            fps = (len(recent) - 1) / (recent[-1][0] - recent[0][0])
        else:
            fps = 0.0
        ms = float(np.median([d for _, d in recent])) * 1000 if recent else 0.0
        faces = tuple(TrackStatus(int(f.track_id or 0), f.label, float(f.confidence),
                                  tuple(round(float(v)) for v in f.box))  # type: ignore[arg-type]
                      for f in (last.faces if last is not None else ()))
        size = (int(last.size[0]), int(last.size[1])) if last is not None else None
        return LiveStatus(frames, fps, ms, faces, size, detections, idle, since, error)


def live_panel(predictor: Predictor, key: str = "predict_live") -> None:
    """The live-webcam section: smoothing settings and the WebRTC streamer (or why it is unavailable)."""
    if WEBRTC_ERROR is not None:
        st.info("Live video needs the `streamlit-webrtc` package (`pip install streamlit-webrtc`), which "
                f"could not be imported here ({WEBRTC_ERROR}). Uploads and webcam snapshots work without it.")
        return
    try:
        rtc = rtc_configuration(server_address=st.get_option("server.address"))
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
    playing = bool(ctx.state.playing)
    was_playing = f"{key}_was_playing"
    if playing and not st.session_state.get(was_playing):
        annotator.start_stream()
    st.session_state[was_playing] = playing

    # refreshed every second while the video plays (a fragment: the streamer is not redrawn)
    @st.fragment(run_every=STATUS_REFRESH_S if playing else None)
    def live_status() -> None:
        show_live_status(annotator.status(), playing)

    live_status()


def show_live_status(status: LiveStatus, playing: bool) -> None:
    """The status line under the video and, while faces are in view, the table of their tracks."""
    if status.error:
        st.error(f"Live prediction failed: {status.error}")
    if not playing:
        if status.frames:
            st.caption(f"Live stopped · {status.frames} frames came back annotated.")
        return
    st.caption(status.text())
    if status.stalled_s is not None:
        st.warning(f"No video frame has come from the camera for {status.stalled_s:.0f} s. Is it covered, "
                   "switched off or in use by another app? Press **STOP**, check it, then **START** again.")
    if status.faces:
        st.table([{"track": f"#{f.id}", "emotion": f.label, "confidence": f"{f.confidence:.0%}",
                   "box (left, top, right, bottom)": ", ".join(str(v) for v in f.box)} for f in status.faces])
