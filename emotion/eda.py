"""Exploratory views of a dataset: sample images, mean faces, image sizes and modes.

Pure functions of a :class:`~emotion.data.sources.DatasetSplits` returning plain
Python/NumPy data; the EDA page draws them.  Large datasets are subsampled
with a fixed seed (every function says how many images it looked at), and
unreadable files are counted, never fatal.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from emotion.data.cache import DecodedImageCache
from emotion.data.sources import DatasetSplits, Sample, default_cache_dir
from emotion.images import ImageLoadError, image_header

DEFAULT_FACE_SIZE = 64


def _cache(cache: Optional[DecodedImageCache]) -> DecodedImageCache:
    return cache if cache is not None else DecodedImageCache(disk_dir=default_cache_dir() / "decoded")


def _subsample(items: Sequence[Any], limit: Optional[int], seed: int) -> list[Any]:
    items = list(items)
    if limit is None or len(items) <= limit:
        return items
    return random.Random(seed).sample(items, limit)


def samples_of(splits: DatasetSplits, split: str = "all") -> list[Sample]:
    """The samples of one split, or of every split (``"all"``)."""
    if split == "all":
        return [s for samples in splits.splits.values() for s in samples]
    if split not in splits.splits:
        raise ValueError(f"{splits.name} has no {split!r} split (it has {sorted(splits.splits)})")
    return list(splits.splits[split])


def sample_grid(splits: DatasetSplits, split: str = "train", per_class: int = 8,
                seed: int = 0) -> dict[str, list[Path]]:
    """Up to ``per_class`` random files of each class (same seed, same pick)."""
    by_class: dict[str, list[Path]] = {c: [] for c in splits.classes}
    for s in samples_of(splits, split):
        by_class[splits.classes[s.label]].append(s.path)
    return {c: sorted(_subsample(files, per_class, seed + i), key=files.index)
            for i, (c, files) in enumerate(by_class.items())}


@dataclass
class MeanFace:
    """The pixel-wise mean of ``count`` images resized to ``size`` (``image`` is HxWx3 uint8)."""

    label: str
    image: np.ndarray
    count: int
    unreadable: int = 0


def mean_image(paths: Sequence[Path], size: int = DEFAULT_FACE_SIZE,
               cache: Optional[DecodedImageCache] = None) -> tuple[Optional[np.ndarray], int, int]:
    """(mean image or None, images used, unreadable) over ``paths`` resized to ``size`` x ``size``."""
    cache = _cache(cache)
    total = np.zeros((size, size, 3), dtype=np.float64)
    used = bad = 0
    for p in paths:
        try:
            total += cache.get(p, size)
            used += 1
        except ImageLoadError:
            bad += 1
    if not used:
        return None, 0, bad
    return np.clip(total / used, 0, 255).round().astype(np.uint8), used, bad


def mean_faces(splits: DatasetSplits, split: str = "train", size: int = DEFAULT_FACE_SIZE,
               per_class: Optional[int] = 300, seed: int = 0,
               cache: Optional[DecodedImageCache] = None) -> list[MeanFace]:
    """One mean face per class (at most ``per_class`` random images each).

    Aligned, centred faces give a sharp average; a blurry or off-centre mean
    face points at crops that differ in framing, and a class whose mean differs
    in brightness or colour hints at a shortcut a model can learn.
    """
    cache = _cache(cache)
    out = []
    for i, name in enumerate(splits.classes):
        paths = [s.path for s in samples_of(splits, split) if s.label == i]
        image, used, bad = mean_image(_subsample(paths, per_class, seed + i), size, cache)
        if image is not None:
            out.append(MeanFace(name, image, used, bad))
    return out


def batch_mean_faces(splits: DatasetSplits, split: str = "train", batch_size: int = 64, batches: int = 8,
                     size: int = DEFAULT_FACE_SIZE, shuffle: bool = False, seed: int = 0,
                     cache: Optional[DecodedImageCache] = None) -> list[MeanFace]:
    """Mean faces of consecutive batches of ``batch_size`` images (file order, or shuffled).

    In file order, batches that look different from their neighbours reveal
    sub-collections (another source, camera or crop) stored together; shuffled,
    they show what one training batch averages to.  Each face's label names the
    batch and its majority class.
    """
    if batch_size < 1 or batches < 1:
        raise ValueError(f"batch_size and batches must be at least 1, got {batch_size} / {batches}")
    cache = _cache(cache)
    samples = samples_of(splits, split)
    if shuffle:
        random.Random(seed).shuffle(samples)
    out = []
    for b in range(min(batches, -(-len(samples) // batch_size))):
        chunk = samples[b * batch_size:(b + 1) * batch_size]
        image, used, bad = mean_image([s.path for s in chunk], size, cache)
        if image is None:
            continue
        counts = np.bincount([s.label for s in chunk], minlength=len(splits.classes))
        top = splits.classes[int(counts.argmax())]
        out.append(MeanFace(f"batch {b + 1} ({top} {counts.max()}/{len(chunk)})", image, used, bad))
    return out


def image_properties(splits: DatasetSplits, max_images: Optional[int] = 5000, seed: int = 0) -> list[dict]:
    """Per image (a random subset of at most ``max_images``): split, class, size, mode, format, bytes.

    Only file headers are read, so this is quick even on large folders.
    Unreadable files get ``mode="unreadable"`` and zero sizes.
    """
    items = [(split, s) for split, samples in splits.splits.items() for s in samples]
    rows = []
    for split, s in _subsample(items, max_images, seed):
        row: dict[str, Any] = {"split": split, "class": splits.classes[s.label], "file": str(s.path)}
        try:
            row["bytes"] = s.path.stat().st_size
            mode, fmt, width, height = image_header(s.path)
            row.update(width=width, height=height, mode=mode, format=fmt or "?")
        except (OSError, ImageLoadError):  # any header failure means "unreadable" here
            row.update(width=0, height=0, mode="unreadable", format="?")
            row.setdefault("bytes", 0)
        rows.append(row)
    return rows


def summarize_properties(rows: Sequence[dict]) -> dict[str, Any]:
    """Counts of sizes (``"WxH"``) and modes, median width and height, over :func:`image_properties` rows."""
    from collections import Counter

    readable = [r for r in rows if r["mode"] != "unreadable"]
    sizes = Counter(f"{r['width']}x{r['height']}" for r in readable)
    modes = Counter(r["mode"] for r in rows)
    return {
        "images": len(rows),
        "unreadable": len(rows) - len(readable),
        "sizes": dict(sizes.most_common()),
        "modes": dict(modes.most_common()),
        "median_width": float(np.median([r["width"] for r in readable])) if readable else None,
        "median_height": float(np.median([r["height"] for r in readable])) if readable else None,
    }
