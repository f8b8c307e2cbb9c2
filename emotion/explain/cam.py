"""Grad-CAM, Grad-CAM++, EigenCAM and (Faster) Score-CAM: pytorch-grad-cam's CAMs on the config's ``cam_target``."""

from __future__ import annotations

import functools
import threading
from typing import Any, Callable, ClassVar, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emotion.explain.base import Explainer, ExplainError, vit_reshape_transform
from emotion.models import ModelError
from emotion.models.registry import get_submodule, logits_of


class CAMExplainer(Explainer):
    """A pytorch-grad-cam method on the config's ``cam_target`` layer."""

    cam_class_name: ClassVar[str] = ""  # the pytorch_grad_cam class this method runs

    @property
    def cam_class(self) -> Any:
        import pytorch_grad_cam  # imports OpenCV: only when a CAM is made

        return getattr(pytorch_grad_cam, self.cam_class_name)

    def target_layer(self) -> nn.Module:
        if not self.config.cam_target:
            raise ExplainError(f"{self.config.name} names no layer to explain (cam_target)")
        try:
            return get_submodule(self.module, self.config.cam_target)
        except ModelError as exc:
            raise ExplainError(str(exc)) from None

    def reshape_transform(self) -> Optional[Callable]:
        return vit_reshape_transform(self.module) if self.config.family == "vit" else None

    def make_cam(self, layer: nn.Module, reshape: Optional[Callable]) -> Any:
        return self.cam_class(model=self.module, target_layers=[layer], reshape_transform=reshape)

    def compute(self, x: torch.Tensor, target: int) -> tuple[np.ndarray, dict[str, Any]]:
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        layer, reshape = self.target_layer(), self.reshape_transform()
        x = x.requires_grad_(True)  # parameters are frozen while borrowed: gradients reach the layer via x
        out = None
        with self.make_cam(layer, reshape) as cam:
            cam.activations_and_grads.release()
            cam.activations_and_grads = _ThreadActivations(self.module, [layer], reshape)
            out = cam(input_tensor=x, targets=[ClassifierOutputTarget(target)])
        if out is None:  # BaseCAM.__exit__ swallows IndexError
            raise ExplainError(f"{self.name} failed on {self.config.name} (layer {self.config.cam_target})")
        return np.asarray(out[0]), {}


@functools.lru_cache(maxsize=None)
def _thread_activations_class() -> type:
    from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients

    class ThreadActivations(ActivationsAndGradients):
        """pytorch-grad-cam's hooks, recording only the explaining thread's passes."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._owner = threading.get_ident()
            super().__init__(*args, **kwargs)

        def save_activation(self, module: nn.Module, input: Any, output: Any) -> None:
            if threading.get_ident() == self._owner:
                super().save_activation(module, input, output)

        def save_gradient(self, module: nn.Module, input: Any, output: Any) -> None:
            if threading.get_ident() == self._owner:
                super().save_gradient(module, input, output)

    return ThreadActivations


def _ThreadActivations(model: nn.Module, layers: list[nn.Module], reshape: Optional[Callable]) -> Any:
    return _thread_activations_class()(model, layers, reshape, True)


class GradCAMExplainer(CAMExplainer):
    name = "gradcam"
    order = 10
    cam_class_name = "GradCAM"


class GradCAMPlusPlusExplainer(CAMExplainer):
    name = "gradcam++"
    order = 20
    cam_class_name = "GradCAMPlusPlus"


class EigenCAMExplainer(CAMExplainer):
    name = "eigencam"
    order = 30
    class_specific = False  # first principal component of the activations, whatever the class
    cam_class_name = "EigenCAM"


class ScoreCAMExplainer(CAMExplainer):
    """Score-CAM: each channel's map masks the input; its weight is the target score that gets.

    ``max_channels`` scores only that many channels with the largest spatial
    variance (Faster Score-CAM) — the rest get weight 0; ``batch_size`` masked
    images go through the model at a time.  pytorch-grad-cam's ``ScoreCAM``
    does the rest (activation capture, weighting, scaling).
    """

    name = "scorecam"
    order = 40
    option_names = ("max_channels", "batch_size")
    cam_class_name = "ScoreCAM"

    def make_cam(self, layer: nn.Module, reshape: Optional[Callable]) -> Any:
        max_channels = self.options.get("max_channels")
        batch_size = int(self.options.get("batch_size") or 32)
        if max_channels is not None and int(max_channels) < 1:
            raise ExplainError(f"max_channels={max_channels!r} must be None (all) or at least 1")
        if batch_size < 1:
            raise ExplainError(f"batch_size={batch_size!r} must be at least 1")

        class FasterScoreCAM(self.cam_class):
            def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
                return _score_cam_weights(self.model, input_tensor, targets, activations, max_channels,
                                          batch_size)

        return FasterScoreCAM(model=self.module, target_layers=[layer], reshape_transform=reshape)


@torch.no_grad()
def _score_cam_weights(model: nn.Module, x: torch.Tensor, targets: list, activations: np.ndarray,
                       max_channels: Optional[int], batch_size: int) -> np.ndarray:
    acts = torch.from_numpy(np.asarray(activations, dtype=np.float32)).to(x.device)
    b, c = acts.shape[:2]
    up = F.interpolate(acts, size=x.shape[-2:], mode="bilinear", align_corners=False)
    flat = up.flatten(2)
    lo, hi = flat.min(-1).values[..., None, None], flat.max(-1).values[..., None, None]
    up = (up - lo) / (hi - lo + 1e-8)
    weights = np.zeros((b, c), dtype=np.float32)
    x = x.detach()
    for i in range(b):
        k = c if max_channels is None else min(c, int(max_channels))
        chosen = acts[i].flatten(1).var(-1, correction=0).topk(k).indices
        scores = []
        for start in range(0, k, batch_size):
            idx = chosen[start:start + batch_size]
            masked = x[i:i + 1] * up[i, idx][:, None]
            out = logits_of(model(masked))
            scores.extend(float(targets[i](o)) for o in out)
        weights[i, chosen.cpu().numpy()] = torch.tensor(scores).softmax(-1).numpy()
    return weights
