"""Ensembles of trained runs: averaged class probabilities, usable wherever one model is.

Members may differ in input size and normalisation, so the ensemble takes
images scaled to [0, 1] (its config has mean 0, std 1) at the largest member
size and prepares each member's input itself.  ``forward`` returns the log of
the averaged probabilities: they act as logits (softmax gives the average back),
so evaluation, prediction and explanations treat an ensemble like any model.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from emotion.models.registry import ModelConfig, ModelError


class EnsembleModel(nn.Module):
    def __init__(self, members: Sequence[nn.Module], configs: Sequence[ModelConfig],
                 weights: Optional[Sequence[float]] = None) -> None:
        super().__init__()
        if len(members) < 2:
            raise ModelError(f"an ensemble needs at least 2 runs, got {len(members)}")
        w = torch.tensor(list(weights) if weights is not None else [1.0] * len(members), dtype=torch.float32)
        if w.numel() != len(members) or (w < 0).any() or w.sum() <= 0:
            raise ModelError(f"ensemble weights {list(w.tolist())} must be {len(members)} non-negative "
                             "numbers with a positive sum")
        self.members = nn.ModuleList(members)
        self.sizes = [c.input_size for c in configs]
        for i, c in enumerate(configs):
            self.register_buffer(f"mean_{i}", torch.tensor(c.mean).view(1, 3, 1, 1), persistent=False)
            self.register_buffer(f"std_{i}", torch.tensor(c.std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("weights", w / w.sum(), persistent=False)

    def member_input(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """Member ``i``'s input (its size and normalisation) from [0, 1]-scaled images."""
        xi = x if x.shape[-1] == self.sizes[i] else F.interpolate(
            x, size=(self.sizes[i], self.sizes[i]), mode="bilinear", align_corners=False, antialias=True)
        return (xi - getattr(self, f"mean_{i}")) / getattr(self, f"std_{i}")

    def member_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """(members, batch, classes) probabilities for [0, 1]-scaled images."""
        return torch.stack([member(self.member_input(x, i)).float().softmax(-1)
                            for i, member in enumerate(self.members)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = (self.member_probabilities(x) * self.weights.view(-1, 1, 1)).sum(0)
        return avg.clamp_min(1e-12).log()


def ensemble_config(configs: Sequence[ModelConfig]) -> ModelConfig:
    return ModelConfig(
        name="ensemble", family="ensemble", input_size=max(c.input_size for c in configs),
        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
        weight_sources=("trained member runs",),
        cam_target="", description="probability average of " + ", ".join(c.name for c in configs),
    )
