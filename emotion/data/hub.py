"""Hugging Face ``datasets`` as a data source.

``hf:<hub id>`` downloads from the Hub (when online), ``hf:imagefolder:<dir>``
reads a local folder through the ``imagefolder`` builder, and ``hf:disk:<dir>``
reads the output of ``Dataset.save_to_disk``.  Each is exported once into a
class-folder cache so that the audit, EDA and training treat it like any
folder dataset.  Offline, a Hub id fails within seconds with a message that
says what to do instead of hanging on retries.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence, Union

from emotion.data.folders import load_folder_dataset
from emotion.data.types import DatasetError, DatasetSplits, default_cache_dir
from emotion.fileio import atomic_folder
from emotion.hf_hub import hub_reachable, offline_hub, offline_message
from emotion.names import folder_name, slug

logger = logging.getLogger(__name__)

_EVAL_SPLITS = ("test", "validation", "valid", "val")
_ALTERNATIVE = "export it to class folders (train/<class>/*.png) and pass that folder instead"


def _open(spec: str):
    """Load the DatasetDict (or Dataset) a spec names, failing fast when offline."""
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a requirement
        raise DatasetError("the 'datasets' package is not installed: pip install datasets") from exc
    datasets.logging.set_verbosity_error()
    if spec.startswith("imagefolder:"):
        folder = Path(spec[len("imagefolder:"):]).expanduser()
        if not folder.is_dir():
            raise DatasetError(f"imagefolder path {folder} is not a folder")
        return datasets.load_dataset("imagefolder", data_dir=str(folder))
    if spec.startswith("disk:"):
        folder = Path(spec[len("disk:"):]).expanduser()
        if not folder.is_dir():
            raise DatasetError(f"save_to_disk folder {folder} does not exist")
        try:
            return datasets.load_from_disk(str(folder))
        except FileNotFoundError as exc:
            raise DatasetError(f"{folder} is not a dataset saved with save_to_disk ({exc})") from None
    if not spec or spec.count("/") > 1 or " " in spec:
        raise DatasetError(f"{spec!r} is not a Hub dataset id; expected e.g. 'hf:user/dataset'")
    if not hub_reachable():
        return _load_cached_offline(datasets, spec)
    try:
        return datasets.load_dataset(spec)
    except Exception as exc:
        raise DatasetError(f"could not load Hub dataset {spec!r}: {exc}") from None


def _load_cached_offline(datasets, spec: str):
    """Load a Hub dataset downloaded earlier, without touching the network.

    The offline flags are read by ``datasets`` at import time, so they are
    switched on for this call only; with nothing cached we fail at once.
    """
    from huggingface_hub import constants

    cached = Path(constants.HF_HUB_CACHE) / f"datasets--{spec.replace('/', '--')}"
    if not cached.is_dir():
        raise DatasetError(offline_message(f"dataset {spec!r}", _ALTERNATIVE))
    try:
        with offline_hub():
            return datasets.load_dataset(spec)
    except Exception as exc:
        raise DatasetError(f"{offline_message(f'dataset {spec!r}', _ALTERNATIVE)} "
                           f"(cached copy unusable: {exc})") from None


def _columns(ds) -> tuple[str, str, list[str]]:
    """(image column, label column, class names) of a ``datasets.Dataset``."""
    from datasets import ClassLabel, Image

    image_col = next((k for k, f in ds.features.items() if isinstance(f, Image)), None)
    label_col = next((k for k, f in ds.features.items() if isinstance(f, ClassLabel)), None)
    if image_col is None:
        raise DatasetError(f"no image column in dataset features {list(ds.features)}")
    if label_col is None:
        raise DatasetError(f"no ClassLabel column in dataset features {list(ds.features)}; "
                           "cast the label column with ds.cast_column('label', ClassLabel(names=[...]))")
    return image_col, label_col, list(ds.features[label_col].names)


def _export(dsdict, target: Path) -> None:
    """Write every split as ``<split>/<class>/<index>.png`` into ``target`` atomically."""

    def build(tmp: Path) -> None:
        for split_name, ds in dsdict.items():
            out_split = "train" if split_name == "train" else (
                "test" if split_name == "test" else "val" if split_name in _EVAL_SPLITS else None)
            if out_split is None:
                logger.info("ignoring split %r", split_name)
                continue
            image_col, label_col, names = _columns(ds)
            for name in names:
                (tmp / out_split / folder_name(name)).mkdir(parents=True, exist_ok=True)
            for i, row in enumerate(ds):
                img = row[image_col]
                if img is not None:
                    img.convert("RGB").save(tmp / out_split / folder_name(names[row[label_col]]) / f"{i:06d}.png")

    atomic_folder(target, build)


def load_hf_dataset(
    spec: str,
    classes: Union[None, str, Sequence[str]] = None,
    cache_dir: Optional[Path] = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> DatasetSplits:
    """A Hugging Face dataset as :class:`DatasetSplits`, exported to class folders once."""
    dsdict = _open(spec)
    if not hasattr(dsdict, "keys"):  # a single Dataset: treat it as train
        import datasets

        dsdict = datasets.DatasetDict({"train": dsdict})
    if "train" not in dsdict:
        raise DatasetError(f"dataset {spec!r} has no 'train' split (found {list(dsdict)})")
    fingerprint = "-".join(getattr(d, "_fingerprint", "") or "" for d in dsdict.values())[:64]
    cache_root = Path(cache_dir) if cache_dir else default_cache_dir()
    target = cache_root / "hf" / f"{slug(spec)}-{slug(fingerprint, fallback='nofp')}"
    if not target.exists():
        logger.info("exporting %s to %s", spec, target)
        _export(dsdict, target)
    ds = load_folder_dataset(target, classes=classes, test_fraction=test_fraction, seed=seed)
    ds.name, ds.source = f"hf:{spec}", "hf"
    return ds
