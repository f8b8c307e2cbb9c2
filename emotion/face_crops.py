"""The face-crop dataset step: every image of a dataset replaced by its face crop, cached.

Training (``--face-crop``) and evaluation of runs trained that way call
:func:`crop_dataset`; detections and crops are cached by file content and crop
settings (``<cache>/faces/``), so a second run over the same images detects
nothing again.  The detection itself is :mod:`emotion.faces`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

from emotion.data.sources import DatasetSplits, Sample, default_cache_dir
from emotion.faces import (
    CropConfig,
    Face,
    FaceDetectionError,
    FaceDetector,
    MissPolicy,
    crop_from_faces,
    get_detector,
)
from emotion.fileio import atomic_write, read_json_or_none
from emotion.images import ImageLoadError, file_digest, load_image
from emotion.names import folder_name

logger = logging.getLogger(__name__)

FACES_CACHE_DIRNAME = "faces"


@dataclass
class SplitCropStats:
    """Counts for one split of :func:`crop_dataset`."""

    total: int = 0
    faces_found: int = 0
    misses: int = 0
    miss_actions: dict[str, int] = field(default_factory=dict)  # policy applied -> images
    multi_face: int = 0
    corrupt: int = 0  # unreadable files and images MTCNN failed on
    skipped: int = 0  # corrupt + misses skipped by policy + detection failures
    kept: int = 0
    from_cache: int = 0  # crop file reused as is
    detections_reused: int = 0  # crop redone from a cached detection (e.g. other margin)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SkippedImage:
    path: str
    split: str
    label: str
    reason: str


@dataclass
class CropReport:
    """What :func:`crop_dataset` did, per split; nothing is dropped without an entry here."""

    config: dict[str, Any]
    cache_dir: str
    splits: dict[str, SplitCropStats] = field(default_factory=dict)
    skipped: list[SkippedImage] = field(default_factory=list)
    multi_face_files: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def total(self, attr: str) -> int:
        """Sum of one :class:`SplitCropStats` counter over all splits."""
        return sum(getattr(s, attr) for s in self.splits.values())

    def summary(self) -> str:
        total, found = self.total("total"), self.total("faces_found")
        actions: dict[str, int] = {}
        for s in self.splits.values():
            for k, v in s.miss_actions.items():
                actions[k] = actions.get(k, 0) + v
        miss = ", ".join(f"{v} {k}" for k, v in sorted(actions.items())) or "none"
        return (f"faces found in {found}/{total} images; misses: {miss}; "
                f"{self.total('multi_face')} with several faces; {self.total('corrupt')} unreadable; "
                f"{self.total('skipped')} skipped; {self.total('from_cache')} from cache")

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "cache_dir": self.cache_dir,
            "splits": {k: v.to_dict() for k, v in self.splits.items()},
            "totals": {k: self.total(k) for k in ("total", "faces_found", "misses", "multi_face",
                                                  "corrupt", "skipped", "kept", "from_cache",
                                                  "detections_reused")},
            "skipped": [asdict(s) for s in self.skipped],
            "multi_face_files": list(self.multi_face_files),
            "seconds": round(self.seconds, 3),
            "summary": self.summary(),
        }


def crop_dataset(
    splits: DatasetSplits,
    config: Optional[CropConfig] = None,
    cache_dir: Optional[Path] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    detector: Optional[FaceDetector] = None,
) -> tuple[DatasetSplits, CropReport]:
    """Replace every image by its face crop; returns the cropped splits and a report.

    Crops go to ``cache_dir/faces/<config key>/<split>/<class>/<sha256>.png``
    and detections to ``cache_dir/faces/detections/<detector key>/``, both keyed
    by file content, so a re-run (or another dataset with the same files, or a
    new margin/size) does not detect again.  Unreadable files and images
    skipped by ``on_miss='skip'`` are left out and listed in the report.
    ``progress(done, total)`` is called after each image.
    """
    config = config if config is not None else CropConfig()
    if not isinstance(config, CropConfig):
        raise ValueError(f"config must be a CropConfig, got {type(config).__name__}")
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    key = config.cache_key()
    crop_root = base / FACES_CACHE_DIRNAME / key
    det_root = base / FACES_CACHE_DIRNAME / "detections" / config.detector.cache_key()
    crop_root.mkdir(parents=True, exist_ok=True)
    det_root.mkdir(parents=True, exist_ok=True)
    config_file = crop_root / "config.json"
    if not config_file.exists():
        atomic_write(config_file, lambda p: p.write_text(json.dumps(config.to_dict(), indent=2)), mode=0o644)

    report = CropReport(config=config.to_dict(), cache_dir=str(crop_root))
    new_splits: dict[str, list[Sample]] = {}
    total = sum(len(v) for v in splits.splits.values())
    done = 0
    t0 = time.perf_counter()
    for split, samples in splits.splits.items():
        stats = report.splits.setdefault(split, SplitCropStats())
        out: list[Sample] = []
        for sample in samples:
            stats.total += 1
            label = splits.classes[sample.label] if 0 <= sample.label < len(splits.classes) \
                else str(sample.label)
            result = _crop_one(sample.path, split, label, config, crop_root, det_root, detector, stats)
            if isinstance(result, str):
                stats.skipped += 1
                report.skipped.append(SkippedImage(str(sample.path), split, label, result))
            else:
                crop_path, n_faces = result
                if n_faces > 1:
                    report.multi_face_files.append(str(sample.path))
                stats.kept += 1
                out.append(Sample(crop_path, sample.label))
            done += 1
            if progress is not None:
                progress(done, total)
        new_splits[split] = out
    report.seconds = time.perf_counter() - t0
    logger.info("face crops (%s) in %.1fs: %s", crop_root, report.seconds, report.summary())
    note = f"face crops with MTCNN ({config.describe()}): {report.summary()}; crops in {crop_root}"
    cropped = DatasetSplits(splits.name, list(splits.classes), new_splits, splits.source, splits.root,
                            list(splits.notes) + [note], list(splits.skipped))
    return cropped, report


def _crop_one(path: Path, split: str, label: str, config: CropConfig, crop_root: Path,
              det_root: Path, detector: Optional[FaceDetector], stats: SplitCropStats
              ) -> Union[str, tuple[Path, int]]:
    """Crop one file, updating ``stats``; returns (crop path, faces found) or a skip reason."""
    try:
        digest = file_digest(path)
    except OSError as exc:
        stats.corrupt += 1
        return f"unreadable file: {exc.strerror or exc}"
    crop_path = crop_root / folder_name(split) / folder_name(label) / f"{digest}.png"
    det_file = det_root / digest[:2] / f"{digest}.json"
    cached = read_json_or_none(det_file)
    faces: Optional[list[Face]] = None
    if cached is not None:
        try:
            faces = [Face.from_dict(f) for f in cached["faces"]]
        except (KeyError, TypeError, ValueError) as exc:
            logger.warning("ignoring malformed detection cache %s (%s)", det_file, exc)
    if faces is not None and (crop_path.exists() or (not faces and config.on_miss is MissPolicy.SKIP)):
        _count(stats, faces, config)
        stats.from_cache += 1
        if not faces and config.on_miss is MissPolicy.SKIP:
            return "no face found (on_miss=skip)"
        return crop_path, len(faces)
    try:
        img = load_image(path)
    except ImageLoadError as exc:
        stats.corrupt += 1
        return f"unreadable image: {exc}"
    if faces is None:
        try:
            faces = (detector if detector is not None else get_detector(config.detector)).detect(img)
        except FaceDetectionError as exc:
            stats.corrupt += 1
            logger.warning("face detection failed on %s: %s", path, exc)
            return f"face detection failed: {exc}"
        payload = {"faces": [f.to_dict() for f in faces], "size": list(img.size)}
        atomic_write(det_file, lambda p: p.write_text(json.dumps(payload)), mode=0o644)
        # Crop from the stored (rounded) values so fresh and cached runs give identical crops.
        faces = [Face.from_dict(d) for d in payload["faces"]]
    else:
        stats.detections_reused += 1
    _count(stats, faces, config)
    result = crop_from_faces(img, faces, config)
    if result.image is None:
        return "no face found (on_miss=skip)"
    crop = result.image
    atomic_write(crop_path, lambda p: crop.save(p, format="PNG"), mode=0o644)  # the cache may be shared
    return crop_path, len(faces)


def _count(stats: SplitCropStats, faces: list[Face], config: CropConfig) -> None:
    if faces:
        stats.faces_found += 1
        if len(faces) > 1:
            stats.multi_face += 1
    else:
        stats.misses += 1
        action = config.on_miss.value
        stats.miss_actions[action] = stats.miss_actions.get(action, 0) + 1
