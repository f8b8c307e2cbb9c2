"""The dataset types every data module shares: a labelled file, the splits of a dataset, its errors.

A leaf module (no other ``emotion.data`` import), so that the folder loader, the
synthetic generator and the Hugging Face exporter can all return
:class:`DatasetSplits` without importing each other.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

from emotion.images import ImageLoadError, image_header

DEFAULT_CLASSES = ("angry", "happy", "sad")


class DatasetError(ValueError):
    """The dataset cannot be used as given; the message says what was found and what to do."""


@dataclass(frozen=True)
class Sample:
    """One labelled image file."""

    path: Path
    label: int


@dataclass
class DatasetSplits:
    """Labelled image files per split, with the class names their labels index."""

    name: str
    classes: list[str]
    splits: dict[str, list[Sample]]
    source: str  # "folder", "hes", "split-folder", "synthetic" or "hf"
    root: Optional[Path] = None
    notes: list[str] = field(default_factory=list)
    # files with an image name that are no regular file (named pipes, devices, link loops): never
    # opened, since reading a pipe blocks forever; {"file", "split", "class", "error"} each
    skipped: list[dict] = field(default_factory=list)

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per class for every split, classes in label order."""
        out = {}
        for split, samples in self.splits.items():
            c = Counter(s.label for s in samples)
            out[split] = {name: c.get(i, 0) for i, name in enumerate(self.classes)}
        return out

    @property
    def train(self) -> list[Sample]:
        return self.splits["train"]

    @property
    def eval_split(self) -> str:
        """Name of the held-out split ("test" or "val")."""
        for name in ("test", "val"):
            if name in self.splits:
                return name
        raise DatasetError(f"dataset {self.name!r} has no test or val split")

    def describe(self) -> dict:
        """A JSON-friendly summary (for the app, run folders and logs)."""
        return {
            "name": self.name,
            "source": self.source,
            "root": str(self.root) if self.root else None,
            "classes": list(self.classes),
            "counts": self.counts(),
            "notes": list(self.notes),
        }

    def is_grayscale(self, split: str = "train", sample_size: int = 256, seed: int = 0) -> bool:
        """Whether the split's images are single-channel (e.g. FER2013), judged from file headers.

        Runs record it so prediction can grey colour photos the way the model saw its faces.
        Reads at most ``sample_size`` headers (a seeded sample); unreadable files (decompression
        bombs, pipes, damaged headers) are ignored, never raised: this runs after training.
        """
        samples = list(self.splits.get(split, []))
        if len(samples) > sample_size:
            samples = random.Random(seed).sample(samples, sample_size)
        modes = []
        for sample in samples:
            try:
                modes.append(image_header(sample.path)[0])
            except ImageLoadError:
                continue
        return bool(modes) and all(m in ("1", "L", "LA", "I", "I;16", "F") for m in modes)

    def exclude(self, paths: Iterable[Union[str, Path]],
                only: Optional[Sequence[str]] = None) -> "DatasetSplits":
        """A copy without the given files (e.g. images flagged by the audit).

        ``only`` limits the removal to some splits: training excludes from
        ``train`` alone so that test scores stay comparable between runs.
        The files themselves are never touched.
        """
        drop = {str(Path(p).resolve()) for p in paths}
        splits = {
            k: [s for s in v if (only is not None and k not in only) or str(s.path.resolve()) not in drop]
            for k, v in self.splits.items()
        }
        removed = sum(len(v) for v in self.splits.values()) - sum(len(v) for v in splits.values())
        notes = self.notes + ([f"excluded {removed} flagged image(s)"] if removed else [])
        return DatasetSplits(self.name, list(self.classes), splits, self.source, self.root, notes,
                             list(self.skipped))


def default_cache_dir() -> Path:
    """Where generated and exported datasets and decoded images are cached."""
    env = os.environ.get("EMOTION_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "emotion-studio"
