"""Face detection (BlazeFace or MTCNN), face crops and face cropping as a cached dataset step.

Emotion models work best on a face that fills the frame, but the photos people
upload or stream from a webcam show a whole scene.  This module finds every
face (box, five landmarks, score), cuts a square, optionally eye-levelled crop
around one, and turns a whole dataset into face crops once, cached by file
content so re-runs and overlapping datasets are free.

Two detectors sit behind one interface (:class:`FaceDetector`, chosen by
``DetectorConfig.model``, see :data:`DETECTORS`): facenet-pytorch's MTCNN (the
default) and MediaPipe's BlazeFace run by LiteRT (:mod:`emotion.blazeface`;
several times faster on a CPU, but it misses many faces that MTCNN finds: small
ones, and faces cut out of their surroundings).  ``benchmarks/face_detection.py``
measured both (docs/BENCHMARK.md, "Face detectors"): MTCNN stays the default
for photos and the webcam because no BlazeFace variant found as many faces of
40 px and larger, and the dataset crop step keeps MTCNN in any case so crops
match the ones existing runs were trained on.

Datasets such as FER2013 are already tight 48x48 face crops, on which MTCNN
often finds nothing (it needs some context around a face).  Such misses are
never dropped silently: :class:`MissPolicy` says what happens and the
:class:`CropReport` counts it.

Speed matters for the webcam path, so detection downsizes large frames to
``max_side`` before running the detector (boxes are mapped back to original
pixels), reuses one lazily built model per config (see :func:`get_detector`)
and runs MTCNN under ``torch.inference_mode``.  torch, facenet-pytorch and
LiteRT are imported only when a detector is first used, so configs and crops
work without them.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import math
import re
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, Mapping, Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageDraw

from emotion.blazeface import BlazeFace, BlazeFaceUnavailable
from emotion.images import ImageInput, load_image

logger = logging.getLogger(__name__)

# Bump when the crop or cache layout changes so old cached crops are not reused.
CROP_CACHE_VERSION = 1
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
FaceChoice = Literal["largest", "most_confident"]
PadMode = Literal["edge", "black", "shift"]
FACE_CHOICES: tuple[str, ...] = ("largest", "most_confident")
PAD_MODES: tuple[str, ...] = ("edge", "black", "shift")
_DEVICE_RE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")

# Face detectors (DetectorConfig.model).  BlazeFace variants run MediaPipe's models on the CPU via
# LiteRT: "blazeface" the full-range model on the whole frame, "blazeface_tiled" the same model also
# on overlapping tiles (finds smaller faces; a few model runs per frame), "blazeface_short" the
# short-range (selfie) model.  "mtcnn" is facenet-pytorch's MTCNN.
DETECTORS: tuple[str, ...] = ("mtcnn", "blazeface", "blazeface_tiled", "blazeface_short")
# Photos and uploads, and the webcam (emotion.video downscales frames first): the rule is recall on
# faces of 40 px and larger at least MTCNN's, and no BlazeFace variant met it (docs/BENCHMARK.md).
DEFAULT_DETECTOR = "mtcnn"
DATASET_DETECTOR = "mtcnn"  # the cached dataset crop step: crops match those existing runs were trained on
# Each detector's scores mean something else: MTCNN's O-Net is sure of most faces, BlazeFace's 0.5 is
# MediaPipe's own min_detection_confidence.
DEFAULT_MIN_SCORES: dict[str, float] = {"mtcnn": 0.9, "blazeface": 0.5, "blazeface_tiled": 0.5,
                                        "blazeface_short": 0.5}
_BLAZEFACE_MODELS = {"blazeface": "full", "blazeface_tiled": "full", "blazeface_short": "short"}
# blazeface_tiled: tile side as a fraction of the image's longer side (a 640x480 frame: four 384 px tiles),
# so each tile shows faces 1.7x larger to the model than the whole frame does
BLAZEFACE_TILE_FRACTION = 0.6


class FaceDetectionError(RuntimeError):
    """The detector cannot run (missing package, bad device) or failed on an image."""


# --------------------------------------------------------------------------- faces


@dataclass(frozen=True)
class Face:
    """One detected face in original-image pixel coordinates.

    ``box`` is (x1, y1, x2, y2) as the detector gives it; it may reach slightly
    past the image edge (crops pad there).  ``landmarks`` are five points (left
    eye, right eye, nose, mouth left, mouth right; left/right as seen in the
    image; BlazeFace has one mouth point, given for both corners), or empty for
    a face built by hand.
    """

    box: tuple[float, float, float, float]
    landmarks: tuple[tuple[float, float], ...] = ()
    score: float = 1.0

    def __post_init__(self) -> None:
        box = tuple(float(v) for v in self.box)
        if len(box) != 4 or not all(math.isfinite(v) for v in box):
            raise ValueError(f"face box must be 4 finite numbers (x1, y1, x2, y2), got {self.box!r}")
        if box[2] < box[0] or box[3] < box[1]:
            raise ValueError(f"face box {box} has x2 < x1 or y2 < y1; pass (x1, y1, x2, y2)")
        points = tuple((float(p[0]), float(p[1])) for p in self.landmarks)
        if len(points) not in (0, len(LANDMARK_NAMES)):
            raise ValueError(
                f"a face has 0 or {len(LANDMARK_NAMES)} landmarks {LANDMARK_NAMES}, got {len(points)}"
            )
        object.__setattr__(self, "box", box)
        object.__setattr__(self, "landmarks", points)
        object.__setattr__(self, "score", float(self.score))

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> float:
        return self.width * self.height

    @property
    def center(self) -> tuple[float, float]:
        return ((self.box[0] + self.box[2]) / 2.0, (self.box[1] + self.box[3]) / 2.0)

    @property
    def eye_angle(self) -> Optional[float]:
        """Angle in degrees of the line from left to right eye (0 = level, positive = right eye lower)."""
        if not self.landmarks:
            return None
        (lx, ly), (rx, ry) = self.landmarks[0], self.landmarks[1]
        return math.degrees(math.atan2(ry - ly, rx - lx))

    def scaled(self, sx: float, sy: Optional[float] = None) -> "Face":
        """The same face with coordinates multiplied (maps a downscaled detection back)."""
        sy = sx if sy is None else sy
        x1, y1, x2, y2 = self.box
        return Face((x1 * sx, y1 * sy, x2 * sx, y2 * sy),
                    tuple((x * sx, y * sy) for x, y in self.landmarks), self.score)

    def clipped(self, width: int, height: int) -> tuple[int, int, int, int]:
        """Integer box clipped to a ``width`` x ``height`` image (for drawing or slicing)."""
        x1, y1, x2, y2 = self.box
        return (max(0, int(round(x1))), max(0, int(round(y1))),
                min(width, int(round(x2))), min(height, int(round(y2))))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (also what the detection cache stores)."""
        return {
            "box": [round(v, 2) for v in self.box],
            "landmarks": {n: [round(x, 2), round(y, 2)] for n, (x, y) in zip(LANDMARK_NAMES, self.landmarks)},
            "score": round(self.score, 5),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Face":
        marks = data.get("landmarks") or {}
        if isinstance(marks, Mapping):
            points = tuple(tuple(marks[n]) for n in LANDMARK_NAMES if n in marks)
        else:
            points = tuple(tuple(p) for p in marks)
        return cls(tuple(data["box"]), points, float(data.get("score", 1.0)))  # type: ignore[arg-type]


def select_face(faces: Sequence[Face], how: FaceChoice = "largest") -> Optional[Face]:
    """The face to crop when there are several: the largest box or the highest score."""
    if how not in FACE_CHOICES:
        raise ValueError(f"face choice {how!r} is not one of {FACE_CHOICES}")
    if not faces:
        return None
    if how == "largest":
        return max(faces, key=lambda f: (f.area, f.score))
    return max(faces, key=lambda f: (f.score, f.area))


# --------------------------------------------------------------------------- configs


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not valid; choose one of {list(choices)}")


def _from_known_fields(cls: type, data: Mapping[str, Any], what: str) -> Any:
    """Build a config dataclass from a dict, naming unknown keys instead of a TypeError."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {what} setting(s) {unknown}; valid: {sorted(known)}")
    return cls(**dict(data))


@dataclass
class DetectorConfig:
    """Which face detector and its settings; MTCNN's defaults are facenet-pytorch's plus a score filter.

    ``model`` picks the detector (:data:`DETECTORS`).  ``thresholds`` and
    ``factor`` only apply to MTCNN; ``min_score``, ``min_face_size`` and
    ``max_side`` to every detector.  ``min_score=None`` means the chosen
    detector's own default (:data:`DEFAULT_MIN_SCORES`), resolved when the
    config is built, so replace ``model`` together with ``min_score``.
    """

    min_face_size: int = field(default=20, metadata={
        "help": "smallest face side in pixels (of the possibly downscaled image): MTCNN's pyramid starts "
                "there (larger is faster); other detectors drop smaller faces"})
    thresholds: tuple[float, float, float] = field(default=(0.6, 0.7, 0.7), metadata={
        "help": "P-Net, R-Net, O-Net score thresholds of the MTCNN cascade"})
    factor: float = field(default=0.709, metadata={
        "help": "MTCNN image-pyramid scale step; smaller is faster but can miss faces"})
    min_score: Optional[float] = field(default=None, metadata={
        "help": "faces with a final detector score below this are dropped; None: the detector's default "
                "(MTCNN 0.9, BlazeFace 0.5)"})
    max_side: Optional[int] = field(default=640, metadata={
        "help": "downscale images whose longer side exceeds this before detection (speed); "
                "boxes are returned in original pixels; None keeps full resolution"})
    device: str = field(default="cpu", metadata={
        "help": "torch device for MTCNN: cpu, cuda, cuda:N or mps (BlazeFace always runs on the CPU)"})
    model: str = field(default=DEFAULT_DETECTOR, metadata={
        "help": "face detector: mtcnn, blazeface (several times faster on a CPU, fewer faces found), "
                "blazeface_tiled (also looks at tiles: smaller faces, slower) or blazeface_short "
                "(selfie range)"})
    threads: int = field(default=2, metadata={
        "help": "CPU threads for BlazeFace (LiteRT); MTCNN uses torch's thread setting"})

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or self.model.strip().lower() not in DETECTORS:
            raise ValueError(f"model={self.model!r} is not a face detector; choose one of {list(DETECTORS)}")
        self.model = self.model.strip().lower()
        if self.min_score is None:
            self.min_score = DEFAULT_MIN_SCORES[self.model]
        if isinstance(self.threads, bool) or not isinstance(self.threads, (int, np.integer)) \
                or not 1 <= self.threads <= 64:
            raise ValueError(f"threads={self.threads!r} must be an integer from 1 to 64 (default 2)")
        self.threads = int(self.threads)
        if isinstance(self.min_face_size, bool) or not isinstance(self.min_face_size, (int, np.integer)) \
                or self.min_face_size < 5:
            raise ValueError(
                f"min_face_size={self.min_face_size!r} must be an integer >= 5 pixels (default 20)")
        self.min_face_size = int(self.min_face_size)
        try:
            thresholds = tuple(float(t) for t in self.thresholds)
        except (TypeError, ValueError):
            thresholds = ()
        if len(thresholds) != 3 or not all(0.0 < t < 1.0 for t in thresholds):
            raise ValueError(
                f"thresholds={self.thresholds!r} must be three numbers between 0 and 1 "
                "(P-Net, R-Net, O-Net), e.g. (0.6, 0.7, 0.7)")
        self.thresholds = thresholds  # type: ignore[assignment]
        if not isinstance(self.factor, (int, float)) or not 0.1 <= float(self.factor) <= 0.95:
            raise ValueError(f"factor={self.factor!r} must be between 0.1 and 0.95 (default 0.709)")
        self.factor = float(self.factor)
        if not isinstance(self.min_score, (int, float)) or not 0.0 <= float(self.min_score) <= 1.0:
            raise ValueError(f"min_score={self.min_score!r} must be between 0 and 1 (default for "
                             f"{self.model}: {DEFAULT_MIN_SCORES[self.model]})")
        self.min_score = float(self.min_score)
        if self.max_side is not None:
            if isinstance(self.max_side, bool) or not isinstance(self.max_side, (int, np.integer)) \
                    or self.max_side < max(32, self.min_face_size):
                raise ValueError(
                    f"max_side={self.max_side!r} must be None (no downscaling) or an integer >= "
                    f"max(32, min_face_size={self.min_face_size}), e.g. 640")
            self.max_side = int(self.max_side)
        if not isinstance(self.device, str) or not _DEVICE_RE.match(self.device.strip()):
            raise ValueError(f"device={self.device!r} is not a torch device; use 'cpu', 'cuda', "
                             "'cuda:0' or 'mps'")
        self.device = self.device.strip()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["thresholds"] = list(self.thresholds)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DetectorConfig":
        return _from_known_fields(cls, data, "detector")

    @property
    def is_blazeface(self) -> bool:
        return self.model in _BLAZEFACE_MODELS

    def cache_key(self) -> str:
        """Hash of what changes detections (device and threads excluded: they do not change boxes).

        MTCNN configs hash exactly as before detectors could be chosen, so crop
        caches made then are still found.
        """
        d = self.to_dict()
        d.pop("device")
        d.pop("threads")
        if d["model"] == "mtcnn":
            d.pop("model")
        return _hash({"v": CROP_CACHE_VERSION, **d})


class MissPolicy(str, enum.Enum):
    """What to do with an image in which no face is found."""

    WHOLE = "whole"    # keep the whole image (padded square): right for tight crops like FER
    CENTER = "center"  # keep the central square
    SKIP = "skip"      # leave the image out (listed in the report)

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: Union[str, "MissPolicy"]) -> "MissPolicy":
        try:
            return cls(value.lower() if isinstance(value, str) and not isinstance(value, cls) else value)
        except ValueError:
            raise ValueError(
                f"on_miss={value!r} is not valid; choose one of {[m.value for m in cls]} "
                "('whole' suits datasets that are already face crops)") from None


@dataclass
class CropConfig:
    """How images become face crops; :meth:`cache_key` names the cache folder."""

    margin: float = field(default=0.2, metadata={
        "help": "context added on every side of the face, as a fraction of the face's longer side"})
    size: Optional[int] = field(default=224, metadata={
        "help": "side of the square output in pixels; None keeps the crop's own size"})
    align: bool = field(default=False, metadata={
        "help": "rotate about the eye midpoint so the eyes are level before cropping"})
    on_miss: MissPolicy = field(default=MissPolicy.WHOLE, metadata={
        "help": "no face found: 'whole' image, 'center' square, or 'skip' the image"})
    face: FaceChoice = field(default="largest", metadata={
        "help": "which face to crop when several are found: 'largest' or 'most_confident'"})
    pad: PadMode = field(default="edge", metadata={
        "help": "fill for crop parts outside the image: 'edge' (repeat border pixels), 'black', or "
                "'shift' (move the square inside the image where it fits, then repeat border pixels)"})
    detector: DetectorConfig = field(default_factory=lambda: DetectorConfig(model=DATASET_DETECTOR),
                                     metadata={"help": "face detector settings (MTCNN by default: the "
                                                       "crops existing runs were trained on)"})

    def __post_init__(self) -> None:
        if isinstance(self.margin, bool) or not isinstance(self.margin, (int, float)) \
                or not 0.0 <= float(self.margin) <= 2.0:
            raise ValueError(f"margin={self.margin!r} must be between 0 and 2 (fraction of the face "
                             "size added per side; 0.2 is typical)")
        self.margin = float(self.margin)
        _check_size(self.size)
        if not isinstance(self.align, bool):
            raise ValueError(f"align={self.align!r} must be True or False")
        self.on_miss = MissPolicy.parse(self.on_miss)
        _check_choice("face", self.face, FACE_CHOICES)
        _check_choice("pad", self.pad, PAD_MODES)
        if isinstance(self.detector, Mapping):  # a crop config saved before detectors could be chosen: MTCNN
            self.detector = DetectorConfig.from_dict({"model": DATASET_DETECTOR, **self.detector})
        if not isinstance(self.detector, DetectorConfig):
            raise ValueError(f"detector={self.detector!r} must be a DetectorConfig or a dict of its fields")

    def to_dict(self) -> dict[str, Any]:
        return {
            "margin": self.margin, "size": self.size, "align": self.align,
            "on_miss": self.on_miss.value, "face": self.face, "pad": self.pad,
            "detector": self.detector.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CropConfig":
        return _from_known_fields(cls, data, "crop")

    def cache_key(self) -> str:
        """Folder name for this config's crops: readable settings plus a hash of all of them."""
        d = self.to_dict()
        d["detector"] = self.detector.cache_key()
        size = "orig" if self.size is None else str(self.size)
        return f"{size}-m{self.margin:g}-{self.on_miss.value}-{_hash({'v': CROP_CACHE_VERSION, **d})}"

    def describe(self) -> str:
        return (f"margin={self.margin:g}, size={self.size}, align={self.align}, "
                f"on_miss={self.on_miss.value}, face={self.face}, min_score={self.detector.min_score:g}")


def crop_config_for(train_config: dict, input_size: int) -> Optional[CropConfig]:
    """The face-crop settings a run was trained with (None if it was trained on whole images)."""
    if not train_config.get("face_crop"):
        return None
    return CropConfig(margin=train_config.get("face_margin", 0.2), size=max(input_size, 64),
                      on_miss=train_config.get("face_on_miss", "whole"))


def _hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def _check_size(size: Any) -> None:
    if size is not None and (isinstance(size, bool) or not isinstance(size, (int, np.integer))
                             or not 8 <= size <= 4096):
        raise ValueError(f"size={size!r} must be None (keep the crop size) or an integer from 8 to 4096, "
                         "e.g. 224")


# --------------------------------------------------------------------------- detector


class FaceDetector:
    """All faces in an image with the detector ``config.model`` names; build once and reuse.

    Loading the model is the slow part, so it happens on first use and is kept.
    ``detect`` may be called from several threads: calls into the model are
    serialised by a lock (one call already uses the configured threads).
    """

    def __init__(self, config: Optional[DetectorConfig] = None) -> None:
        self.config = config if config is not None else DetectorConfig()
        if not isinstance(self.config, DetectorConfig):
            raise ValueError(f"FaceDetector needs a DetectorConfig, got {type(self.config).__name__}")
        self._model: Any = None
        self._lock = threading.Lock()

    def _build_blazeface(self) -> Any:
        try:
            return BlazeFace(_BLAZEFACE_MODELS[self.config.model], threads=self.config.threads,
                             min_score=self.config.min_score)
        except BlazeFaceUnavailable as exc:
            raise FaceDetectionError(f"detector {self.config.model!r} cannot load: {exc}; or choose "
                                     "detector 'mtcnn'") from None

    def _build_mtcnn(self) -> Any:
        try:
            import torch
            from facenet_pytorch import MTCNN
        except ImportError as exc:
            raise FaceDetectionError(
                f"face detection needs facenet-pytorch ({exc}); install it with "
                "`pip install facenet-pytorch==2.5.3` (listed in requirements.txt)") from None
        cfg = self.config
        device = torch.device(cfg.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise FaceDetectionError(f"device={cfg.device!r} but CUDA is not available; use device='cpu'")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise FaceDetectionError(f"device={cfg.device!r} but MPS is not available; use device='cpu'")
        t0 = time.perf_counter()
        mtcnn = MTCNN(
            min_face_size=cfg.min_face_size, thresholds=list(cfg.thresholds), factor=cfg.factor,
            post_process=False, select_largest=False, keep_all=True, device=device,
        )
        mtcnn.eval()
        if device.type == "cpu":
            # PyTorch's CPU max-pooling is several times faster on channels-last tensors, and MTCNN's
            # three nets are mostly pooling at these sizes: a third less time per frame, same boxes
            # (the nets permute before their dense layers, so results do not depend on the layout).
            for net in (mtcnn.pnet, mtcnn.rnet, mtcnn.onet):
                net.to(memory_format=torch.channels_last)
        logger.debug("MTCNN loaded on %s in %.2fs", device, time.perf_counter() - t0)
        return mtcnn

    @property
    def model(self) -> Any:
        """The underlying detector, built on first use: ``facenet_pytorch.MTCNN`` or
        :class:`emotion.blazeface.BlazeFace`, as ``config.model`` names."""
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = (self._build_blazeface() if self.config.is_blazeface
                                   else self._build_mtcnn())
        return self._model

    def warmup(self) -> "FaceDetector":
        """Load weights and run once so the first real frame is not slow."""
        self.detect(Image.new("RGB", (max(64, self.config.min_face_size * 2),) * 2, (127, 127, 127)))
        return self

    def detect(self, image: ImageInput) -> list[Face]:
        """Faces with score >= ``min_score``, left to right, in original-image pixels.

        Any image :func:`~emotion.images.load_image` reads is accepted (grayscale
        and RGBA are converted).  Raises ``ImageLoadError`` for undecodable input
        and ``FaceDetectionError`` when the detector itself fails.
        """
        img = load_image(image)
        w, h = img.size
        cfg = self.config
        scale = 1.0
        if cfg.max_side is not None and max(w, h) > cfg.max_side:
            scale = cfg.max_side / max(w, h)
            small = img.resize((max(1, round(w * scale)), max(1, round(h * scale))),
                               Image.Resampling.BILINEAR)
        else:
            small = img
        sw, sh = small.size
        if cfg.is_blazeface:
            return self._detect_blazeface(small, w / sw, h / sh)
        if min(sw, sh) < cfg.min_face_size:
            # MTCNN's image pyramid is empty here (and facenet-pytorch would crash).
            logger.debug("image %dx%d smaller than min_face_size=%d: no faces", sw, sh, cfg.min_face_size)
            return []
        mtcnn = self.model
        import torch

        try:
            with self._lock, torch.inference_mode():
                boxes, probs, points = mtcnn.detect(small, landmarks=True)
        except Exception as exc:  # facenet-pytorch raises bare Exceptions on odd inputs
            raise FaceDetectionError(f"MTCNN failed on a {w}x{h} image: {exc}") from exc
        if boxes is None:
            return []
        sx, sy = w / sw, h / sh
        faces = []
        for box, prob, pts in zip(boxes, probs, points):
            if prob is None or float(prob) < cfg.min_score:
                continue
            face = Face(tuple(float(v) for v in box),  # type: ignore[arg-type]
                        tuple((float(x), float(y)) for x, y in pts), float(prob))
            faces.append(face.scaled(sx, sy) if scale != 1.0 else face)
        faces.sort(key=lambda f: (f.center[0], f.center[1]))
        return faces

    def _detect_blazeface(self, small: Image.Image, sx: float, sy: float) -> list[Face]:
        """BlazeFace on the (downscaled) image; faces mapped back by ``sx``, ``sy``.

        BlazeFace's six keypoints become the five of :data:`LANDMARK_NAMES`: the
        eyes and nose tip as they are, and its one mouth-centre point for both
        mouth corners (it has no corners); the ear points are dropped.
        """
        cfg = self.config
        model = self.model
        tile = None
        if cfg.model == "blazeface_tiled" and max(small.size) > model.spec.input_size:
            tile = round(BLAZEFACE_TILE_FRACTION * max(small.size))  # below input size tiles add no detail
        try:
            boxes, scores, points = model.detect(small, tile=tile)
        except Exception as exc:  # LiteRT raises RuntimeError/ValueError from its C++ core
            raise FaceDetectionError(
                f"{cfg.model} failed on a {small.width}x{small.height} image: {exc}") from exc
        faces = []
        for box, score, pts in zip(boxes, scores, points):
            if float(score) < cfg.min_score or max(box[2] - box[0], box[3] - box[1]) < cfg.min_face_size:
                continue
            marks = (pts[0], pts[1], pts[2], pts[3], pts[3])
            face = Face(tuple(float(v) for v in box),  # type: ignore[arg-type]
                        tuple((float(x), float(y)) for x, y in marks), float(score))
            faces.append(face.scaled(sx, sy) if (sx, sy) != (1.0, 1.0) else face)
        faces.sort(key=lambda f: (f.center[0], f.center[1]))
        return faces

    __call__ = detect


_SHARED: dict[str, FaceDetector] = {}
_SHARED_LOCK = threading.Lock()


def get_detector(config: Optional[DetectorConfig] = None) -> FaceDetector:
    """One shared detector per distinct config (the app and webcam path should use this)."""
    config = config if config is not None else DetectorConfig()
    key = json.dumps(config.to_dict(), sort_keys=True)
    with _SHARED_LOCK:
        det = _SHARED.get(key)
        if det is None:
            det = _SHARED[key] = FaceDetector(config)
        return det


# --------------------------------------------------------------------------- crops


def _pad_to_cover(img: Image.Image, left: float, top: float, right: float, bottom: float
                  ) -> tuple[Image.Image, int, int]:
    """Edge-pad ``img`` so the region (left, top, right, bottom) lies inside; returns new offsets."""
    w, h = img.size
    pl = max(0, math.ceil(-left) + 1)
    pt = max(0, math.ceil(-top) + 1)
    pr = max(0, math.ceil(right - w) + 1)
    pb = max(0, math.ceil(bottom - h) + 1)
    if not (pl or pt or pr or pb):
        return img, 0, 0
    arr = np.pad(np.asarray(img), ((pt, pb), (pl, pr), (0, 0)), mode="edge")
    return Image.fromarray(arr), pl, pt


def _square_region(img: Image.Image, cx: float, cy: float, side: int, angle: float, pad: str
                   ) -> Image.Image:
    """The ``side`` x ``side`` square centred on (cx, cy), rotated by ``angle`` degrees."""
    w, h = img.size
    left, top = int(round(cx - side / 2.0)), int(round(cy - side / 2.0))
    if angle == 0.0:
        if left >= w or top >= h or left + side <= 0 or top + side <= 0:
            raise ValueError(f"crop square ({left}, {top}, {left + side}, {top + side}) lies outside "
                             f"the {w}x{h} image; check the face box")
        if pad == "shift":  # no made-up border where the image itself has pixels to show
            left = min(max(left, 0), w - side) if side <= w else left
            top = min(max(top, 0), h - side) if side <= h else top
        if pad in ("edge", "shift"):
            img, ox, oy = _pad_to_cover(img, left, top, left + side, top + side)
            left, top = left + ox, top + oy
        return img.crop((left, top, left + side, top + side))  # PIL fills outside with black
    # Rotated square: map output pixels into the source with one affine transform.
    # Source point of output (u, v) = centre + R(angle) @ (u - side/2, v - side/2).
    cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    half = side / 2.0
    ext = half * (abs(cos) + abs(sin))  # half-width of the rotated square's bounding box
    if pad in ("edge", "shift"):  # a rotated square is not shifted: its corners would leave the image
        img, ox, oy = _pad_to_cover(img, cx - ext, cy - ext, cx + ext, cy + ext)
        cx, cy = cx + ox, cy + oy
    coeffs = (cos, -sin, cx - cos * half + sin * half,
              sin, cos, cy - sin * half - cos * half)
    return img.transform((side, side), Image.Transform.AFFINE, coeffs,
                         resample=Image.Resampling.BICUBIC, fillcolor=(0, 0, 0))


def _resize(img: Image.Image, size: Optional[int]) -> Image.Image:
    if size is None or img.size == (size, size):
        return img
    return img.resize((size, size), Image.Resampling.BICUBIC)  # PIL's resize antialiases when shrinking


def crop_face(
    image: ImageInput,
    face: Face,
    margin: float = 0.2,
    size: Optional[int] = None,
    align: bool = False,
    pad: PadMode = "edge",
) -> Image.Image:
    """Square crop centred on ``face.box``, its longer side plus ``margin`` of it on every side.

    Where the square runs off the image it is padded (``pad='edge'`` repeats
    the border pixels, ``'black'`` fills zeros), so the face stays centred;
    ``'shift'`` first moves the square inside the image where it fits (the
    face then sits off centre, but no made-up pixels enter the crop).
    ``align=True`` rotates about the eye midpoint so the eyes are level (needs
    landmarks).  ``size`` resizes the square to ``size`` x ``size``.
    """
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0.0 <= margin <= 2.0:
        raise ValueError(f"margin={margin!r} must be between 0 and 2 (fraction of the face size per side)")
    _check_size(size)
    _check_choice("pad", pad, PAD_MODES)
    img = load_image(image)
    side = max(1, int(round(max(face.width, face.height) * (1.0 + 2.0 * margin))))
    cx, cy = face.center
    angle = 0.0
    if align:
        if not face.landmarks:
            raise ValueError("align=True needs the face's eye landmarks; this Face has none "
                             "(use a face from FaceDetector.detect or align=False)")
        angle = face.eye_angle or 0.0
        # Rotating the image about the eye midpoint and then cropping around the
        # (rotated) box centre equals sampling a square rotated by `angle` about
        # the original box centre, which needs only one resampling.
    return _resize(_square_region(img, cx, cy, side, angle, pad), size)


def fallback_crop(image: ImageInput, policy: Union[MissPolicy, str], size: Optional[int] = None,
                  pad: PadMode = "edge") -> Optional[Image.Image]:
    """What a miss becomes: the whole image padded square, the centre square, or None (skip)."""
    policy = MissPolicy.parse(policy)
    _check_size(size)
    _check_choice("pad", pad, PAD_MODES)
    if policy is MissPolicy.SKIP:
        return None
    img = load_image(image)
    w, h = img.size
    if policy is MissPolicy.CENTER:
        side = min(w, h)
        out = img.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
    elif w == h:
        out = img
    else:  # whole image, padded (not stretched) to a square so faces keep their shape
        side = max(w, h)
        out = _square_region(img, w / 2.0, h / 2.0, side, 0.0, pad)
    return _resize(out, size)


@dataclass
class CropResult:
    """Outcome of cropping one image: the crop (None when skipped) and why."""

    image: Optional[Image.Image]
    faces: list[Face]
    face: Optional[Face]
    action: str  # "face", or the miss policy applied: "whole", "center", "skip"

    @property
    def found(self) -> bool:
        return self.face is not None


def crop_from_faces(img: Image.Image, faces: list[Face], config: CropConfig) -> CropResult:
    """The crop ``config`` asks for, given the faces already detected in ``img`` (its miss policy if none)."""
    face = select_face(faces, config.face)
    if face is not None:
        out = crop_face(img, face, config.margin, config.size, config.align, config.pad)
        return CropResult(out, faces, face, "face")
    out = fallback_crop(img, config.on_miss, config.size, config.pad)
    return CropResult(out, faces, None, config.on_miss.value)


def crop_image(image: ImageInput, config: Optional[CropConfig] = None,
               detector: Optional[FaceDetector] = None) -> CropResult:
    """Detect and crop one image exactly as :func:`crop_dataset` does (use it at inference too)."""
    config = config if config is not None else CropConfig()
    img = load_image(image)
    detector = detector if detector is not None else get_detector(config.detector)
    return crop_from_faces(img, detector.detect(img), config)


def draw_faces(image: ImageInput, faces: Sequence[Face], color: tuple[int, int, int] = (0, 255, 0),
               labels: Optional[Sequence[str]] = None) -> Image.Image:
    """A copy of the image with boxes, landmarks and optional labels drawn (for the UI and checks)."""
    img = load_image(image).copy()
    draw = ImageDraw.Draw(img)
    lw = max(2, round(max(img.size) / 300))
    for i, f in enumerate(faces):
        draw.rectangle(f.box, outline=color, width=lw)
        r = lw + 1
        for (x, y), c in zip(f.landmarks, [(255, 255, 0), (255, 255, 0), (255, 0, 255), (0, 255, 255),
                                           (0, 255, 255)]):
            draw.ellipse((x - r, y - r, x + r, y + r), fill=c)
        text = labels[i] if labels is not None and i < len(labels) else f"{f.score:.2f}"
        draw.text((f.box[0] + lw, max(0.0, f.box[1] - 12 - lw)), text, fill=color)
    return img
