"""Ensembles of trained runs: member weights fitted on the held-out validation images, saved as a run.

The ensemble network itself is :class:`emotion.models.ensemble.EnsembleModel`;
a saved ensemble is a run folder that names its members
(:func:`emotion.runs.save_ensemble`).
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from emotion import runs
from emotion.data.cache import DecodedImageCache
from emotion.data.sources import DatasetError, DatasetSplits
from emotion.evaluation import build_eval_dataset, load_eval_data, predict_probabilities
from emotion.fileio import atomic_write, default_dir_mode, utc_now
from emotion.metrics import classification_metrics, negative_log_likelihood
from emotion.models import ModelError

logger = logging.getLogger(__name__)



def simplex_grid(members: int, step: float) -> np.ndarray:
    """All weight vectors on the simplex with coordinates in multiples of ``step``."""
    if members < 2:
        raise ValueError(f"need at least 2 members, got {members}")
    n = int(round(1.0 / step))
    if n < 1 or abs(n * step - 1.0) > 1e-9:
        raise ValueError(f"step must divide 1 (e.g. 0.05, 0.1, 0.25), got {step}")
    if math.comb(n + members - 1, members - 1) > 200_000:
        raise ValueError(f"a step of {step} gives too many weightings for {members} members; "
                         "use a larger step")

    def rec(k: int, left: int) -> list[list[int]]:
        if k == 1:
            return [[left]]
        return [[i] + rest for i in range(left + 1) for rest in rec(k - 1, left - i)]

    return np.array(rec(members, n), dtype=np.float64) / n


def fit_ensemble_weights(member_probs: Sequence[np.ndarray], labels: Any, objective: str = "nll",
                         step: float = 0.05) -> dict[str, Any]:
    """Grid search over the weight simplex on validation predictions.

    ``objective`` ``"nll"`` (the default: smooth, so less prone to fitting noise
    on a small split) minimises NLL of the weighted probability average;
    ``"macro_f1"`` maximises macro-F1, ties broken by NLL.
    """
    if objective not in ("nll", "macro_f1"):
        raise ValueError(f"objective must be 'nll' or 'macro_f1', got {objective!r}")
    stack = np.stack([np.asarray(p, dtype=np.float64) for p in member_probs])
    y = np.asarray(labels, dtype=np.int64)
    names = [str(i) for i in range(stack.shape[2])]
    grid = simplex_grid(len(stack), step)

    def score(w: np.ndarray) -> tuple[float, float]:
        p = np.tensordot(w, stack, axes=1)
        nll = negative_log_likelihood(p, y)
        if objective == "nll":
            return (-nll, -nll)
        return (classification_metrics(p, y, names)["macro_f1"], -nll)

    scores = [score(w) for w in grid]
    best = max(range(len(grid)), key=lambda i: scores[i])
    equal = np.full(len(stack), 1.0 / len(stack))
    eq_score = score(equal)

    def readable(s: tuple[float, float]) -> dict[str, float]:
        return {"nll": -s[1], **({"macro_f1": s[0]} if objective == "macro_f1" else {})}

    return {"weights": grid[best].tolist(), "objective": objective,
            "method": f"grid over the weight simplex, step {step} ({len(grid)} weightings)",
            "best": readable(scores[best]), "equal_weights": readable(eq_score)}


def create_ensemble(members: Sequence[Union[str, Path]], output_dir: Union[str, Path],
                    weights: Optional[Sequence[float]] = None,
                    fit_data: Union[None, str, Path, DatasetSplits] = None,
                    classes: Union[None, str, Sequence[str]] = None, seed: Optional[int] = None,
                    objective: str = "nll",
                    step: float = 0.05, batch_size: int = 64, tta: bool = False,
                    device: Union[None, str, torch.device] = None,
                    cache: Optional[DecodedImageCache] = None, pack: bool = False,
                    half: bool = False) -> dict[str, Any]:
    """Save an ensemble run; with ``fit_data`` its weights are fitted on validation images only.

    The fit is recorded in the ensemble's ``config.json`` under ``weights_fit``.
    ``pack`` copies the members into the ensemble's folder (:func:`pack_members`,
    ``half``: weights as float16), so that it can be shipped or moved as one folder.
    """
    if half and not pack:
        raise ValueError("half=True stores copied members as float16; it needs pack=True")
    members = [Path(m) for m in members]
    if len(members) < 2:
        raise ModelError(f"an ensemble needs at least 2 runs, got {len(members)}: pass --runs A,B")
    output_dir = Path(output_dir)
    _check_output_dir(output_dir)
    fit = None
    if fit_data is not None:
        if weights is not None:
            raise ValueError("give either fixed weights or a dataset to fit them on, not both")
        member_probs, labels, first, first_paths = [], None, None, None
        for member in members:
            run = runs.load_run(member)
            ev = load_eval_data(run, fit_data, "val", classes, seed)
            grey = runs.trained_on_grayscale(run.spec, run.path)
            ds, _ = build_eval_dataset(ev.samples, run.config, cache, grey)
            paths = [str(s.path) for s in ds.samples]
            if first is None:
                first, first_paths = ev, paths
            elif paths != first_paths:
                raise DatasetError(f"{member} was validated on other images ({ev.description}) than "
                                   f"{members[0]} ({first.description}): some member trained on the "
                                   "other's validation images. Fit weights for members trained with the "
                                   "same --seed and --val-fraction, or pass fixed --weights")
            p, labels = predict_probabilities(run.module, ds, batch_size, tta, device)
            member_probs.append(p)
        assert first is not None and labels is not None
        fit = fit_ensemble_weights(member_probs, labels, objective, step)
        fit["fitted_on"] = {"data": first.spec, "root": str(first.splits.root) if first.splits.root else None,
                            "split": first.description, "images": int(len(labels)), "tta": tta}
        weights = fit["weights"]
        logger.info("ensemble weights %s (%s)", [round(w, 3) for w in weights], fit["method"])
    sources = members
    _check_output_dir(output_dir)  # again: the fit takes minutes, and another tab may have used the name
    if pack:
        members = pack_members(members, output_dir, half)
    out = runs.save_ensemble(output_dir, members, list(weights) if weights is not None else None)
    config = runs.read_json(out / runs.CONFIG_FILE)
    config["weights_fit"] = fit or {"method": "given" if weights is not None else "equal weights"}
    # how tightly the training faces were framed belongs to the data, which the members share (as
    # runs.train_config_of assumes): keep the first member's hint, so photos are cropped as it was trained
    first_spec = runs.read_json(sources[0] / runs.CONFIG_FILE)
    hints = first_spec.get("inference") if isinstance(first_spec, dict) else None
    framing = {k: v for k, v in (hints or {}).items() if k in ("margin", "margin_source")}
    if framing:
        config["inference"] = framing
    if pack:
        config["packed_from"] = [str(m) for m in sources]
        config["member_weights_dtype"] = "float16" if half else "as trained"
    config["created"] = utc_now()
    runs.write_json(out / runs.CONFIG_FILE, config)
    return {"run_dir": str(out), "members": [str(m) for m in members], "weights": config["weights"],
            "weights_fit": config["weights_fit"]}


def _check_output_dir(output_dir: Path) -> None:
    """An ensemble goes into a new or empty folder only.

    Its config.json and labels.json would replace a run's own (a member's, even),
    and a temperature or evaluations left there would then describe the wrong model.
    """
    if output_dir.exists() and not output_dir.is_dir():
        raise runs.RunError(f"{output_dir} is a file; choose a folder name for --output-dir")
    if output_dir.is_dir() and any(output_dir.iterdir()):
        raise runs.RunError(f"{output_dir} is not empty; an ensemble is saved into a new or empty folder: "
                            "choose another --output-dir")


# what a packed member keeps of its run folder (checkpoints, logs and evaluations stay behind)
# (nor its model card, which would describe it as what it was, not as a member)
MEMBER_FILES = (runs.CONFIG_FILE, runs.LABELS_FILE, runs.WEIGHTS_FILE, runs.TEMPERATURE_FILE, "metrics.json")


def _copy_weights(src: Path, dst: Path, half: bool) -> None:
    if not half:
        atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))
        return
    from safetensors.torch import load_file, save_file

    tensors = {k: v.half() if v.is_floating_point() else v for k, v in load_file(str(src)).items()}
    atomic_write(dst, lambda tmp: save_file(tensors, str(tmp), metadata={
        "stored_as": "float16 by emotion.ensembles.pack_members; loaded as float32"}))


def pack_members(members: Sequence[Union[str, Path]], output_dir: Union[str, Path],
                 half: bool = False) -> list[Path]:
    """Copy member runs into ``output_dir/members/NN-name`` and return the copies.

    Why: an ensemble that names folders elsewhere breaks when moved or
    installed; a packed one is self-contained.  ``half`` stores the weights as
    float16 (half the size; :func:`emotion.runs.load_run` loads them back into
    float32, class probabilities move by about 1e-3).  Nested ensembles are
    refused: pack their members directly.  Nothing existing is overwritten.
    """
    target = Path(output_dir) / "members"
    if target.exists() and any(target.iterdir()):
        raise ValueError(f"{target} already holds members; choose an empty --output-dir")
    sources = [Path(m) for m in members]
    for src in sources:
        spec = runs.read_json(src / runs.CONFIG_FILE)
        if isinstance(spec, dict) and spec.get("model") == "ensemble":
            inner = ", ".join(spec.get("members") or [])
            raise ModelError(f"{src} is itself an ensemble; pack its members ({inner}) into this one")
        if not (src / runs.WEIGHTS_FILE).is_file():
            raise ModelError(f"{src / runs.WEIGHTS_FILE} is missing: only finished runs can be packed")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".members.", dir=target.parent))
    try:
        os.chmod(staging, default_dir_mode())  # readers (the app) may run as another user
        copies = []
        for i, src in enumerate(sources, 1):
            # a member of a packed ensemble is already called NN-name: number it afresh, not NN-NN-name
            dst = staging / f"{i:02d}-{re.sub(r'^[0-9]{2}-', '', src.resolve().name)}"
            dst.mkdir()
            for name in MEMBER_FILES:
                if not (src / name).is_file():
                    continue
                if name == runs.WEIGHTS_FILE:
                    _copy_weights(src / name, dst / name, half)
                else:
                    atomic_write(dst / name, lambda tmp, f=src / name: shutil.copyfile(f, tmp))
            copies.append(target / dst.name)
        if target.exists():
            target.rmdir()  # empty (checked above)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("packed %d members into %s%s", len(copies), target, " as float16" if half else "")
    return copies
