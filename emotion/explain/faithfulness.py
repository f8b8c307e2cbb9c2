"""ROAD (Rong et al., 2022): how much confidence drops when the pixels a map calls relevant are removed."""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch
from torch import nn

from emotion.explain.base import ExplainError, RoadScore, borrowed

DEFAULT_ROAD_PERCENTILES: tuple[int, ...] = (10, 30, 50, 70, 90)


def road_score(module: nn.Module, x: torch.Tensor, heatmap: np.ndarray, target: int,
               percentiles: Sequence[int] = DEFAULT_ROAD_PERCENTILES, seed: int = 0) -> RoadScore:
    """ROAD of ``heatmap`` for class ``target`` on input ``x`` (pytorch-grad-cam's imputation metric).

    Ties in the map are broken by a tiny fixed-seed jitter so each percentile
    removes exactly that share of pixels (a map with large flat regions would
    otherwise remove all or nothing); the imputation noise is seeded too, so a
    score is reproducible.  The global RNG is left untouched.
    """
    from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirstAverage, ROADMostRelevantFirstAverage
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    pcts = [int(p) for p in percentiles]
    if not pcts or not all(0 < p < 100 for p in pcts):
        raise ExplainError(f"ROAD percentiles must be between 1 and 99, got {list(percentiles)}")
    rng = np.random.default_rng(seed)
    jitter = rng.uniform(0, 1e-4, heatmap.shape).astype(np.float32)
    cam = np.clip(heatmap.astype(np.float32) * (1 - 1e-4) + jitter, 0, 1)[None]
    targets = [ClassifierOutputTarget(int(target))]
    with borrowed(module), torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # the metric hands torch tensors to numpy functions, which NumPy 2 flags as deprecated
        warnings.filterwarnings("ignore", message=".*__array_wrap__", category=DeprecationWarning)
        torch.manual_seed(seed)
        x = x.detach().clone()
        morf = float(ROADMostRelevantFirstAverage(pcts)(x, cam, targets, module)[0])
        lerf = float(ROADLeastRelevantFirstAverage(pcts)(x, cam, targets, module)[0])
    return RoadScore((lerf - morf) / 2.0, morf, lerf, tuple(pcts))
