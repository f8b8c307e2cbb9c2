"""Explanations: which parts of a face made the model say what it said, and how faithful that is.

Methods (:data:`METHODS`; one module each, below this package):

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

from emotion.explain.api import explain, explain_face, patch_grid
from emotion.explain.base import (
    EXPLAINERS,
    Explainer,
    ExplainError,
    Explanation,
    NoFaceError,
    RoadScore,
    available_methods,
    borrowed,
    get_explainer,
    get_explainer_name,
    hook_counts,
    method_names,
    recording,
    unit_map,
    vit_reshape_transform,
)
from emotion.explain.cam import (  # importing a method's module registers the method
    EigenCAMExplainer,
    GradCAMExplainer,
    GradCAMPlusPlusExplainer,
    ScoreCAMExplainer,
)
from emotion.explain.faithfulness import DEFAULT_ROAD_PERCENTILES, road_score
from emotion.explain.feature_maps import FeatureMapExplainer
from emotion.explain.rollout import HEAD_FUSIONS, RolloutExplainer, attention_maps, attention_rollout

METHODS: tuple[str, ...] = method_names()  # gradcam, gradcam++, eigencam, scorecam, rollout, featuremaps

__all__ = [
    "DEFAULT_ROAD_PERCENTILES", "EXPLAINERS", "HEAD_FUSIONS", "METHODS", "EigenCAMExplainer", "ExplainError",
    "Explainer", "FeatureMapExplainer", "GradCAMExplainer", "GradCAMPlusPlusExplainer", "RolloutExplainer",
    "ScoreCAMExplainer",
    "Explanation", "NoFaceError", "RoadScore", "attention_maps", "attention_rollout", "available_methods",
    "borrowed", "explain", "explain_face", "get_explainer", "get_explainer_name", "hook_counts", "method_names", "patch_grid",
    "recording", "road_score", "unit_map", "vit_reshape_transform",
]
