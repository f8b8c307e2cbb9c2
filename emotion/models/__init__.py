"""Model zoo: ``create_model(name, num_classes, pretrained=...)`` and ``list_models()``.

Like ``timm.models``, importing the package imports the module that holds the
factories, whose ``@register_model`` decorators fill the registry; the registry
itself imports no model.
"""

from emotion.models import zoo  # noqa: F401  (registers the models)
from emotion.models.registry import (
    BuiltModel,
    ModelConfig,
    ModelError,
    WeightsNotFoundError,
    count_parameters,
    create_model,
    get_model_config,
    list_models,
    register_model,
)

__all__ = [
    "BuiltModel", "ModelConfig", "ModelError", "WeightsNotFoundError", "count_parameters",
    "create_model", "get_model_config", "list_models", "register_model",
]
