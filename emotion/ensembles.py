"""Ensembles of trained runs: member weights fitted on the held-out validation images, saved as a run.

The ensemble network itself is :class:`emotion.models.ensemble.EnsembleModel`;
a saved ensemble is a run folder that names its members
(:func:`emotion.runs.save_ensemble`).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from emotion import runs
from emotion.data.cache import DecodedImageCache
from emotion.data.sources import DatasetError, DatasetSplits
from emotion.evaluation import build_eval_dataset, load_eval_data, predict_probabilities
from emotion.fileio import utc_now
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
                    cache: Optional[DecodedImageCache] = None) -> dict[str, Any]:
    """Save an ensemble run; with ``fit_data`` its weights are fitted on validation images only.

    The fit is recorded in the ensemble's ``config.json`` under ``weights_fit``.
    """
    members = [Path(m) for m in members]
    if len(members) < 2:
        raise ModelError(f"an ensemble needs at least 2 runs, got {len(members)}: pass --runs A,B")
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
    out = runs.save_ensemble(output_dir, members, list(weights) if weights is not None else None)
    config = runs.read_json(out / runs.CONFIG_FILE)
    config["weights_fit"] = fit or {"method": "given" if weights is not None else "equal weights"}
    config["created"] = utc_now()
    runs.write_json(out / runs.CONFIG_FILE, config)
    return {"run_dir": str(out), "members": [str(m) for m in members], "weights": config["weights"],
            "weights_fit": config["weights_fit"]}
