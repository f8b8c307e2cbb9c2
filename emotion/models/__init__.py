"""Model zoo: ``create_model(name, num_classes, pretrained=...)`` and ``list_models()``."""

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
