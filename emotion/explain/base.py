"""The fixed call chain every explanation method shares, its results, and the method registry.

Like pytorch-grad-cam's ``BaseCAM``: :class:`Explainer` borrows the model, runs one
forward pass to pick the target class, calls :meth:`Explainer.compute` (the one step
a method overrides) and normalises.  A method is added by defining a subclass with
a ``name`` in a module that :mod:`emotion.explain` imports: defining it registers it.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn

from emotion.models import ModelConfig, ModelError
from emotion.models.registry import logits_of


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


# --------------------------------------------------------------------------- explainers and their registry

EXPLAINERS: dict[str, type["Explainer"]] = {}  # method name -> class, in the order the classes are defined


class Explainer:
    """Fixed chain: borrow the model, forward once for the target, :meth:`compute`, normalise.

    Subclasses set ``name`` (and ``class_specific``/``families``) and override
    :meth:`compute` only.
    """

    name: ClassVar[str] = ""
    class_specific: ClassVar[bool] = True
    families: ClassVar[tuple[str, ...]] = ("cnn", "vit")
    option_names: ClassVar[tuple[str, ...]] = ()
    order: ClassVar[int] = 100  # place in menus and listings (lower first)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:  # a concrete method: defining the class is registering it (intermediate bases have no name)
            if cls.name in EXPLAINERS:
                raise ExplainError(f"explanation method {cls.name!r} is defined twice")
            EXPLAINERS[cls.name] = cls

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


def method_names() -> tuple[str, ...]:
    """Every registered method, in menu order (:attr:`Explainer.order`, whatever order modules load in)."""
    return tuple(sorted(EXPLAINERS, key=lambda name: EXPLAINERS[name].order))


def available_methods(config: ModelConfig) -> list[str]:
    """The methods that apply to a model family (ensembles: those of their members)."""
    if config.family == "ensemble":  # rollout only when every member is a ViT
        return [m for m in method_names() if m != "rollout"]
    return [m for m in method_names() if config.family in EXPLAINERS[m].families]


_ALIASES = {"gradcampp": "gradcam++", "gradcamplusplus": "gradcam++", "gradcam+": "gradcam++",
            "attentionrollout": "rollout", "features": "featuremaps"}


def get_explainer_name(method: str) -> str:
    """The canonical method name (``GradCAM++``, ``gradcam_pp``, ``gradcam-plusplus``: ``gradcam++``)."""
    key = str(method).lower().replace("_", "").replace("-", "").replace(" ", "")
    key = _ALIASES.get(key, key)
    if key not in EXPLAINERS:
        raise ExplainError(f"unknown explanation method {method!r}; choose one of {list(method_names())}")
    return key


def get_explainer(method: str, module: nn.Module, config: ModelConfig, **options: Any) -> Explainer:
    """The explainer of ``method`` for one (non-ensemble) model."""
    return EXPLAINERS[get_explainer_name(method)](module, config, **options)
