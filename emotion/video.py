"""Emotions in a stream of frames (the webcam): tracked faces, the detector every k frames, smoothing.

:class:`VideoPredictor` wraps a shared :class:`~emotion.inference.Predictor`:
between detections it reuses the tracked boxes, re-detecting early when a face
crop changes; each face's probabilities are an exponential moving average over
its track, so labels do not flicker.  A stream whose resolution changes (WebRTC
scales a camera's video down and up with bandwidth and CPU load) keeps its
tracks: their boxes are rescaled to the new frame size.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision import ops

from emotion.faces import (
    Face,
    get_detector,
)
from emotion.images import ImageInput, load_image
from emotion.inference import FacePrediction, ImagePrediction, Predictor, class_probs

logger = logging.getLogger(__name__)

VIDEO_MAX_SIDE = 320  # webcam frames are detected at this size (about 33 ms on 2 cores for 640x480)


@dataclass
class VideoConfig:
    """Webcam settings: how often to detect, how to track, how much to smooth."""

    redetect_every: int = field(default=5, metadata={
        "help": "run the detector on every k-th frame; frames in between reuse the tracked boxes"})
    ema_alpha: float = field(default=0.4, metadata={
        "help": "weight of the newest frame in each face's moving average (1 = no smoothing)"})
    change_threshold: Optional[float] = field(default=0.12, metadata={
        "help": "re-detect early when a tracked face crop changed by more than this (mean absolute "
                "difference of 16x16 grey thumbnails, 0..1); None: only every k frames"})
    match_iou: float = field(default=0.3, metadata={
        "help": "a detection continues a track when their boxes overlap at least this much (IoU)"})
    match_distance: float = field(default=0.75, metadata={
        "help": "a detection that overlaps no track continues the nearest one left whose centre lies "
                "within this many face sizes of it (a fast move, or frames dropped by a stalled stream); "
                "0: IoU only"})
    max_side: Optional[int] = field(default=VIDEO_MAX_SIDE, metadata={
        "help": "downscale frames to this longer side for detection (speed); None: the predictor's"})

    def __post_init__(self) -> None:
        if isinstance(self.redetect_every, bool) or int(self.redetect_every) < 1:
            raise ValueError(f"redetect_every={self.redetect_every!r} must be an integer >= 1")
        self.redetect_every = int(self.redetect_every)
        if not 0.0 < float(self.ema_alpha) <= 1.0:
            raise ValueError(f"ema_alpha={self.ema_alpha!r} must be in (0, 1]; 1 turns smoothing off")
        if self.change_threshold is not None and not 0.0 < float(self.change_threshold) <= 1.0:
            raise ValueError(f"change_threshold={self.change_threshold!r} must be None or in (0, 1]")
        if not 0.0 < float(self.match_iou) <= 1.0:
            raise ValueError(f"match_iou={self.match_iou!r} must be in (0, 1]")
        if not 0.0 <= float(self.match_distance) < float("inf"):
            raise ValueError(f"match_distance={self.match_distance!r} must be a finite number >= 0 "
                             "(0: IoU only)")


def ema(previous: Optional[np.ndarray], current: np.ndarray, alpha: float) -> np.ndarray:
    """Exponential moving average: ``alpha * current + (1 - alpha) * previous`` (first frame: current)."""
    current = np.asarray(current, dtype=np.float64)
    return current.copy() if previous is None else alpha * current + (1.0 - alpha) * previous


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(left, top, right, bottom)`` boxes."""
    return float(iou_matrix([a], [b])[0, 0])


def iou_matrix(boxes_a: Sequence[Sequence[float]], boxes_b: Sequence[Sequence[float]]) -> np.ndarray:
    """Pairwise IoU, ``(len(a), len(b))``, of ``(left, top, right, bottom)`` boxes (torchvision's ``box_iou``)."""
    if not len(boxes_a) or not len(boxes_b):
        return np.zeros((len(boxes_a), len(boxes_b)))
    ious = ops.box_iou(torch.tensor(boxes_a, dtype=torch.float64).reshape(-1, 4),
                       torch.tensor(boxes_b, dtype=torch.float64).reshape(-1, 4))
    return ious.nan_to_num(0.0).numpy()  # an empty box against an empty box: 0, not NaN


def scale_face(face: Face, sx: float, sy: float) -> Face:
    """``face`` in the same image resized by ``sx`` horizontally and ``sy`` vertically."""
    x1, y1, x2, y2 = face.box
    return Face((x1 * sx, y1 * sy, x2 * sx, y2 * sy), tuple((x * sx, y * sy) for x, y in face.landmarks),
                face.score)


def _centre_distance(track_face: Face, face: Face) -> float:
    """How far apart two boxes' centres are, in sizes of the tracked face (its longer side); infinite when
    the sizes differ by more than a factor of 2 (then it is not the same face seen again)."""
    side = max(track_face.box[2] - track_face.box[0], track_face.box[3] - track_face.box[1])
    other = max(face.box[2] - face.box[0], face.box[3] - face.box[1])
    if side <= 0 or other <= 0 or not 0.5 <= other / side <= 2.0:
        return float("inf")
    (ax, ay), (bx, by) = track_face.center, face.center
    return float(np.hypot(ax - bx, ay - by)) / side


def _thumbnail(img: Image.Image, face: Face) -> np.ndarray:
    """A 16x16 grey view of a face box: cheap evidence of whether the face moved or changed."""
    w, h = img.size
    box = face.clipped(w, h)
    if box[2] - box[0] < 2 or box[3] - box[1] < 2:
        return np.zeros((16, 16), dtype=np.float32)
    small = img.crop(box).convert("L").resize((16, 16), Image.Resampling.BILINEAR)
    return np.asarray(small, dtype=np.float32) / 255.0


@dataclass
class Track:
    """A face followed across frames."""

    id: int
    face: Face
    source: str
    reference: np.ndarray  # thumbnail when last detected
    smoothed: Optional[np.ndarray] = None
    frames: int = 0


class VideoPredictor:
    """Per-frame predictions for a stream: tracked faces, detector every k frames, EMA smoothing.

    Not thread-safe (a stream is sequential); give each webcam session its own
    instance over a shared :class:`Predictor`.
    """

    def __init__(self, predictor: Predictor, config: Optional[VideoConfig] = None) -> None:
        self.predictor = predictor
        self.config = config if config is not None else VideoConfig()
        det_cfg = predictor.config.detector
        if self.config.max_side is not None:
            side = max(self.config.max_side, det_cfg.min_face_size, 32)
            det_cfg = dataclasses.replace(det_cfg, max_side=side)
        self.detector = get_detector(det_cfg)
        self.tracks: list[Track] = []
        self.frame_index = -1
        self._last_detection = -(10 ** 9)
        self._next_id = 1
        self.detections = 0  # how often the detector ran (for the UI and tests)
        self._size: Optional[tuple[int, int]] = None  # (width, height) of the previous frame

    def reset(self) -> None:
        """Forget all tracks (new stream or camera switched)."""
        self.tracks = []
        self.frame_index = -1
        self._last_detection = -(10 ** 9)
        self._size = None

    def _follow_resize(self, size: tuple[int, int]) -> bool:
        """Rescale the tracks when the frame size changed (True then: detect again on this frame)."""
        previous, self._size = self._size, size
        if previous is None or previous == size or not self.tracks:
            return False
        sx, sy = size[0] / previous[0], size[1] / previous[1]
        logger.debug("frame %d: %dx%d -> %dx%d, %d track(s) rescaled", self.frame_index, *previous, *size,
                     len(self.tracks))
        for track in self.tracks:
            track.face = scale_face(track.face, sx, sy)
        return True

    def _needs_detection(self, img: Image.Image) -> tuple[bool, dict[int, np.ndarray]]:
        if not self.tracks or self.frame_index - self._last_detection >= self.config.redetect_every:
            return True, {}
        thumbs = {t.id: _thumbnail(img, t.face) for t in self.tracks}
        if self.config.change_threshold is not None:
            for t in self.tracks:
                if t.source == "face" and float(np.abs(thumbs[t.id] - t.reference).mean()) > \
                        self.config.change_threshold:
                    return True, {}
        return False, thumbs

    def _match(self, img: Image.Image, faces: list[Face], source: str) -> None:
        """Continue tracks with the detections that overlap them, then with near ones; start new ones; drop
        lost ones."""
        ious = iou_matrix([t.face.box for t in self.tracks], [f.box for f in faces])
        pairs = sorted(((float(ious[ti, fi]), ti, fi) for ti in range(len(self.tracks))
                        for fi in range(len(faces))), reverse=True)
        # Then, among what is left, the nearest centres within match_distance face sizes: a face that moved
        # farther than its box between two detections (fast, or the stream dropped frames) keeps its track.
        near = sorted(((_centre_distance(t.face, f), ti, fi) for ti, t in enumerate(self.tracks)
                       for fi, f in enumerate(faces)))
        used_t, used_f, new_tracks = set(), set(), []

        def take(ti: int, fi: int) -> None:
            used_t.add(ti)
            used_f.add(fi)
            track = self.tracks[ti]
            track.face, track.source, track.reference = faces[fi], source, _thumbnail(img, faces[fi])
            new_tracks.append(track)

        for iou, ti, fi in pairs:
            if iou >= self.config.match_iou and ti not in used_t and fi not in used_f:
                take(ti, fi)
        for distance, ti, fi in near:
            if distance <= self.config.match_distance and ti not in used_t and fi not in used_f:
                logger.debug("frame %d: track %d continued by a face %.2f face sizes away", self.frame_index,
                             self.tracks[ti].id, distance)
                take(ti, fi)
        for fi, f in enumerate(faces):
            if fi not in used_f:
                new_tracks.append(Track(self._next_id, f, source, _thumbnail(img, f)))
                self._next_id += 1
        lost = [t.id for i, t in enumerate(self.tracks) if i not in used_t]
        if lost:
            logger.debug("frame %d: tracks %s lost", self.frame_index, lost)
        self.tracks = sorted(new_tracks, key=lambda t: (t.face.center[0], t.face.center[1]))

    def update(self, frame: ImageInput) -> ImagePrediction:
        """Predict one frame; faces carry ``track_id`` and EMA-smoothed probabilities."""
        t0 = time.perf_counter()
        img = load_image(frame)
        self.frame_index += 1
        resized = self._follow_resize(img.size)
        detect = resized or self._needs_detection(img)[0]
        if detect:
            faces = self.predictor.detect(img, detector=self.detector)
            self.detections += 1
            self._last_detection = self.frame_index
            source = "face"
            if not faces and self.predictor.config.whole_image:
                w, h = img.size
                faces, source = [Face((0.0, 0.0, float(w), float(h)), (), 0.0)], "whole"
            self._match(img, faces, source)
        t1 = time.perf_counter()
        crops = [self.predictor.crop(img, t.face if t.source == "face" else None) for t in self.tracks]
        probs = self.predictor.classify(crops)
        labels = self.predictor.labels
        out = []
        for track, p in zip(self.tracks, probs):
            track.smoothed = ema(track.smoothed, p, self.config.ema_alpha)
            track.frames += 1
            out.append(FacePrediction(track.face, class_probs(labels, track.smoothed), track.source,
                                      track.id, class_probs(labels, p)))
        t2 = time.perf_counter()
        return ImagePrediction(out, img.size, labels, detected=detect,
                               timings_ms={"detect": (t1 - t0) * 1000, "classify": (t2 - t1) * 1000,
                                           "total": (t2 - t0) * 1000})
