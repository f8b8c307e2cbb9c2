"""Feature maps: activation energy of early, middle and deep layers (VGG-16's, a ViT's blocks)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from emotion.explain.base import Explainer, ExplainError, recording, unit_map, vit_reshape_transform
from emotion.models import ModelError
from emotion.models.registry import get_submodule


class FeatureMapExplainer(Explainer):
    """Activation energy (L2 norm over channels) of early, middle and deep layers.

    The deepest layer's energy is the explanation map; every layer's energy and
    its ``top_channels`` strongest channels (by mean activation) come as extras.
    ``layers`` overrides the config's ``feature_layers``.
    """

    name = "featuremaps"
    order = 60
    class_specific = False
    option_names = ("layers", "top_channels")

    def layer_names(self) -> list[str]:
        if self.options.get("layers"):
            return list(self.options["layers"])
        if self.config.feature_layers:
            return list(self.config.feature_layers)
        if self.config.family == "vit" and ".-1" in self.config.cam_target:
            blocks = self.config.cam_target.split(".-1")[0]
            depth = len(get_submodule(self.module, blocks))
            return [f"{blocks}.{i}" for i in sorted({0, depth // 2, depth - 1})]
        raise ExplainError(f"{self.config.name} names no feature layers; pass layers=[...]")

    def compute(self, x: torch.Tensor, target: int) -> tuple[np.ndarray, dict[str, Any]]:
        names = self.layer_names()
        try:
            layers = [get_submodule(self.module, n) for n in names]
        except ModelError as exc:
            raise ExplainError(str(exc)) from None
        top = int(self.options.get("top_channels", 6))
        acts: dict[int, torch.Tensor] = {}

        def save(i: int, m: nn.Module, inputs: Any, output: Any) -> None:
            out = output[0] if isinstance(output, (tuple, list)) else output
            acts[i] = out.detach().float().clone()

        with recording(layers, save), torch.no_grad():
            self.module(x)
        reshape = vit_reshape_transform(self.module) if self.config.family == "vit" else None
        energy: dict[str, np.ndarray] = {}
        channels: dict[str, list[np.ndarray]] = {}
        for i, name in enumerate(names):
            a = acts[i]
            if a.ndim == 3 and reshape is not None:
                a = reshape(a)
            if a.ndim != 4:
                raise ExplainError(f"layer {name} gives {tuple(a.shape)}, not (batch, channels, h, w) maps")
            a = a[0]
            energy[name] = unit_map(a.pow(2).sum(0).sqrt(), x.shape[-2:])
            strongest = a.flatten(1).mean(-1).topk(min(top, a.shape[0])).indices
            channels[name] = [unit_map(a[c], a.shape[-2:]) for c in strongest.tolist()]
        return energy[names[-1]], {"layers": energy, "channels": channels}
