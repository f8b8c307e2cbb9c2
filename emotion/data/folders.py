"""Class-folder datasets on disk: find the layout, list the images, split them.

Understands the Human Emotions Dataset layout
(``Emotions Dataset/Emotions Dataset/train|test/<class>/*.jpg``, found from the
outer folder), any ``train/`` + ``test/`` (or ``val/``) pair, and one folder of
class subfolders that is split stratified 80/20 with a fixed seed.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections import Counter
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

from emotion.data.types import DatasetError, DatasetSplits, Sample
from emotion.fileio import write_json
from emotion.images import is_image_file, regular_file_problem

logger = logging.getLogger(__name__)

TRAIN_NAMES = ("train", "training")
EVAL_NAMES = ("test", "val", "valid", "validation")
MAX_SEARCH_DEPTH = 4


def parse_classes(classes: Union[None, str, Sequence[str]]) -> Optional[list[str]]:
    """Accept ``"angry,happy,sad"`` or a list; ``None``/empty means all classes."""
    if classes is None:
        return None
    if isinstance(classes, str):
        items = [c.strip() for c in classes.split(",")]
    else:
        items = [str(c).strip() for c in classes]
    items = [c for c in items if c]
    if not items:
        return None
    dupes = [c for c, n in Counter(items).items() if n > 1]
    if dupes:
        raise DatasetError(f"class list names {dupes} more than once: {items}")
    return items


def _class_dirs(folder: Path) -> dict[str, Path]:
    """Subfolders of ``folder`` that hold at least one image file (directly or nested)."""
    out = {}
    for child in sorted(folder.iterdir()):
        if child.is_dir() and not child.name.startswith(".") and any(_iter_images(child)):
            out[child.name] = child
    return out


def _iter_images(folder: Path, skipped: Optional[list[tuple[Path, str]]] = None) -> Iterable[Path]:
    """Image files below ``folder``, sorted; non-regular ones go to ``skipped`` as (path, reason)."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if is_image_file(name):
                path = Path(dirpath) / name
                problem = regular_file_problem(path)
                if problem is None:
                    yield path
                elif skipped is not None:
                    skipped.append((path, problem))


def _find_child(folder: Path, names: Sequence[str]) -> Optional[Path]:
    lower = {c.name.lower(): c for c in folder.iterdir() if c.is_dir()}
    for n in names:
        if n in lower:
            return lower[n]
    return None


def _find_split_root(root: Path, depth: int = 0) -> Optional[Path]:
    """The first folder at or below ``root`` that has a train and a test/val subfolder.

    Searches breadth-first so that the HES layout
    (``Emotions Dataset/Emotions Dataset/train``) is found from its outer folder.
    """
    frontier = [root]
    for _ in range(MAX_SEARCH_DEPTH + 1):
        nxt = []
        for folder in frontier:
            if _find_child(folder, TRAIN_NAMES) and _find_child(folder, EVAL_NAMES):
                return folder
            nxt.extend(
                sorted(c for c in folder.iterdir() if c.is_dir() and not c.name.startswith("."))
            )
        frontier = nxt
    return None


def _select_classes(found: Sequence[str], wanted: Optional[list[str]], where: Path) -> list[str]:
    if wanted is None:
        return sorted(found)
    lower = {c.lower(): c for c in found}
    missing = [c for c in wanted if c not in found and c.lower() not in lower]
    if missing:
        raise DatasetError(
            f"class(es) {missing} not found in {where}; available: {sorted(found)}. "
            "Fix the --classes list or the folder names."
        )
    return [c if c in found else lower[c.lower()] for c in wanted]


def _samples_from(folder: Path, classes: list[str], split: str = "",
                  skipped: Optional[list[dict]] = None) -> list[Sample]:
    dirs = {name.lower(): path for name, path in _class_dirs(folder).items()}
    samples = []
    for label, name in enumerate(classes):
        path = dirs.get(name.lower())
        if path is None:
            continue
        odd: list[tuple[Path, str]] = []
        samples.extend(Sample(p, label) for p in _iter_images(path, odd))
        if skipped is not None:
            skipped.extend({"file": str(p), "split": split, "class": name, "error": f"{p}: {why}"}
                           for p, why in odd)
    return samples


def stratified_split(
    samples: Sequence[Sample], test_fraction: float = 0.2, seed: int = 0
) -> tuple[list[Sample], list[Sample]]:
    """Split per class so both parts keep the class proportions; same seed, same split.

    Every class with at least two images contributes at least one to each part.
    """
    if not 0.0 < test_fraction < 1.0:
        raise DatasetError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    by_label: dict[int, list[Sample]] = {}
    for s in samples:
        by_label.setdefault(s.label, []).append(s)
    rng = random.Random(seed)
    train, test = [], []
    for label in sorted(by_label):
        items = sorted(by_label[label], key=lambda s: str(s.path))
        rng.shuffle(items)
        n_test = int(round(len(items) * test_fraction))
        if len(items) >= 2:
            n_test = min(max(n_test, 1), len(items) - 1)
        else:
            n_test = 0
        test.extend(items[:n_test])
        train.extend(items[n_test:])
    return train, test


def validation_holdout(
    splits: DatasetSplits, val_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample], str]:
    """(train, validation, description): the data's ``val`` split, else a stratified share of train.

    Training and evaluation both call this, so temperature or ensemble weights
    are fitted on exactly the images a run held out, never on its training images.
    """
    if "val" in splits.splits:
        return list(splits.train), list(splits.splits["val"]), "val split"
    train, val = stratified_split(splits.train, val_fraction, seed)
    return train, val, f"stratified {val_fraction:.0%} of train (seed {seed})"


def load_folder_dataset(
    root: Union[str, Path],
    classes: Union[None, str, Sequence[str]] = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> DatasetSplits:
    """Class-folder dataset from ``root`` (HES, train/test pair or one folder to split)."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(f"dataset folder {root} does not exist")
    if not root.is_dir():
        raise DatasetError(f"{root} is a file; point at the folder that holds the class folders")
    wanted = parse_classes(classes)
    notes: list[str] = []
    skipped: list[dict] = []
    split_root = _find_split_root(root)
    if split_root is not None:
        train_dir = _find_child(split_root, TRAIN_NAMES)
        eval_dir = _find_child(split_root, EVAL_NAMES)
        assert train_dir is not None and eval_dir is not None
        found = list(_class_dirs(train_dir))
        if not found:
            raise DatasetError(f"{train_dir} has no class subfolders with images")
        chosen = _select_classes(found, wanted, train_dir)
        eval_name = "test" if eval_dir.name.lower() == "test" else "val"
        eval_classes = {c.lower() for c in _class_dirs(eval_dir)}
        absent = [c for c in chosen if c.lower() not in eval_classes]
        if absent:
            notes.append(f"{eval_dir.name}/ has no images for {absent}")
        extra = sorted(set(_class_dirs(eval_dir)) - set(found))
        if extra and wanted is None:
            notes.append(f"{eval_dir.name}/ classes {extra} are missing from train/ and ignored")
        splits = {
            "train": _samples_from(train_dir, chosen, "train", skipped),
            eval_name: _samples_from(eval_dir, chosen, eval_name, skipped),
        }
        source = "hes" if split_root != root else "folder"
        data_root = split_root
    else:
        lone_train = _find_child(root, TRAIN_NAMES)
        if lone_train is not None and _class_dirs(lone_train):
            # train/ without test/: split train/ itself rather than calling "train" a class
            notes.append(f"{lone_train.name}/ has no test/ or val/ sibling")
            root = lone_train
        found = list(_class_dirs(root))
        if not found:
            raise DatasetError(
                f"no images found under {root}. Expected class folders "
                "(root/<class>/*.jpg), a train/ and test/ (or val/) pair of them, "
                "or the Human Emotions Dataset folder."
            )
        chosen = _select_classes(found, wanted, root)
        train, test = stratified_split(_samples_from(root, chosen, "train", skipped), test_fraction, seed)
        splits = {"train": train, "test": test}
        notes.append(f"no train/test folders: split stratified {1 - test_fraction:.0%}/"
                     f"{test_fraction:.0%} with seed {seed}")
        source = "split-folder"
        data_root = root
    if not splits["train"]:
        raise DatasetError(f"the train split of {data_root} has no images for classes {chosen}")
    if skipped:
        notes.append(f"skipped {len(skipped)} file(s) that are not regular files, e.g. {skipped[0]['error']}")
        logger.warning("%s: %s", data_root, notes[-1])
    name = (data_root.parent.name if data_root.name.lower() in TRAIN_NAMES else data_root.name)
    return DatasetSplits(name or str(data_root), chosen, splits, source, data_root, notes, skipped)


def save_exclusions(path: Union[str, Path], files: Iterable[Union[str, Path]], reason: str) -> Path:
    """Record files to leave out of training (used by the EDA page); never deletes them."""
    path = Path(path)
    write_json(path, {"reason": reason, "files": sorted({str(Path(f).resolve()) for f in files})})
    return path


def load_exclusions(path: Union[str, Path]) -> list[str]:
    """Files listed by :func:`save_exclusions`; a missing file means none."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
        files = data["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DatasetError(f"exclusion list {path} is malformed ({exc}); delete or fix it") from None
    return [str(f) for f in files]
