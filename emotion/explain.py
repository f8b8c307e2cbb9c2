"""Explanations: which parts of a face made the model say what it said, and how faithful that is.

Methods (:data:`METHODS`):

* ``gradcam``, ``gradcam++``, ``eigencam``, ``scorecam`` — pytorch-grad-cam's
  CAMs on the layer the model config names (``cam_target``).  On ViTs (the
  custom one and Hugging Face's) token activations are turned into maps by a
  reshape transform built from the model's own patch grid and prefix-token
  count.  ``scorecam`` can score only the ``max_channels`` most varied channels
  (Faster Score-CAM) because scoring every channel is one forward pass each.
* ``rollout`` — attention rollout for ViTs (Abnar & Zuidema, 2020): head
  fusion ``mean``/``max``/``min`` and a discard ratio for weak attentions.
* ``featuremaps`` — activation energy of early, middle and deep layers
  (``feature_layers`` of the config, e.g. VGG-16's ``features.3/15/29``; the
  first, middle and last block of a ViT) plus their strongest channels.

:func:`patch_grid` draws how a ViT cuts the face into tokens.

Every map comes back at the model's input size with values in [0, 1] and,
by default, a ROAD score (pytorch-grad-cam's metric; Rong et al., 2022): the
confidence drop when the most relevant pixels are imputed away versus the
least relevant, so methods can be compared by number, not only by eye.

Like pytorch-grad-cam's ``BaseCAM``, an :class:`Explainer` runs a fixed call
chain — borrow the model, one forward pass to pick the target class,
``compute`` (the one step each method overrides), normalise — and the
borrowing guarantees that a shared, cached model is left exactly as it was:
hooks are removed in ``with`` blocks, train/eval flags, ``requires_grad`` and
``.grad`` are restored, explanations of one model are serialised, and the
hooks record only the explaining thread so concurrent predictions on the same
model neither change nor leak into an explanation.

An ensemble is explained as the weighted average of its members' maps for
the ensemble's target class (each member explained on its own input), and its
ROAD score is measured on the ensemble itself; a method must suit every member.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn

from emotion.data.transforms import build_transform, denormalize
from emotion.images import ImageInput, load_image
from emotion.models import ModelConfig, ModelError
from emotion.models.registry import get_submodule, logits_of

logger = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("gradcam", "gradcam++", "eigencam", "scorecam", "rollout", "featuremaps")
HEAD_FUSIONS: tuple[str, ...] = ("mean", "max", "min")
DEFAULT_ROAD_PERCENTILES: tuple[int, ...] = (10, 30, 50, 70, 90)


class ExplainError(ModelError):
    """This model cannot be explained as asked (method, target class, layer or face)."""


class NoFaceError(ExplainError):
    """No face was found and explaining the whole image was not asked for."""


# --------------------------------------------------------------------------- borrowing a shared model

_LOCKS: "weakref.WeakKeyDictionary[nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def _lock_for(module: nn.Module) -> threading.RLock:
    with _LOCKS_GUARD:
        lock = _LOCKS.get(module)
        if lock is None:
            lock = _LOCKS[module] = threading.RLock()
        return lock


@contextlib.contextmanager
def borrowed(module: nn.Module) -> Iterator[nn.Module]:
    """Use a shared model for an explanation and give it back unchanged.

    Inside: eval mode, gradients enabled (even under an outer ``inference_mode``),
    parameters frozen (gradients flow to the input and activations only, so no
    ``.grad`` is written into the model).  On exit every submodule's training
    flag, every parameter's ``requires_grad`` and ``.grad`` are restored.
    Explanations of the same model are serialised by a per-model lock.
    """
    with _lock_for(module):
        modes = [(m, m.training) for m in module.modules()]
        params = list(module.parameters())
        flags = [p.requires_grad for p in params]
        grads = [p.grad for p in params]
        try:
            module.eval()
            for p in params:
                p.requires_grad_(False)
            with torch.inference_mode(False), torch.enable_grad():
                yield module
        finally:
            for p, flag, grad in zip(params, flags, grads):
                p.requires_grad_(flag)
                p.grad = grad
            for m, mode in modes:
                m.training = mode


@contextlib.contextmanager
def recording(layers: Sequence[nn.Module], fn: Callable[[int, nn.Module, Any, Any], None]) -> Iterator[None]:
    """Forward hooks calling ``fn(index, module, inputs, output)``, removed on exit.

    Only the thread that registered them records, so a concurrent prediction on
    the same model cannot slip its activations into this explanation.
    """
    owner = threading.get_ident()

    def make(i: int) -> Callable:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if threading.get_ident() == owner:
                fn(i, module, inputs, output)
        return hook

    handles = [layer.register_forward_hook(make(i)) for i, layer in enumerate(layers)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def hook_counts(module: nn.Module) -> dict[str, int]:
    """Hooks registered on ``module`` and its submodules, by kind (tests check they stay zero)."""
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return {k: sum(len(getattr(m, k, {}) or {}) for m in module.modules()) for k in kinds}


# --------------------------------------------------------------------------- maps


def unit_map(raw: Union[np.ndarray, torch.Tensor], size: Sequence[int]) -> np.ndarray:
    """A 2-D map resized (bilinear) to ``size`` = (height, width) and scaled to [0, 1].

    A constant map becomes all zeros (it ranks no pixel above another).
    """
    t = torch.as_tensor(np.asarray(raw, dtype=np.float32)).float()
    if t.ndim != 2:
        raise ExplainError(f"an explanation map must be 2-D, got shape {tuple(t.shape)}")
    t = torch.nan_to_num(t)
    if tuple(t.shape) != tuple(size):
        t = F.interpolate(t[None, None], size=tuple(int(s) for s in size), mode="bilinear",
                          align_corners=False)[0, 0]
    lo, hi = float(t.min()), float(t.max())
    t = (t - lo) / (hi - lo) if hi - lo > 1e-12 else torch.zeros_like(t)
    return t.clamp_(0.0, 1.0).numpy().astype(np.float32)


def vit_reshape_transform(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """Tokens ``(B, prefix + h*w, C)`` -> maps ``(B, C, h, w)`` from the model's own grid and prefix count."""
    grid = getattr(module, "grid", None)
    prefix = getattr(module, "num_prefix_tokens", None)
    if grid is None or prefix is None:
        raise ExplainError(f"{type(module).__name__} does not say its patch grid and prefix tokens "
                           "(attributes grid and num_prefix_tokens)")
    h, w = int(grid[0]), int(grid[1])
    prefix = int(prefix)

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        if isinstance(tokens, (tuple, list)):
            tokens = tokens[0]
        if tokens.ndim != 3 or tokens.shape[1] != prefix + h * w:
            raise ExplainError(f"expected tokens of shape (batch, {prefix} + {h}x{w}, channels), got "
                               f"{tuple(tokens.shape)}; is the input the model's own size?")
        return tokens[:, prefix:].reshape(tokens.shape[0], h, w, tokens.shape[2]).permute(0, 3, 1, 2)

    return reshape


# --------------------------------------------------------------------------- results


@dataclass
class RoadScore:
    """ROAD (Remove And Debias): confidence change of the target class as pixels are imputed away.

    ``morf``: mean change removing the most relevant pixels first (more negative
    is better); ``lerf``: removing the least relevant first (closer to zero or
    positive is better); ``combined = (lerf - morf) / 2``: higher is more faithful.
    """

    combined: float
    morf: float
    lerf: float
    percentiles: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"combined": round(self.combined, 5), "morf": round(self.morf, 5), "lerf": round(self.lerf, 5),
                "percentiles": list(self.percentiles)}


@dataclass
class Explanation:
    """One explanation map of one image for one class."""

    method: str
    heatmap: np.ndarray  # (H, W) float32 in [0, 1], H x W = the model's input size
    image: np.ndarray  # (H, W, 3) uint8: what the model saw
    target: int
    labels: list[str]
    probabilities: np.ndarray
    class_specific: bool  # False: the map is the same whatever the target (eigencam, rollout, featuremaps)
    road: Optional[RoadScore] = None
    layers: dict[str, np.ndarray] = field(default_factory=dict)  # featuremaps: energy per layer, input size
    channels: dict[str, list[np.ndarray]] = field(default_factory=dict)  # featuremaps: strongest channels
    members: list[str] = field(default_factory=list)  # ensemble: models whose maps were averaged
    options: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    face: Any = None  # the emotion.faces.Face explained (explain_face), None for a whole image
    face_index: Optional[int] = None

    @property
    def target_label(self) -> str:
        return self.labels[self.target]

    @property
    def predicted(self) -> int:
        return int(np.argmax(self.probabilities))

    def overlay(self, size: Optional[int] = None, image_weight: float = 0.5) -> Image.Image:
        """The heatmap (jet colours) over the model's view, ``size`` pixels square (default >= 224)."""
        from pytorch_grad_cam.utils.image import show_cam_on_image

        side = size or max(224, self.image.shape[0])
        img = np.asarray(Image.fromarray(self.image).resize((side, side), Image.Resampling.BICUBIC),
                         dtype=np.float32) / 255.0
        heat = unit_map(self.heatmap, (side, side)) if self.heatmap.max() > 0 else np.zeros((side, side),
                                                                                           np.float32)
        return Image.fromarray(show_cam_on_image(img, heat, use_rgb=True, image_weight=image_weight))

    def figure(self, size: int = 224) -> Image.Image:
        """What the CLI saves: the face and the overlay side by side (featuremaps: one row per layer)."""
        face = Image.fromarray(self.image).resize((size, size), Image.Resampling.BICUBIC)
        if not self.layers:
            out = Image.new("RGB", (2 * size, size), (255, 255, 255))
            out.paste(face, (0, 0))
            out.paste(self.overlay(size), (size, 0))
            return out
        # one row per layer: face, energy overlay, then the strongest channels (own resolution)
        small, text = size // 2, 14
        cols = 2 + max((len(c) for c in self.channels.values()), default=0)
        out = Image.new("RGB", (cols * small, (small + text) * len(self.layers)), (255, 255, 255))
        draw = ImageDraw.Draw(out)
        face = face.resize((small, small), Image.Resampling.BICUBIC)
        for row, (name, energy) in enumerate(self.layers.items()):
            y = row * (small + text)
            out.paste(face, (0, y))
            tile = Explanation(self.method, energy, self.image, self.target, self.labels, self.probabilities,
                               False).overlay(small)
            out.paste(tile, (small, y))
            for j, ch in enumerate(self.channels.get(name, [])):
                out.paste(_colorize(ch, small), ((j + 2) * small, y))
            draw.text((2, y + small + 1), f"{name}: energy, then the strongest channels", fill=(0, 0, 0))
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON summary (no pixel arrays)."""
        d: dict[str, Any] = {
            "method": self.method, "target": self.target, "target_label": self.target_label,
            "predicted_label": self.labels[self.predicted], "class_specific": self.class_specific,
            "probabilities": {n: round(float(p), 5) for n, p in zip(self.labels, self.probabilities)},
            "map_size": list(self.heatmap.shape), "road": self.road.to_dict() if self.road else None,
            "seconds": round(self.seconds, 3), "options": dict(self.options),
        }
        if self.layers:
            d["layers"] = list(self.layers)
        if self.members:
            d["members"] = list(self.members)
        if self.face is not None:
            d["face"] = self.face.to_dict()
            d["face_index"] = self.face_index
        return d


def _colorize(values: np.ndarray, size: int) -> Image.Image:
    import cv2

    m = unit_map(values, (size, size))
    return Image.fromarray(cv2.cvtColor(cv2.applyColorMap(np.uint8(255 * m), cv2.COLORMAP_VIRIDIS),
                                        cv2.COLOR_BGR2RGB))


# --------------------------------------------------------------------------- explainers


class Explainer:
    """Fixed chain: borrow the model, forward once for the target, :meth:`compute`, normalise.

    Subclasses set ``name`` (and ``class_specific``/``families``) and override
    :meth:`compute` only.
    """

    name: ClassVar[str] = ""
    class_specific: ClassVar[bool] = True
    families: ClassVar[tuple[str, ...]] = ("cnn", "vit")
    option_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, module: nn.Module, config: ModelConfig, **options: Any) -> None:
        if config.family not in self.families:
            raise ExplainError(f"{self.name} does not apply to {config.name} ({config.family}); it suits "
                               f"{' and '.join(self.families)} models. Methods for {config.name}: "
                               f"{', '.join(available_methods(config))}")
        unknown = sorted(set(options) - set(self.option_names))
        if unknown:
            raise ExplainError(f"{self.name} has no option(s) {unknown}; valid: {list(self.option_names)}")
        self.module = module
        self.config = config
        self.options = options

    def __call__(self, x: torch.Tensor, target: Optional[int] = None
                 ) -> tuple[np.ndarray, int, np.ndarray, dict[str, Any]]:
        """(map in [0, 1] at the input size, target class, probabilities, extras) for a 1-image batch."""
        if x.ndim != 4 or x.shape[0] != 1:
            raise ExplainError(f"explain one image at a time: expected a (1, 3, H, W) tensor, "
                               f"got {tuple(x.shape)}")
        with borrowed(self.module):
            x = x.detach().clone()
            with torch.no_grad():
                probs = logits_of(self.module(x)).float().softmax(-1)[0].cpu().numpy().astype(np.float64)
            target = int(probs.argmax()) if target is None else int(target)
            if not 0 <= target < probs.shape[0]:
                raise ExplainError(f"target class {target} is out of range for {probs.shape[0]} classes")
            raw, extras = self.compute(x, target)
        return unit_map(raw, x.shape[-2:]), target, probs, extras

    def compute(self, x: torch.Tensor, target: int) -> tuple[np.ndarray, dict[str, Any]]:
        """The raw 2-D map (any resolution, any scale) for ``target``; the one step methods override."""
        raise NotImplementedError


class CAMExplainer(Explainer):
    """A pytorch-grad-cam method on the config's ``cam_target`` layer."""

    cam_class: ClassVar[Callable[..., Any]]

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

    @property
    def cam_class(self) -> Any:  # type: ignore[override]
        from pytorch_grad_cam import GradCAM

        return GradCAM


class GradCAMPlusPlusExplainer(CAMExplainer):
    name = "gradcam++"

    @property
    def cam_class(self) -> Any:  # type: ignore[override]
        from pytorch_grad_cam import GradCAMPlusPlus

        return GradCAMPlusPlus


class EigenCAMExplainer(CAMExplainer):
    name = "eigencam"
    class_specific = False  # first principal component of the activations, whatever the class

    @property
    def cam_class(self) -> Any:  # type: ignore[override]
        from pytorch_grad_cam import EigenCAM

        return EigenCAM


class ScoreCAMExplainer(CAMExplainer):
    """Score-CAM: each channel's map masks the input; its weight is the target score that gets.

    ``max_channels`` scores only that many channels with the largest spatial
    variance (Faster Score-CAM) — the rest get weight 0; ``batch_size`` masked
    images go through the model at a time.  pytorch-grad-cam's ``ScoreCAM``
    does the rest (activation capture, weighting, scaling).
    """

    name = "scorecam"
    option_names = ("max_channels", "batch_size")

    def make_cam(self, layer: nn.Module, reshape: Optional[Callable]) -> Any:
        from pytorch_grad_cam import ScoreCAM

        max_channels = self.options.get("max_channels")
        batch_size = int(self.options.get("batch_size") or 32)
        if max_channels is not None and int(max_channels) < 1:
            raise ExplainError(f"max_channels={max_channels!r} must be None (all) or at least 1")
        if batch_size < 1:
            raise ExplainError(f"batch_size={batch_size!r} must be at least 1")

        class FasterScoreCAM(ScoreCAM):
            def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):  # noqa: ANN
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


class RolloutExplainer(Explainer):
    """Attention rollout: multiply (attention + identity) over the blocks; read the class token's row.

    Heads are fused with ``head_fusion`` (mean, max or min); in each block the
    weakest ``discard_ratio`` of attention weights are zeroed (not the class
    token's own), which sharpens the map.  Class-agnostic by construction.
    """

    name = "rollout"
    class_specific = False
    families = ("vit",)
    option_names = ("head_fusion", "discard_ratio")

    def compute(self, x: torch.Tensor, target: int) -> tuple[np.ndarray, dict[str, Any]]:
        fusion = self.options.get("head_fusion", "mean")
        discard = float(self.options.get("discard_ratio", 0.9))
        if fusion not in HEAD_FUSIONS:
            raise ExplainError(f"head_fusion={fusion!r} is not one of {list(HEAD_FUSIONS)}")
        if not 0.0 <= discard < 1.0:
            raise ExplainError(f"discard_ratio={discard!r} must be in [0, 1)")
        attentions = attention_maps(self.module, x)
        prefix = int(self.module.num_prefix_tokens)
        h, w = (int(v) for v in self.module.grid)
        mask = attention_rollout(attentions, fusion, discard, prefix)
        if mask.numel() != h * w:
            raise ExplainError(f"rollout gave {mask.numel()} patch weights for a {h}x{w} grid")
        return mask.reshape(h, w).numpy(), {}


def attention_maps(module: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Attention probabilities ``(B, heads, N, N)`` of every block, in order, for input ``x``."""
    from emotion.models.vit import VisionTransformer
    from emotion.models.zoo import HFViTClassifier

    probs: dict[int, torch.Tensor] = {}
    if isinstance(module, VisionTransformer):
        layers = [b.attn.attn_drop for b in module.blocks]  # hooking it switches on the explicit path

        def save(i: int, m: nn.Module, inputs: Any, output: Any) -> None:
            probs[i] = output.detach()
    elif isinstance(module, HFViTClassifier):
        layers = [layer.attention for layer in module.blocks]

        def save(i: int, m: nn.Module, inputs: Any, output: Any) -> None:
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            probs[i] = (weights if weights is not None else _hf_attention_probs(m, inputs[0])).detach()
    else:
        raise ExplainError(f"attention rollout needs vit_custom or hf_vit, not {type(module).__name__}")
    with recording(layers, save), torch.no_grad():
        module(x)
    if len(probs) != len(layers):
        raise ExplainError(f"recorded attention of {len(probs)} of {len(layers)} blocks")
    return [probs[i] for i in range(len(layers))]


def _hf_attention_probs(attn: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """softmax(QK^T / sqrt(d)) of a Hugging Face ViT attention module (its fused kernels return none)."""
    if hasattr(attn, "q_proj"):  # transformers >= 5
        q_proj, k_proj, head_dim, scale = attn.q_proj, attn.k_proj, attn.head_dim, attn.scaling
    else:  # transformers 4.x: ViTAttention.attention is ViTSelfAttention
        sa = attn.attention
        q_proj, k_proj, head_dim = sa.query, sa.key, sa.attention_head_size
        scale = head_dim ** -0.5
    b, n, _ = hidden.shape
    q = q_proj(hidden).view(b, n, -1, head_dim).transpose(1, 2)
    k = k_proj(hidden).view(b, n, -1, head_dim).transpose(1, 2)
    return (q @ k.transpose(-1, -2) * scale).float().softmax(-1)


def attention_rollout(attentions: Sequence[torch.Tensor], head_fusion: str = "mean",
                      discard_ratio: float = 0.9, prefix_tokens: int = 1) -> torch.Tensor:
    """Patch weights (flat, first image of the batch) from per-block attention probabilities."""
    n = attentions[0].shape[-1]
    result = torch.eye(n)
    for attn in attentions:
        a = attn[0].float().cpu()  # (heads, N, N)
        fused = {"mean": a.mean(0), "max": a.max(0).values, "min": a.min(0).values}[head_fusion]
        flat = fused.flatten().clone()
        drop = int(flat.numel() * discard_ratio)
        if drop:
            idx = flat.topk(drop, largest=False).indices
            flat[idx[idx != 0]] = 0.0  # never drop the class token's attention to itself
        fused = flat.view(n, n)
        a = (fused + torch.eye(n)) / 2.0
        a = a / a.sum(-1, keepdim=True)
        result = a @ result
    return result[0, prefix_tokens:]


class FeatureMapExplainer(Explainer):
    """Activation energy (L2 norm over channels) of early, middle and deep layers.

    The deepest layer's energy is the explanation map; every layer's energy and
    its ``top_channels`` strongest channels (by mean activation) come as extras.
    ``layers`` overrides the config's ``feature_layers``.
    """

    name = "featuremaps"
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


_EXPLAINERS: dict[str, type[Explainer]] = {
    cls.name: cls for cls in (GradCAMExplainer, GradCAMPlusPlusExplainer, EigenCAMExplainer,
                              ScoreCAMExplainer, RolloutExplainer, FeatureMapExplainer)
}
assert tuple(_EXPLAINERS) == METHODS


def available_methods(config: ModelConfig) -> list[str]:
    """The methods that apply to a model family (ensembles: those of their members)."""
    if config.family == "ensemble":  # rollout only when every member is a ViT
        return [m for m in METHODS if m != "rollout"]
    return [m for m in METHODS if config.family in _EXPLAINERS[m].families]


_ALIASES = {"gradcampp": "gradcam++", "gradcamplusplus": "gradcam++", "gradcam+": "gradcam++",
            "attentionrollout": "rollout", "features": "featuremaps"}


def get_explainer_name(method: str) -> str:
    """The canonical method name (``GradCAM++``, ``gradcam_pp``, ``gradcam-plusplus``: ``gradcam++``)."""
    key = str(method).lower().replace("_", "").replace("-", "").replace(" ", "")
    key = _ALIASES.get(key, key)
    if key not in _EXPLAINERS:
        raise ExplainError(f"unknown explanation method {method!r}; choose one of {list(METHODS)}")
    return key


def get_explainer(method: str, module: nn.Module, config: ModelConfig, **options: Any) -> Explainer:
    """The explainer of ``method`` for one (non-ensemble) model."""
    return _EXPLAINERS[get_explainer_name(method)](module, config, **options)


# --------------------------------------------------------------------------- ROAD


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


# --------------------------------------------------------------------------- entry points


def _unpack(model: Any, config: Optional[ModelConfig], labels: Optional[Sequence[str]]
            ) -> tuple[nn.Module, ModelConfig, list[str]]:
    """A module with its config and labels from a Predictor, a LoadedRun or a bare module."""
    if hasattr(model, "model_config") and hasattr(model, "module"):  # Predictor
        return model.module, config or model.model_config, list(labels or model.labels)
    if hasattr(model, "config") and hasattr(model, "module") and hasattr(model, "labels"):  # LoadedRun
        return model.module, config or model.config, list(labels or model.labels)
    if not isinstance(model, nn.Module):
        raise ExplainError(f"cannot explain a {type(model).__name__}; pass a Predictor, LoadedRun or module")
    config = config or getattr(model, "emotion_config", None)
    if config is None:
        raise ExplainError("a bare module needs config= (its ModelConfig)")
    if labels is None:
        raise ExplainError("a bare module needs labels= (its class names)")
    return model, config, list(labels)


def _resolve_target(target: Union[int, str, None], labels: Sequence[str]) -> Optional[int]:
    if target is None:
        return None
    if isinstance(target, str) and not target.lstrip("-").isdigit():
        lowered = [name.lower() for name in labels]
        if target.lower() not in lowered:
            raise ExplainError(f"unknown class {target!r}; this model's classes: {list(labels)}")
        return lowered.index(target.lower())
    index = int(target)
    if not 0 <= index < len(labels):
        raise ExplainError(f"class index {index} out of range; this model has {len(labels)} classes "
                           f"{list(labels)}")
    return index


def explain(model: Any, image: ImageInput, method: str = "gradcam", *, target: Union[int, str, None] = None,
            config: Optional[ModelConfig] = None, labels: Optional[Sequence[str]] = None, road: bool = True,
            road_percentiles: Sequence[int] = DEFAULT_ROAD_PERCENTILES, **options: Any) -> Explanation:
    """Explain the model's view of ``image`` (resized to its input size) with ``method``.

    ``model``: a :class:`~emotion.inference.Predictor`, a
    :class:`~emotion.runs.LoadedRun` or a module (then give ``config`` and
    ``labels``).  ``target``: class index or name; default the predicted class.
    ``options`` go to the method (e.g. ``head_fusion``/``discard_ratio`` for
    rollout, ``max_channels``/``batch_size`` for scorecam, ``layers``/
    ``top_channels`` for featuremaps).  ``image`` is classified whole: pass a
    face crop, or use :func:`explain_face` to detect and crop first.
    """
    start = time.perf_counter()
    module, config, labels = _unpack(model, config, labels)
    key = get_explainer_name(method)
    target_index = _resolve_target(target, labels)
    pixels = np.asarray(load_image(image), dtype=np.uint8)
    x = build_transform(config.preprocess)(pixels)[None].to(_device(module))
    extras: dict[str, Any] = {}
    if config.family == "ensemble":
        heatmap, target_index, probs, extras = _explain_ensemble(module, x, key, target_index, options)
        class_specific = _EXPLAINERS[key].class_specific
    else:
        explainer = get_explainer(key, module, config, **options)
        heatmap, target_index, probs, extras = explainer(x, target_index)
        class_specific = explainer.class_specific
    score = road_score(module, x, heatmap, target_index, road_percentiles) if road else None
    return Explanation(
        method=key, heatmap=heatmap, image=denormalize(x[0], config.preprocess), target=target_index,
        labels=labels, probabilities=probs, class_specific=class_specific, road=score,
        layers=extras.get("layers", {}), channels=extras.get("channels", {}),
        members=extras.get("members", []),
        options=dict(options), seconds=time.perf_counter() - start,
    )


def _device(module: nn.Module) -> torch.device:
    try:
        return next(module.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _explain_ensemble(module: nn.Module, x: torch.Tensor, method: str, target: Optional[int],
                      options: dict[str, Any]) -> tuple[np.ndarray, int, np.ndarray, dict[str, Any]]:
    """Weighted average of the members' maps for the ensemble's target class."""
    members = list(getattr(module, "members", []))
    configs = [getattr(m, "emotion_config", None) for m in members]
    if not members or any(c is None for c in configs):
        raise ExplainError("this ensemble does not record its members' configs; explain a member run instead")
    explainers = [get_explainer(method, m, c, **options) for m, c in zip(members, configs)]
    size = x.shape[-2:]
    with borrowed(module):
        x = x.detach().clone()
        with torch.no_grad():
            probs = logits_of(module(x)).float().softmax(-1)[0].cpu().numpy().astype(np.float64)
        target = int(probs.argmax()) if target is None else int(target)
        total = np.zeros(tuple(size), dtype=np.float64)
        for i, explainer in enumerate(explainers):
            xi = module.member_input(x, i)
            heat, _, _, _ = explainer(xi, target)
            total += float(module.weights[i]) * unit_map(heat, size)
    return unit_map(total, size), target, probs, {"members": [c.name for c in configs]}


def explain_face(predictor: Any, image: ImageInput, method: str = "gradcam", *, face: Optional[int] = None,
                 whole_image: Optional[bool] = None, target: Union[int, str, None] = None, road: bool = True,
                 **options: Any) -> Explanation:
    """Detect faces with ``predictor``, crop one as prediction does, and explain it.

    ``face`` picks a face by its left-to-right index (default: the largest).
    With no face found, the whole image is explained only when ``whole_image``
    (default: the predictor's setting); otherwise :class:`NoFaceError`.
    """
    img = load_image(image)
    faces = predictor.detect(img)
    whole = predictor.config.whole_image if whole_image is None else whole_image
    chosen, index = None, None
    if faces:
        index = face if face is not None else max(range(len(faces)), key=lambda i: faces[i].area)
        if not 0 <= index < len(faces):
            raise ExplainError(f"face {index} asked for, but {len(faces)} face(s) found (numbered from 0, "
                               "left to right)")
        chosen = faces[index]
    elif not whole:
        raise NoFaceError("no face found in the image; explain the whole image instead with whole_image=True "
                          "(--whole-image), e.g. for tight face crops")
    crop = predictor.crop(img, chosen)
    result = explain(predictor, crop, method, target=target, road=road, **options)
    result.face, result.face_index = chosen, index
    return result


def patch_grid(model: Any, image: ImageInput, cell: int = 24, config: Optional[ModelConfig] = None
               ) -> tuple[Image.Image, dict[str, Any]]:
    """How a ViT tokenises the face: its view of ``image`` with the patch grid drawn and numbered.

    Returns the picture (each patch ``cell`` pixels) and a description: grid,
    patch size in input pixels, prefix tokens and sequence length.
    """
    module, config, _ = _unpack(model, config, labels=[""] if isinstance(model, nn.Module) else None)
    grid, prefix = getattr(module, "grid", None), getattr(module, "num_prefix_tokens", None)
    if config.family != "vit" or grid is None or prefix is None:
        raise ExplainError(f"{config.name} is not a vision transformer: it has no patch grid to show")
    h, w = int(grid[0]), int(grid[1])
    x = build_transform(config.preprocess)(np.asarray(load_image(image), dtype=np.uint8))
    view = Image.fromarray(denormalize(x, config.preprocess))
    out = view.resize((w * cell, h * cell), Image.Resampling.NEAREST if cell * w > 4 * view.width
                      else Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(out)
    for i in range(1, w):
        draw.line([(i * cell, 0), (i * cell, h * cell)], fill=(255, 255, 0), width=1)
    for j in range(1, h):
        draw.line([(0, j * cell), (w * cell, j * cell)], fill=(255, 255, 0), width=1)
    if cell >= 16:
        for j in range(h):
            for i in range(w):
                draw.text((i * cell + 2, j * cell + 1), str(prefix + j * w + i), fill=(255, 255, 0))
    info = {"grid": [h, w], "patch_pixels": [config.input_size // h, config.input_size // w],
            "prefix_tokens": prefix, "tokens": prefix + h * w, "input_size": config.input_size}
    return out, info
