"""PyTorch dataset over labelled image files, and balanced class weights."""

from __future__ import annotations

import logging
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from emotion.data.cache import DecodedImageCache, ProgressFn
from emotion.data.sources import DatasetError, Sample

logger = logging.getLogger(__name__)


def balanced_class_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """``n_samples / (n_classes * count_c)`` per class (scikit-learn's "balanced").

    Rare classes weigh more in the loss so that an imbalanced set (FER's happy is
    1.8x angry) does not teach the model to over-predict the majority class.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    labels_arr = np.asarray(labels, dtype=np.int64)
    if labels_arr.size == 0:
        raise DatasetError("cannot compute class weights from an empty training set")
    if labels_arr.min() < 0 or labels_arr.max() >= num_classes:
        raise DatasetError(f"labels must lie in [0, {num_classes - 1}], found "
                           f"{int(labels_arr.min())}..{int(labels_arr.max())}")
    counts = np.bincount(labels_arr, minlength=num_classes)
    empty = np.flatnonzero(counts == 0).tolist()
    if empty:
        raise DatasetError(f"class index(es) {empty} have no training images; add images or drop "
                           "those classes with --classes")
    weights = labels_arr.size / (num_classes * counts)
    return torch.tensor(weights, dtype=torch.float32)


class FaceImageDataset(Dataset):
    """Items are ``{"pixel_values": CHW float tensor, "labels": int}`` (Hugging Face Trainer's format).

    Images come from a :class:`DecodedImageCache` at ``decode_size`` so decoding
    happens once per file; call :meth:`drop_unreadable` first to skip and
    report corrupt files rather than fail mid-epoch.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable[[np.ndarray], torch.Tensor],
        cache: Optional[DecodedImageCache] = None,
        decode_size: Optional[int] = None,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.cache = cache if cache is not None else DecodedImageCache()
        self.decode_size = decode_size

    def drop_unreadable(self, progress: Optional[ProgressFn] = None) -> dict[str, str]:
        """Decode everything once (filling the cache); remove and return ``{path: error}``."""
        failed = self.cache.warm((s.path for s in self.samples), self.decode_size, progress)
        if failed:
            logger.warning("skipping %d unreadable image(s), e.g. %s", len(failed),
                           next(iter(failed.values())))
            self.samples = [s for s in self.samples if str(s.path) not in failed]
        return failed

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        image = self.cache.get(sample.path, self.decode_size)
        return {"pixel_values": self.transform(image), "labels": sample.label}
