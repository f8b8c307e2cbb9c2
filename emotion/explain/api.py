"""Entry points: explain a model's prediction on an image, a predictor's face, or draw a ViT's patch grid."""

from __future__ import annotations

import time
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from emotion.data.transforms import build_transform, denormalize
from emotion.explain.base import (
    EXPLAINERS,
    ExplainError,
    Explanation,
    NoFaceError,
    borrowed,
    get_explainer,
    get_explainer_name,
    unit_map,
)
from emotion.explain.faithfulness import DEFAULT_ROAD_PERCENTILES, road_score
from emotion.images import ImageInput, load_image
from emotion.models import ModelConfig
from emotion.models.registry import logits_of
from emotion.profiling import device_of


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
    x = build_transform(config.preprocess)(pixels)[None].to(device_of(module, None))
    extras: dict[str, Any] = {}
    if config.family == "ensemble":
        heatmap, target_index, probs, extras = _explain_ensemble(module, x, key, target_index, options)
        class_specific = EXPLAINERS[key].class_specific
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
