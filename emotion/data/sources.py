"""Resolve what a user names as data (``--data``, the app's sidebar) into :class:`DatasetSplits`.

Everything the project trains on becomes a :class:`DatasetSplits`: a list of
(image file, label) records per split plus the ordered class names.  Three
kinds of source resolve to it:

* class folders on disk (:mod:`emotion.data.folders`);
* ``synthetic``: the generated demo set, materialised once into a cache folder
  (:mod:`emotion.data.synthetic`);
* ``hf:<dataset id>``: a Hugging Face ``datasets`` dataset, exported once into a
  class-folder cache so that audit, EDA and training treat it like any folder
  (:mod:`emotion.data.hub`).

The names callers need from all of them are importable from here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

from emotion import paths
from emotion.data.folders import (
    load_exclusions,
    load_folder_dataset,
    parse_classes,
    save_exclusions,
    stratified_split,
    validation_holdout,
)
from emotion.data.hub import load_hf_dataset
from emotion.data.synthetic import SyntheticConfig, materialize_synthetic
from emotion.data.types import DEFAULT_CLASSES, DatasetError, DatasetSplits, Sample, default_cache_dir

__all__ = [
    "DEFAULT_CLASSES", "DatasetError", "DatasetSplits", "Sample", "check_data_root", "default_cache_dir",
    "load_dataset_spec", "load_exclusions", "load_folder_dataset", "parse_classes", "save_exclusions",
    "stratified_split", "validation_holdout",
]

SYNTHETIC_NAME = "synthetic"
HF_PREFIX = "hf:"


def load_dataset_spec(
    spec: Union[str, Path],
    classes: Union[None, str, Sequence[str]] = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    cache_dir: Optional[Path] = None,
) -> DatasetSplits:
    """Resolve what a user typed (``--data``) into splits.

    ``synthetic`` gives the generated demo set, ``hf:<id>`` a Hugging Face
    dataset; anything else is a folder path.
    """
    text = str(spec).strip()
    if not text:
        raise DatasetError("no dataset given: pass a folder path, 'synthetic' or 'hf:<dataset id>'")
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    if text == SYNTHETIC_NAME or text.startswith(SYNTHETIC_NAME + ":"):
        config = SyntheticConfig.from_spec(text)
        folder = materialize_synthetic(config, cache_dir / "synthetic")
        ds = load_folder_dataset(folder, classes=classes, test_fraction=test_fraction, seed=seed)
        ds.name, ds.source = text, "synthetic"
        return ds
    if text.startswith(HF_PREFIX):
        for local in ("imagefolder:", "disk:"):
            if text[len(HF_PREFIX):].startswith(local):
                check_data_root(Path(text[len(HF_PREFIX) + len(local):]))
        return load_hf_dataset(text[len(HF_PREFIX):], classes=classes, cache_dir=cache_dir,
                               test_fraction=test_fraction, seed=seed)
    check_data_root(Path(text))
    return load_folder_dataset(text, classes=classes, test_fraction=test_fraction, seed=seed)


def check_data_root(folder: Path) -> None:
    """Refuse a dataset folder outside ``$EMOTION_DATA_ROOTS`` when that is set (public deployments)."""
    if paths.outside_data_roots(folder):
        allowed = ", ".join(str(r) for r in paths.data_roots())
        raise DatasetError(f"{folder} is outside the dataset folders this server allows ({allowed}); "
                           f"use a folder inside one of them, 'synthetic', or ask the operator to add it "
                           f"to {paths.DATA_ROOTS_ENV}")
