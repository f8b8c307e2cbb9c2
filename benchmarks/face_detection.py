"""Face-detection benchmark: recall by face size, false positives and speed, per detector.

Why: the detector's default must find at least the faces MTCNN finds (40 px
and larger) while being fast enough for the webcam.  No labelled detection set
ships with the project, so test frames are built from real face photos whose
face position is known because we put it there:

* ``single``: one face photo (``../shared/datasets/facial_expressions``, 557
  real photos, one face each) scaled so its face is S px (S in ``--sizes``)
  and pasted, with a feathered edge, at a random place in a 640x480
  background (random crops of scikit-image's non-face sample photos, some
  blurred, or plain, noise and gradient backgrounds);
* ``group``: 3-6 faces of mixed sizes (40-160 px) pasted into one frame;
* ``context``: whole photos of a person, so the face keeps its head, hair and
  surroundings (scikit-image's astronaut and cameraman, and matplotlib's Grace
  Hopper portrait when matplotlib is installed), scaled so the face is S px
  and cut to fit the frame, plus the astronaut resized to 640x480;
* ``empty``: backgrounds alone (every detection there is a false positive).

The facial_expressions photos are tight crops (the face fills the photo; its
MTCNN box reaches past the photo's edges), so a pasted one is a face without a
head outline.  MTCNN, trained on tight face windows, does not mind; BlazeFace,
trained on camera frames, finds such faces much less often than faces with
their head around them.  Recall is therefore also reported per kind of frame
(``tight``: single and group; ``context``).

Ground truth: the face box in each source photo is MTCNN's at full resolution
(facenet-pytorch, score >= 0.9, the face nearest the photo's centre); photos
where MTCNN finds no face, or another face inside the pasted region, are left
out (and counted).  A pasted face's size is the longer side of that box after
scaling.  A detection finds a face when their IoU is at least ``--iou`` (0.4;
matched one-to-one, best overlaps first); detections matching no face are
false positives.  Because the truth is MTCNN's box, MTCNN has a small edge in
IoU; the report also gives each detector's median IoU with the truth.

Speed: the median wall-clock milliseconds of one ``detect`` call per 640x480
frame, with ``--threads`` threads (torch for MTCNN, LiteRT for BlazeFace).
Timings are only meaningful on an otherwise idle machine: the JSON records the
load average.  Detector specs are ``name`` or ``name@max_side`` (``mtcnn@320``
is the webcam setting of earlier versions).

    python benchmarks/face_detection.py --json benchmarks/face_detection.json

The facial_expressions photos are evaluation-only data: they are read where
they lie and never copied.  Without them the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emotion.faces import DetectorConfig, Face, FaceDetector  # noqa: E402
from emotion.fileio import utc_now  # noqa: E402
from emotion.profiling import machine_record  # noqa: E402

logger = logging.getLogger("face_detection")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PHOTOS = REPO.parent / "shared" / "datasets" / "facial_expressions"
FRAME = (640, 480)
SIZES = (24, 32, 40, 64, 96, 160, 240)
GROUP_SIZES = (40, 48, 64, 80, 96, 128, 160)
DEFAULT_DETECTORS = "mtcnn,mtcnn@320,blazeface,blazeface_tiled,blazeface_short"
# scikit-image sample photos without human (or animal) faces: background material
BACKGROUND_IMAGES = ("coffee", "rocket", "coins", "moon", "horse", "clock", "hubble_deep_field",
                     "immunohistochemistry", "retina", "colorwheel", "brick", "grass", "gravel", "cell",
                     "page", "text")
PATCH_CONTEXT = 1.8  # pasted region: a square of this many face sides around the face
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class SourceFace:
    """A face photo and its face box (MTCNN at full resolution)."""

    path: Path
    box: Box


@dataclass
class TestFrame:
    """One benchmark frame and the faces pasted into it."""

    kind: str
    image: Image.Image
    truth: list[tuple[Box, int]]  # (box, size bucket)


# --------------------------------------------------------------------------- ground truth


def truth_detector() -> FaceDetector:
    """MTCNN at full resolution: the reference that defines where each photo's face is."""
    return FaceDetector(DetectorConfig(model="mtcnn", max_side=None, min_face_size=20, min_score=0.9))


def face_of_photo(faces: Sequence[Face], size: tuple[int, int]) -> tuple[Optional[Face], list[Face]]:
    """The photo's subject (the face nearest the centre) and any others."""
    if not faces:
        return None, []
    cx, cy = size[0] / 2.0, size[1] / 2.0
    main = min(faces, key=lambda f: (f.center[0] - cx) ** 2 + (f.center[1] - cy) ** 2)
    return main, [f for f in faces if f is not main]


def patch_region(box: Box, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The square (clipped to the photo) around a face box that gets pasted."""
    side = max(box[2] - box[0], box[3] - box[1]) * PATCH_CONTEXT
    cx, cy = (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0
    return (max(0, int(cx - side / 2)), max(0, int(cy - side / 2)),
            min(size[0], int(math.ceil(cx + side / 2))), min(size[1], int(math.ceil(cy + side / 2))))


def _overlaps(a: Sequence[float], b: Sequence[float]) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def source_faces(files: Sequence[Path], limit: Optional[int] = None
                 ) -> tuple[list[SourceFace], dict[str, int]]:
    """Each usable photo's face box (the first ``limit``), and how many photos were left out and why."""
    det = truth_detector()
    usable, dropped = [], {"no face found": 0, "another face in the pasted region": 0, "unreadable": 0}
    for path in files:
        if limit is not None and len(usable) >= limit:
            break
        try:
            img = Image.open(path).convert("RGB")
        except OSError:
            dropped["unreadable"] += 1
            continue
        main, others = face_of_photo(det.detect(img), img.size)
        if main is None:
            dropped["no face found"] += 1
            continue
        region = patch_region(main.box, img.size)
        if any(_overlaps(o.box, region) for o in others):
            dropped["another face in the pasted region"] += 1
            continue
        usable.append(SourceFace(path, main.box))
    return usable, dropped


# --------------------------------------------------------------------------- frames


def background_images() -> list[np.ndarray]:
    from skimage import data

    out = []
    for name in BACKGROUND_IMAGES:
        try:
            arr = np.asarray(getattr(data, name)())
        except Exception:  # noqa: BLE001 - a sample that needs a download is just not used
            continue
        img = Image.fromarray(arr).convert("RGB")
        out.append(np.asarray(img))
    return out


def background(rng: np.random.Generator, images: Sequence[np.ndarray]) -> Image.Image:
    """A 640x480 face-free background: a photo crop (sometimes blurred), plain, noise or gradient."""
    w, h = FRAME
    kind = rng.choice(["photo", "photo", "photo", "plain", "noise", "gradient"])
    if kind == "photo" and images:
        arr = images[int(rng.integers(len(images)))]
        ih, iw = arr.shape[:2]
        frac = rng.uniform(0.4, 1.0)
        cw, ch = max(8, int(iw * frac)), max(8, int(min(ih, iw * frac * h / w)))
        x0, y0 = int(rng.integers(0, iw - cw + 1)), int(rng.integers(0, ih - ch + 1))
        img = Image.fromarray(arr[y0:y0 + ch, x0:x0 + cw]).resize(FRAME, Image.Resampling.BILINEAR)
        if rng.random() < 0.4:
            img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(1.0, 4.0))))
        return img
    if kind == "plain":
        return Image.new("RGB", FRAME, tuple(int(v) for v in rng.integers(0, 256, 3)))
    if kind == "noise":
        small = rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)
        return Image.fromarray(small).resize(FRAME, Image.Resampling.BICUBIC)
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0.0, 1.0, w)[None, :, None]
    return Image.fromarray(np.broadcast_to(a + (b - a) * t, (h, w, 3)).astype(np.uint8))


def feathered_patch(img: Image.Image, region: tuple[int, int, int, int], scale: float
                    ) -> tuple[Image.Image, Image.Image]:
    """The region scaled by ``scale`` and an alpha mask that fades out over its outer 15%."""
    patch = img.crop(region)
    pw, ph = max(1, round(patch.width * scale)), max(1, round(patch.height * scale))
    patch = patch.resize((pw, ph), Image.Resampling.LANCZOS)
    ramp = max(1.0, 0.15 * min(pw, ph))
    xs = np.minimum(np.arange(pw), np.arange(pw)[::-1]) + 0.5
    ys = np.minimum(np.arange(ph), np.arange(ph)[::-1]) + 0.5
    alpha = np.clip(np.minimum(xs[None, :], ys[:, None]) / ramp, 0.0, 1.0)
    return patch, Image.fromarray((alpha * 255).astype(np.uint8), mode="L")


def size_bucket(side: float, sizes: Sequence[int]) -> int:
    """The largest of ``sizes`` not above ``side`` (0 below the smallest)."""
    fitting = [s for s in sizes if s <= side + 0.5]
    return max(fitting) if fitting else 0


def context_photos() -> list[tuple[str, Image.Image]]:
    """Whole photos of one person with their surroundings (the face is not cut out)."""
    from skimage import data

    photos = [("astronaut", Image.fromarray(data.astronaut())),
              ("cameraman", Image.fromarray(data.camera()).convert("RGB"))]
    try:
        import matplotlib.cbook

        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as fh:
            photos.append(("grace_hopper", Image.open(fh).convert("RGB")))
    except Exception:  # noqa: BLE001 - matplotlib is optional here
        logger.info("matplotlib's grace_hopper.jpg is not available: context frames use two photos")
    return photos


class FrameMaker:
    """Deterministic benchmark frames (seeded), made one at a time so memory stays small."""

    def __init__(self, faces: Sequence[SourceFace], sizes: Sequence[int], seed: int) -> None:
        self.faces, self.sizes = list(faces), sorted(sizes)
        self.rng = np.random.default_rng(seed)
        self.backgrounds = background_images()
        det = truth_detector()
        self.context: list[tuple[str, Image.Image, Box]] = []
        for name, photo in context_photos():
            main, _ = face_of_photo(det.detect(photo), photo.size)
            if main is None:
                raise SystemExit(f"MTCNN found no face in the {name} photo: the detector install is broken")
            self.context.append((name, photo, main.box))

    def _paste(self, frame: Image.Image, face: SourceFace, side: int, taken: list[tuple[int, int, int, int]]
               ) -> Optional[Box]:
        """Paste ``face`` with a ``side``-px face somewhere free; its box in the frame (None: no room)."""
        photo = Image.open(face.path).convert("RGB")
        region = patch_region(face.box, photo.size)
        scale = side / max(face.box[2] - face.box[0], face.box[3] - face.box[1])
        patch, mask = feathered_patch(photo, region, scale)
        w, h = FRAME
        if patch.width > w or patch.height > h:
            return None
        for _ in range(200):
            x = int(self.rng.integers(0, w - patch.width + 1))
            y = int(self.rng.integers(0, h - patch.height + 1))
            rect = (x, y, x + patch.width, y + patch.height)
            if not any(_overlaps(rect, t) for t in taken):
                break
        else:
            return None
        taken.append(rect)
        frame.paste(patch, (x, y), mask)
        sx, sy = patch.width / (region[2] - region[0]), patch.height / (region[3] - region[1])
        b = face.box
        return (x + (b[0] - region[0]) * sx, y + (b[1] - region[1]) * sy,
                x + (b[2] - region[0]) * sx, y + (b[3] - region[1]) * sy)

    def _frame(self, kind: str, faces: Sequence[tuple[SourceFace, int]]) -> TestFrame:
        frame = background(self.rng, self.backgrounds)
        taken: list[tuple[int, int, int, int]] = []
        truth = []
        for face, side in faces:
            box = self._paste(frame, face, side, taken)
            if box is not None:  # bucketed by the size asked for (the pasted box differs by rounding)
                truth.append((box, size_bucket(side, self.sizes)))
        return TestFrame(kind, frame, truth)

    def _window_start(self, lo: float, hi: float, length: int, window: int) -> int:
        """Where a ``window``-long cut of ``length`` may start so it holds ``lo..hi`` (random, seeded)."""
        if length <= window:
            return 0
        first, last = max(0.0, hi - window), max(0.0, min(lo, length - window))
        return int(self.rng.uniform(min(first, last), max(first, last)))

    def _context_frame(self, photo: Image.Image, box: Box, side: int) -> TestFrame:
        """The whole photo scaled so its face is ``side`` px, cut to fit, somewhere on a background."""
        scale = side / max(box[2] - box[0], box[3] - box[1])
        img = photo.resize((max(1, round(photo.width * scale)), max(1, round(photo.height * scale))),
                           Image.Resampling.LANCZOS)
        b = [v * scale for v in box]
        w, h = FRAME
        # a window of the scaled photo no larger than the frame, holding the whole face
        x0 = self._window_start(b[0], b[2], img.width, w)
        y0 = self._window_start(b[1], b[3], img.height, h)
        img = img.crop((x0, y0, min(img.width, x0 + w), min(img.height, y0 + h)))
        frame = background(self.rng, self.backgrounds)
        px, py = int(self.rng.integers(0, w - img.width + 1)), int(self.rng.integers(0, h - img.height + 1))
        frame.paste(img, (px, py))
        dx, dy = px - x0, py - y0
        return TestFrame("context", frame, [((b[0] + dx, b[1] + dy, b[2] + dx, b[3] + dy),
                                             size_bucket(side, self.sizes))])

    def frames(self, groups: int, empty: int, context: int) -> Iterator[TestFrame]:
        """Single-face frames (every photo at every size), group, context and empty frames."""
        for side in self.sizes:
            for face in self.faces:
                yield self._frame("single", [(face, side)])
        for _ in range(groups):
            k = min(len(self.faces), int(self.rng.integers(3, 7)))
            picks = self.rng.choice(len(self.faces), size=k, replace=False)
            yield self._frame("group", [(self.faces[int(i)], int(self.rng.choice(GROUP_SIZES)))
                                        for i in picks])
        _, astronaut, b = self.context[0]
        sx, sy = FRAME[0] / astronaut.width, FRAME[1] / astronaut.height
        box = (b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy)
        yield TestFrame("context", astronaut.resize(FRAME, Image.Resampling.BILINEAR),
                        [(box, size_bucket(max(box[2] - box[0], box[3] - box[1]), self.sizes))])
        for side in self.sizes:
            for _, photo, box in self.context:
                for _ in range(context):
                    yield self._context_frame(photo, box, side)
        for _ in range(empty):
            yield TestFrame("empty", background(self.rng, self.backgrounds), [])

    def count(self, groups: int, empty: int, context: int) -> int:
        return len(self.sizes) * (len(self.faces) + len(self.context) * context) + groups + 1 + empty


# --------------------------------------------------------------------------- scoring


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match(truth: Sequence[Box], found: Sequence[Box], threshold: float) -> list[tuple[int, int, float]]:
    """One-to-one matches (truth index, detection index, IoU), best overlaps first."""
    pairs = sorted(((iou(t, f), ti, fi) for ti, t in enumerate(truth) for fi, f in enumerate(found)),
                   reverse=True)
    used_t, used_f, out = set(), set(), []
    for v, ti, fi in pairs:
        if v >= threshold and ti not in used_t and fi not in used_f:
            used_t.add(ti)
            used_f.add(fi)
            out.append((ti, fi, v))
    return out


TIGHT_KINDS = ("single", "group")  # frames of pasted tight face crops


class Tally:
    """One detector's counts over all frames."""

    def __init__(self, sizes: Sequence[int]) -> None:
        self.sizes = sorted(sizes)
        self.counts: dict[tuple[str, int], list[int]] = {}  # (frame kind, size bucket) -> [faces, found]
        self.false_pos = 0
        self.false_pos_empty = 0
        self.frames = 0
        self.empty_frames = 0
        self.ious: list[float] = []
        self.offsets: list[tuple[float, float, float, float]] = []  # large faces: how boxes differ from truth
        self.ms: list[float] = []

    def add(self, frame: TestFrame, found: Sequence[Face], ms: float, threshold: float) -> None:
        boxes = [f.box for f in found]
        pairs = match([t for t, _ in frame.truth], boxes, threshold)
        self.frames += 1
        self.ms.append(ms)
        for _, bucket in frame.truth:
            self.counts.setdefault((frame.kind, bucket), [0, 0])[0] += 1
        for ti, fi, v in pairs:
            t, bucket = frame.truth[ti]
            self.counts[(frame.kind, bucket)][1] += 1
            self.ious.append(v)
            if bucket >= 96:
                b = boxes[fi]
                side = max(t[2] - t[0], t[3] - t[1])
                self.offsets.append((((b[0] + b[2]) - (t[0] + t[2])) / 2 / side,
                                     ((b[1] + b[3]) - (t[1] + t[3])) / 2 / side,
                                     (b[2] - b[0]) / (t[2] - t[0]), (b[3] - b[1]) / (t[3] - t[1])))
        fp = len(boxes) - len(pairs)
        self.false_pos += fp
        if frame.kind == "empty":
            self.empty_frames += 1
            self.false_pos_empty += fp

    def recall(self, kinds: Optional[Sequence[str]] = None, sizes: Optional[Sequence[int]] = None
               ) -> tuple[Optional[float], int]:
        """Recall over the faces of these frame kinds and size buckets (None: all), and their count."""
        n = found = 0
        for (kind, bucket), (faces, hits) in self.counts.items():
            if (kinds is None or kind in kinds) and (sizes is None or bucket in sizes):
                n, found = n + faces, found + hits
        return (round(found / n, 4) if n else None), n

    def summary(self, min_size: int) -> dict:
        big = [s for s in self.sizes if s >= min_size]
        offsets = np.asarray(self.offsets) if self.offsets else np.zeros((0, 4))
        kinds = sorted({k for k, _ in self.counts})
        return {
            "recall_by_size": {str(s): self.recall(None, [s])[0] for s in self.sizes},
            "faces_by_size": {str(s): self.recall(None, [s])[1] for s in self.sizes},
            "recall_by_kind_and_size": {k: {str(s): self.recall([k], [s])[0] for s in self.sizes}
                                        for k in kinds},
            f"recall_{min_size}px_and_larger": self.recall(None, big)[0],
            f"recall_{min_size}px_and_larger_tight": self.recall(TIGHT_KINDS, big)[0],
            f"recall_{min_size}px_and_larger_context": self.recall(["context"], big)[0],
            "false_positives_per_frame": round(self.false_pos / max(1, self.frames), 4),
            "false_positives_per_empty_frame": round(self.false_pos_empty / max(1, self.empty_frames), 4),
            "median_iou": round(statistics.median(self.ious), 3) if self.ious else None,
            "box_vs_truth_96px_and_larger": None if not len(offsets) else {
                "centre_dx": round(float(np.median(offsets[:, 0])), 3),
                "centre_dy": round(float(np.median(offsets[:, 1])), 3),
                "width_ratio": round(float(np.median(offsets[:, 2])), 3),
                "height_ratio": round(float(np.median(offsets[:, 3])), 3)},
            "median_ms_per_frame": round(statistics.median(self.ms), 2) if self.ms else None,
            "frames": self.frames,
        }


def parse_detector(spec: str, threads: int) -> DetectorConfig:
    """``name`` or ``name@max_side`` -> its config (detector defaults otherwise)."""
    name, _, side = spec.strip().partition("@")
    kwargs: dict = {"model": name, "threads": threads}
    if side:
        kwargs["max_side"] = None if side in ("0", "none") else int(side)
    try:
        return DetectorConfig(**kwargs)
    except ValueError as exc:
        raise SystemExit(f"--detectors {spec!r}: {exc}") from None


def run(frames: Iterator[TestFrame], detectors: dict[str, FaceDetector], sizes: Sequence[int],
        threshold: float, progress: Callable[[int], None]) -> dict[str, Tally]:
    """Every detector on every frame (each frame is made once), tallied."""
    tallies = {name: Tally(sizes) for name in detectors}
    for i, frame in enumerate(frames):
        for name, det in detectors.items():
            t0 = time.perf_counter()
            found = det.detect(frame.image)
            tallies[name].add(frame, found, (time.perf_counter() - t0) * 1000, threshold)
        progress(i)
    return tallies


def _cell(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.3f}"


def to_markdown(results: dict[str, dict], sizes: Sequence[int], min_size: int) -> str:
    """Recall by face size (all frames), recall at >= min_size px per frame kind, false positives, speed."""
    head = (["detector"] + [f"{s} px" for s in sizes]
            + [f">= {min_size} px", f">= {min_size} px tight", f">= {min_size} px context", "FP/frame",
               "FP/empty frame", "median IoU", "ms/frame"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        cells = [name] + [_cell(r["recall_by_size"].get(str(s))) for s in sizes]
        cells += [_cell(r[f"recall_{min_size}px_and_larger{k}"]) for k in ("", "_tight", "_context")]
        cells += [f"{r['false_positives_per_frame']:.3f}", f"{r['false_positives_per_empty_frame']:.3f}",
                  str(r["median_iou"]), str(r["median_ms_per_frame"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS,
                   help="folder of face photos, one face each, searched recursively (default: %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N usable photos (quick runs)")
    p.add_argument("--detectors", default=DEFAULT_DETECTORS,
                   help="comma-separated detector specs, name or name@max_side (default: %(default)s)")
    p.add_argument("--sizes", default=",".join(map(str, SIZES)),
                   help="pasted face sizes in px (default: %(default)s)")
    p.add_argument("--groups", type=int, default=100,
                   help="frames with 3-6 faces each (default: %(default)s)")
    p.add_argument("--empty", type=int, default=200, help="frames without faces (default: %(default)s)")
    p.add_argument("--context", type=int, default=10,
                   help="frames per context photo and size (default: %(default)s)")
    p.add_argument("--iou", type=float, default=0.4, help="IoU that counts as found (default: %(default)s)")
    p.add_argument("--min-size", type=int, default=40,
                   help="the recall that decides the default: faces of at least this many px "
                        "(default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads per detector (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.photos.is_dir():
        logger.warning("skipped: the face photos folder %s does not exist (pass --photos DIR with one-face "
                       "photos, e.g. ../shared/datasets/facial_expressions)", args.photos)
        return 0
    import torch

    torch.set_num_threads(args.threads)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    files = sorted(f for f in args.photos.rglob("*") if f.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        logger.warning("skipped: no .jpg/.png photos under %s", args.photos)
        return 0
    t0 = time.perf_counter()
    faces, dropped = source_faces(files, args.limit)
    logger.info("%d photos, %d usable (%s) in %.0fs", len(files), len(faces), dropped,
                time.perf_counter() - t0)
    detectors = {spec.strip(): FaceDetector(parse_detector(spec, args.threads))
                 for spec in args.detectors.split(",")}
    for det in detectors.values():
        det.warmup()
    maker = FrameMaker(faces, sizes, args.seed)
    total = maker.count(args.groups, args.empty, args.context)

    def progress(i: int) -> None:
        if (i + 1) % 250 == 0 or i + 1 == total:
            logger.info("%d/%d frames (%.0fs)", i + 1, total, time.perf_counter() - t0)

    load_before = os.getloadavg()
    tallies = run(maker.frames(args.groups, args.empty, args.context), detectors, sizes, args.iou, progress)
    results = {name: {"config": detectors[name].config.to_dict(), **t.summary(args.min_size)}
               for name, t in tallies.items()}
    table = to_markdown(results, sizes, args.min_size)
    print(table)
    if args.json:
        doc = {
            "command": "python " + " ".join([sys.argv[0]] + list(argv if argv is not None else sys.argv[1:])),
            "created": utc_now(),
            "photos": os.path.relpath(args.photos, REPO), "photos_found": len(files),
            "photos_used": len(faces),
            "photos_left_out": dropped,
            "ground_truth": "MTCNN box (full resolution, score >= 0.9, face nearest the photo centre) scaled "
                            "and moved with the pasted photo",
            "match": f"IoU >= {args.iou}, one-to-one, best overlaps first",
            "frame": list(FRAME), "sizes": sizes, "groups": args.groups, "empty": args.empty,
            "context_frames_per_photo_and_size": args.context,
            "context_photos": [name for name, _, _ in maker.context],
            "seed": args.seed, "threads": args.threads,
            **machine_record(load_before),
            "results": results, "table": table,
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
