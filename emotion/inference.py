"""Prediction: images (or webcam frames) in, faces with emotions out.

A :class:`Predictor` wraps a trained run: it finds every face with MTCNN
(:mod:`emotion.faces`), crops each the way the run expects, classifies all
faces of an image in one batched forward pass and returns an
:class:`ImagePrediction` (faces left to right, each with box, landmarks,
per-class probabilities and top label).  Preprocessing comes from the run's
:class:`~emotion.models.ModelConfig`, never restated here.

When no face is found the result says so (``no_face``); classifying the whole
image instead is an explicit choice (``whole_image=True``), right for tight
face crops such as FER2013's on which MTCNN finds nothing.

:class:`VideoPredictor` is the webcam path: it keeps face tracks, runs the
detector only every ``redetect_every`` frames (or when a face crop changed,
or a track was lost), reuses the boxes in between, and smooths each track's
probabilities with an exponential moving average so labels do not flicker.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch import nn

from emotion import paths, runs
from emotion.data.transforms import build_transform
from emotion.faces import (
    DetectorConfig,
    Face,
    FaceDetector,
    PAD_MODES,
    MissPolicy,
    crop_config_for,
    crop_face,
    draw_faces,
    fallback_crop,
    get_detector,
)
from emotion.fileio import read_json_or_none
from emotion.images import ImageInput, load_image
from emotion.models import ModelConfig, ModelError
from emotion.models.registry import logits_of
from emotion.onnx_backend import (
    BACKENDS,
    ONNX_BACKENDS,
    ExportError,
    int8_classifier,
    onnx_classifier,
)

logger = logging.getLogger(__name__)

DEFAULT_MARGIN = 0.2
_REPO_ROOT = Path(__file__).resolve().parents[1]
RunLike = Union[str, Path, runs.LoadedRun, None]


# --------------------------------------------------------------------------- which run


@dataclass(frozen=True)
class RunChoice:
    """The run a predictor uses and why (shown to users: they should know which model answered)."""

    path: Path
    reason: str  # "given", "default", or "best validation accuracy ..."

    def to_dict(self) -> dict[str, str]:
        return {"run": str(self.path), "run_reason": self.reason}


def _val_accuracy(metrics: Any) -> Optional[float]:
    """Validation accuracy as training records it in ``metrics.json`` (None when absent)."""
    try:
        value = float(metrics["val"]["accuracy"])
    except (KeyError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def best_run(runs_dir: Union[str, Path, None] = None) -> Optional[tuple[Path, float]]:
    """The completed run with the highest validation accuracy under ``runs_dir`` (ties: the newest).

    ``runs_dir`` defaults to :func:`emotion.paths.runs_dir` (``checkpoints/runs``).
    """
    scored = []
    for info in runs.list_runs(runs_dir):  # newest first
        acc = _val_accuracy(info["metrics"])
        if acc is not None and info["ready"] and info["state"] == "completed":
            scored.append((acc, Path(info["path"])))
    if not scored:
        return None
    acc, path = max(scored, key=lambda t: t[0])  # max keeps the first (newest) of equal scores
    return path, acc


def resolve_run(run: Union[str, Path, None] = None, runs_dir: Union[str, Path, None] = None,
                default_dir: Union[str, Path, None] = None) -> RunChoice:
    """``run`` if given; else the shipped model (``checkpoints/default``); else the best run.

    ``run`` may also name a shipped model (``default``, ``fer7``) when no folder of
    that name exists.  Relative defaults are looked up in the working directory,
    then in the repository this package lives in (so the CLI works from anywhere).
    """
    bases = [Path.cwd()] + ([_REPO_ROOT] if _REPO_ROOT != Path.cwd() else [])
    if run is not None:
        path = Path(run).expanduser()
        if path.is_dir():
            return RunChoice(path, "given")
        shipped = paths.shipped_model_dirs()
        if str(run) in shipped:
            for base in bases:
                if runs.is_complete(base / shipped[str(run)]):
                    return RunChoice(base / shipped[str(run)], "given")
        known = ", ".join(shipped)
        raise runs.RunError(f"run folder {path} does not exist (shipped models can be named: {known})")
    for base in bases:
        default = base / (default_dir if default_dir is not None else paths.default_model_dir())
        if runs.is_complete(default):
            return RunChoice(default, "default")
    for base in bases:
        found = best_run(base / (runs_dir if runs_dir is not None else paths.runs_dir()))
        if found is not None:
            path, acc = found
            return RunChoice(path, f"best validation accuracy ({acc:.3f}) among the runs in {path.parent}")
    raise runs.RunError(
        f"no model to predict with: {paths.default_model_dir()} does not exist and {paths.runs_dir()} "
        "holds no finished run; train one (python -m emotion train ...) or pass --run RUN_DIR")


# --------------------------------------------------------------------------- results


def class_probs(labels: Sequence[str], probs: np.ndarray) -> dict[str, float]:
    """``{class name: probability}`` in label order (the form every prediction result carries)."""
    return {name: float(p) for name, p in zip(labels, probs)}


@dataclass
class FacePrediction:
    """One classified face: where it is, what the model thinks, and how sure it is."""

    face: Face  # box and landmarks in original-image pixels (the whole image when source == "whole")
    probabilities: dict[str, float]
    source: str = "face"  # "face": detected by MTCNN; "whole": the whole image, no face was found
    track_id: Optional[int] = None  # video mode: stable id of this face across frames
    frame_probabilities: Optional[dict[str, float]] = None  # video mode: this frame's, before smoothing

    @property
    def label(self) -> str:
        return max(self.probabilities, key=self.probabilities.__getitem__)

    @property
    def confidence(self) -> float:
        return self.probabilities[self.label]

    @property
    def box(self) -> tuple[float, float, float, float]:
        return self.face.box

    def to_dict(self) -> dict[str, Any]:
        d = self.face.to_dict()
        if self.source == "whole":
            d["score"] = None  # not a detection
        d.update({"label": self.label, "confidence": round(self.confidence, 5),
                  "probabilities": {k: round(v, 5) for k, v in self.probabilities.items()},
                  "source": self.source})
        if self.track_id is not None:
            d["track_id"] = self.track_id
        if self.frame_probabilities is not None:
            d["frame_probabilities"] = {k: round(v, 5) for k, v in self.frame_probabilities.items()}
        return d


@dataclass
class ImagePrediction:
    """Every face of one image, left to right; ``no_face`` says when the detector found none."""

    faces: list[FacePrediction]
    size: tuple[int, int]  # (width, height) of the image
    labels: list[str]
    detected: bool = True  # the detector ran on this image (video mode skips it on tracked frames)
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def no_face(self) -> bool:
        return not any(f.source == "face" for f in self.faces)

    @property
    def whole_image(self) -> bool:
        return any(f.source == "whole" for f in self.faces)

    @property
    def message(self) -> str:
        if not self.no_face:
            return f"{len(self.faces)} face{'s' if len(self.faces) != 1 else ''}"
        return "no face found; classified the whole image" if self.whole_image else "no face found"

    def to_dict(self) -> dict[str, Any]:
        return {
            "faces": [f.to_dict() for f in self.faces],
            "no_face": self.no_face,
            "whole_image": self.whole_image,
            "message": self.message,
            "image_size": list(self.size),
            "labels": list(self.labels),
            "detected": self.detected,
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
        }


# --------------------------------------------------------------------------- predictor


@dataclass
class PredictorConfig:
    """How faces are found and cropped before classification."""

    detector: DetectorConfig = field(default_factory=DetectorConfig, metadata={
        "help": "MTCNN settings: thresholds, min_face_size, min_score, max_side"})
    margin: Optional[float] = field(default=None, metadata={
        "help": "context around each face as a fraction of its size; None: what the run was trained "
                "with (face crops), else the run's config.json \"inference\": {\"margin\": ...} (how "
                f"tightly its training images were framed), else {DEFAULT_MARGIN}"})
    align: bool = field(default=False, metadata={"help": "level the eyes before cropping"})
    pad: str = field(default="edge", metadata={
        "help": "a face at the image border: pad the square with 'edge' pixels or 'black', or 'shift' it "
                "inside the image where it fits (no made-up pixels; the face then sits off centre)"})
    whole_image: bool = field(default=False, metadata={
        "help": "no face found: classify the whole image (right for tight face crops such as FER)"})
    grayscale: Optional[bool] = field(default=None, metadata={
        "help": "convert crops to grayscale first; None: when the run was trained on grayscale images "
                "(e.g. FER2013), as its config.json records"})
    max_faces: Optional[int] = field(default=None, metadata={
        "help": "classify at most this many faces (the largest); None: all"})
    tta: Optional[bool] = field(default=None, metadata={
        "help": "average each face's probabilities with its mirror image's (one batch: 10.2 instead of "
                "7.8 ms a face for the shipped model on 2 CPU cores); None: when the run's config.json "
                "recommends it"})
    calibrate: bool = field(default=True, metadata={
        "help": "divide the logits by the temperature fitted on the run's validation images "
                "(temperature.json), so a 90% answer is right about 90% of the time; off: raw softmax"})
    device: str = field(default="cpu", metadata={"help": "torch device for the classifier"})
    backend: Optional[str] = field(default=None, metadata={
        "help": "what runs the classifier: 'torch', or 'onnx' (onnxruntime on the CPU, about 3x faster for "
                "the shipped model; exported once per set of weights and cached), or 'onnx-int8' (the same "
                "with 8-bit weights and activations, about 2x faster again, answers differ for 1 to 2 faces "
                "in 100; needs the run's int8_calibration.json); None: what the run's "
                "config.json recommends (\"inference\": {\"backend\": ...}) when onnxruntime is installed "
                "and the device is the CPU, else 'torch'"})
    channels_last: bool = field(default=True, metadata={
        "help": "channels-last memory format for CNNs (faster on CPU)"})

    def __post_init__(self) -> None:
        if isinstance(self.detector, dict):
            self.detector = DetectorConfig.from_dict(self.detector)
        if not isinstance(self.detector, DetectorConfig):
            raise ValueError(f"detector={self.detector!r} must be a DetectorConfig or a dict of its fields")
        if self.margin is not None and (isinstance(self.margin, bool)
                                        or not 0.0 <= float(self.margin) <= 2.0):
            raise ValueError(f"margin={self.margin!r} must be None or between 0 and 2")
        if self.backend is not None and self.backend not in BACKENDS:
            raise ValueError(f"backend={self.backend!r} must be None or one of {', '.join(BACKENDS)}")
        if self.backend in ONNX_BACKENDS and self.device != "cpu":
            raise ValueError(f"backend={self.backend!r} runs on the CPU; use device='cpu' "
                             f"(got {self.device!r}) or backend='torch'")
        if self.pad not in PAD_MODES:
            raise ValueError(f"pad={self.pad!r} must be one of {', '.join(PAD_MODES)}")
        if self.max_faces is not None and (isinstance(self.max_faces, bool) or int(self.max_faces) < 1):
            raise ValueError(f"max_faces={self.max_faces!r} must be None or at least 1")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError):
            raise ValueError(f"device={self.device!r} is not a torch device; use 'cpu', 'cuda' or "
                             "'cuda:0'") from None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["detector"] = self.detector.to_dict()
        return d


def recommended_backend(spec: Any) -> Optional[str]:
    """The backend a run's ``config.json`` recommends (``"inference": {"backend": ...}``), if known here."""
    hints = spec.get("inference") if isinstance(spec, dict) else None
    backend = hints.get("backend") if isinstance(hints, dict) else None
    return backend if backend in BACKENDS else None


def _recommended_backend(run_backend: Optional[str], device: torch.device) -> str:
    """The run's recommended backend where it can run here (onnx: onnxruntime installed, CPU), else torch."""
    if run_backend not in ONNX_BACKENDS:
        return "torch"
    if device.type != "cpu":
        logger.info("the run recommends the onnx backend, which runs on the CPU; using torch on %s", device)
        return "torch"
    if importlib.util.find_spec("onnxruntime") is None:
        logger.warning("the run recommends the onnx backend (about 3x faster on the CPU) but onnxruntime is "
                       "not installed: pip install onnxruntime; using torch (same probabilities)")
        return "torch"
    return run_backend


def _run_margin(spec: dict, run_dir: Path, input_size: int) -> Optional[float]:
    """The face margin a run was trained with (None when it was trained on whole images)."""
    crop = crop_config_for(runs.train_config_of(spec, run_dir), input_size)
    return None if crop is None else crop.margin


class Predictor:
    """Faces and emotions for any image, with a shared model and a shared detector.

    Thread-safe: the detector serialises its own calls and the classifier runs
    in eval mode under ``torch.inference_mode``, so one predictor can serve
    many app sessions.  The module is put in eval mode on ``device`` and, for
    CNNs, in channels-last memory format (same outputs, faster on CPU).
    """

    def __init__(self, module: nn.Module, model_config: ModelConfig, labels: Sequence[str],
                 config: Optional[PredictorConfig] = None, run: Optional[RunChoice] = None,
                 run_margin: Optional[float] = None, run_grayscale: bool = False,
                 run_tta: bool = False, run_temperature: Optional[float] = None,
                 run_backend: Optional[str] = None) -> None:
        self.config = config if config is not None else PredictorConfig()
        if not isinstance(self.config, PredictorConfig):
            raise ValueError(f"config must be a PredictorConfig, got {type(self.config).__name__}")
        self.model_config = model_config
        self.labels = list(labels)
        self.run = run
        self.margin = (self.config.margin if self.config.margin is not None
                       else run_margin if run_margin is not None else DEFAULT_MARGIN)
        # a model that only ever saw grey faces does worse on colour ones: follow its training data
        self.grayscale = self.config.grayscale if self.config.grayscale is not None else run_grayscale
        self.tta = self.config.tta if self.config.tta is not None else run_tta
        self.temperature = run_temperature if (self.config.calibrate and run_temperature) else None
        self.device = torch.device(self.config.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ModelError(f"device={self.config.device!r} but CUDA is not available; use device='cpu'")
        self.module = module.to(self.device).eval()
        self.backend = self.config.backend or _recommended_backend(run_backend, self.device)
        # the module stays for explanations (gradients); the ONNX graph only answers classify()
        self._classifier: Any = self.module
        if self.backend in ONNX_BACKENDS:
            try:
                self._classifier = (self._int8_classifier() if self.backend == "onnx-int8"
                                    else onnx_classifier(self.module, model_config))
            except ExportError as exc:
                if self.config.backend == self.backend:  # asked for by name: say why it cannot be
                    raise
                # only recommended by the run: the same probabilities, just slower
                logger.warning("running the classifier with torch: the run recommends %s, but %s",
                               self.backend, exc)
                self.backend = "torch"
        self._channels_last = (self.config.channels_last and model_config.family == "cnn"
                               and self.backend == "torch")
        if self._channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        self._transform = build_transform(model_config.preprocess)
        self._detector: Optional[FaceDetector] = None

    def _int8_classifier(self) -> Any:
        """The 8-bit onnxruntime classifier, from the activation ranges stored in the run folder."""
        if self.run is None:
            raise ExportError("backend 'onnx-int8' needs a run folder with int8_calibration.json; load the "
                              "predictor with Predictor.from_run")
        path = Path(self.run.path) / runs.INT8_CALIBRATION_FILE
        calibration = read_json_or_none(path)
        if calibration is None:
            raise ExportError(f"{path} is missing or unreadable: measure the 8-bit ranges with "
                              f"python -m emotion quantize --run {self.run.path} --data DATA (its training "
                              "data), or use --backend onnx")
        return int8_classifier(self.module, self.model_config, calibration)

    @classmethod
    def from_run(cls, run: RunLike = None, config: Optional[PredictorConfig] = None) -> "Predictor":
        """Load ``run`` (a folder or a :class:`~emotion.runs.LoadedRun`; None: default/best run)."""
        if isinstance(run, runs.LoadedRun):
            loaded, choice = run, RunChoice(run.path, "given")
        else:
            choice = resolve_run(run)
            loaded = runs.load_run(choice.path)
        if choice.reason != "given":
            logger.info("using run %s (%s)", choice.path, choice.reason)
        inference = loaded.spec.get("inference") if isinstance(loaded.spec.get("inference"), dict) else {}
        margin = _run_margin(loaded.spec, loaded.path, loaded.config.input_size)
        hinted = inference.get("margin")  # how tight the training images were framed (e.g. FER2013's crops)
        if margin is None and isinstance(hinted, (int, float)) and not isinstance(hinted, bool):
            margin = float(hinted)
        grayscale = runs.trained_on_grayscale(loaded.spec, loaded.path)
        tta = bool(inference.get("tta"))
        fitted = runs.load_temperature(loaded.path)  # a damaged temperature.json is named, not ignored
        temperature = float(fitted["temperature"]) if fitted else None
        backend = recommended_backend(loaded.spec)
        return cls(loaded.module, loaded.config, loaded.labels, config, choice, margin, grayscale, tta,
                   temperature, backend)

    @property
    def input_size(self) -> int:
        return self.model_config.input_size

    @property
    def detector(self) -> FaceDetector:
        if self._detector is None:
            self._detector = get_detector(self.config.detector)
        return self._detector

    def warmup(self) -> "Predictor":
        """Load the detector and run the classifier once, so the first real image is not slow."""
        self.detector.warmup()
        self.classify([Image.new("RGB", (self.input_size,) * 2, (127, 127, 127))])
        return self

    # ---- steps

    def detect(self, image: ImageInput, detector: Optional[FaceDetector] = None) -> list[Face]:
        """Faces left to right (at most ``max_faces``, the largest kept)."""
        faces = (detector or self.detector).detect(image)
        if self.config.max_faces is not None and len(faces) > self.config.max_faces:
            keep = sorted(faces, key=lambda f: f.area, reverse=True)[: self.config.max_faces]
            faces = [f for f in faces if f in keep]
        return faces

    def crop(self, image: ImageInput, face: Optional[Face]) -> Image.Image:
        """The model's view of one face (None: the whole image, padded square) at its input size."""
        img = load_image(image)
        if face is None:
            out = fallback_crop(img, MissPolicy.WHOLE, size=self.input_size)
        else:
            out = crop_face(img, face, margin=self.margin, size=self.input_size, align=self.config.align,
                            pad=self.config.pad)
        if out is None:  # fallback_crop gives None only for MissPolicy.SKIP
            raise ValueError("no crop for this image")
        return out.convert("L").convert("RGB") if self.grayscale else out

    def to_tensor(self, crops: Sequence[Image.Image]) -> torch.Tensor:
        """A normalised batch, preprocessed exactly as the run's config says."""
        x = torch.stack([self._transform(np.asarray(c.convert("RGB"), dtype=np.uint8)) for c in crops])
        x = x.to(self.device)
        return x.contiguous(memory_format=torch.channels_last) if self._channels_last else x

    @torch.inference_mode()
    def classify(self, crops: Sequence[Image.Image]) -> np.ndarray:
        """``(n, classes)`` probabilities for face crops, in one forward pass."""
        if not crops:
            return np.zeros((0, len(self.labels)))
        x = self.to_tensor(crops)
        scale = 1.0 / self.temperature if self.temperature else 1.0
        if not self.tta:
            return (logits_of(self._classifier(x)).float() * scale).softmax(-1).cpu().numpy().astype(np.float64)
        probs = (logits_of(self._classifier(torch.cat([x, x.flip(-1)]))).float() * scale).softmax(-1)
        return ((probs[: len(crops)] + probs[len(crops):]) / 2).cpu().numpy().astype(np.float64)

    # ---- whole pipeline

    def predict(self, image: ImageInput, whole_image: Optional[bool] = None) -> ImagePrediction:
        """Detect, crop and classify every face of ``image`` (path, bytes, PIL or array).

        ``whole_image`` overrides the config: with True an image without faces is
        classified as a whole (result marked ``source='whole'``).  Raises
        ``ImageLoadError`` for undecodable input.
        """
        t0 = time.perf_counter()
        img = load_image(image)
        faces = self.detect(img)
        t1 = time.perf_counter()
        result = self.predict_faces(img, faces, whole_image=whole_image)
        result.timings_ms = {"detect": (t1 - t0) * 1000, **result.timings_ms,
                             "total": (time.perf_counter() - t0) * 1000}
        return result

    def predict_faces(self, image: ImageInput, faces: Sequence[Face],
                      whole_image: Optional[bool] = None) -> ImagePrediction:
        """Classify given faces (e.g. tracked boxes); with none, the whole image if asked."""
        t0 = time.perf_counter()
        img = load_image(image)
        whole = self.config.whole_image if whole_image is None else whole_image
        targets: list[Optional[Face]] = list(faces)
        if not targets and whole:
            targets = [None]
        probs = self.classify([self.crop(img, f) for f in targets])
        w, h = img.size
        out = [FacePrediction(f if f is not None else Face((0.0, 0.0, float(w), float(h)), (), 0.0),
                              class_probs(self.labels, p), "face" if f is not None else "whole")
               for f, p in zip(targets, probs)]
        return ImagePrediction(out, (w, h), self.labels,
                               timings_ms={"classify": (time.perf_counter() - t0) * 1000})

    def annotate(self, image: ImageInput, prediction: ImagePrediction) -> Image.Image:
        """The image with each face's box, landmarks and top label drawn."""
        faces = [f.face for f in prediction.faces]
        texts = [(f"#{f.track_id} " if f.track_id is not None else "") + f"{f.label} {f.confidence:.0%}"
                 for f in prediction.faces]
        return draw_faces(image, faces, labels=texts)

    def describe(self) -> dict[str, Any]:
        """What answers: run, model, labels and crop settings (for JSON output and the app)."""
        return {**(self.run.to_dict() if self.run else {}), "model": self.model_config.name,
                "input_size": self.input_size, "labels": list(self.labels), "margin": self.margin,
                "grayscale": self.grayscale, "tta": self.tta, "temperature": self.temperature,
                "backend": self.backend,
                "detector": self.config.detector.to_dict()}


_PREDICTORS_LOCK = threading.Lock()  # one load at a time: two pages asking for the same run share one
MAX_SHARED_PREDICTORS = 6  # a long-running app sees many runs and retrains: keep the most recently used few


@functools.lru_cache(maxsize=MAX_SHARED_PREDICTORS)
def _shared_predictor(key: str) -> Predictor:
    """The predictor that ``key`` (run folder, weights and temperature versions, config) names, loaded once."""
    run_dir, _versions, config = json.loads(key)
    return Predictor.from_run(Path(run_dir), PredictorConfig(**config))


def get_predictor(run: Union[str, Path, None] = None, config: Optional[PredictorConfig] = None) -> Predictor:
    """One shared predictor per run folder, weights file version and config (for the app).

    The least recently used is dropped beyond :data:`MAX_SHARED_PREDICTORS` (callers
    still holding one keep it alive); retrained weights or a refitted temperature
    make a new key, so a stale model is never served.
    """
    choice = resolve_run(run)
    config = config if config is not None else PredictorConfig()
    versions = [p.stat().st_mtime_ns if p.exists() else 0
                for p in (choice.path / runs.WEIGHTS_FILE, choice.path / runs.TEMPERATURE_FILE)]
    key = json.dumps([str(choice.path.resolve()), versions, config.to_dict()], sort_keys=True, default=str)
    with _PREDICTORS_LOCK:
        predictor = _shared_predictor(key)
    predictor.run = choice
    return predictor


def predict_image(image: ImageInput, run: Union[str, Path, None] = None,
                  config: Optional[PredictorConfig] = None) -> ImagePrediction:
    """One call: the shared predictor of ``run`` (default/best run when None) on one image."""
    return get_predictor(run, config).predict(image)


__all__ = [
    "FacePrediction", "ImagePrediction", "Predictor", "PredictorConfig", "RunChoice", "best_run", "class_probs",
    "get_predictor", "predict_image", "resolve_run",
]
