"""Model families of the course. Importing this package registers every model."""

from divekit.models import lenet, linear, mlp, scratch, smallcnn  # noqa: F401  (registration)
from divekit.models.registry import (
    MODELS,
    ModelInfo,
    count_parameters,
    create_model,
    list_models,
    model_info,
    register_model,
)

__all__ = [
    "MODELS", "ModelInfo", "count_parameters", "create_model", "list_models", "model_info",
    "register_model",
]
