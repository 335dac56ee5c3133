"""Model families of the course. Importing this package registers every model."""

from divekit.models import (  # noqa: F401  (registration)
    alexnet,
    bert,
    densenet,
    fcn,
    googlenet,
    lenet,
    linear,
    mlp,
    nin,
    rcnn,
    resnet,
    rnn,
    scratch,
    seq2seq,
    smallcnn,
    ssd,
    transformer,
    vgg,
    yolo,
)
from divekit.models.registry import (
    MODELS,
    ModelInfo,
    count_parameters,
    create_model,
    list_models,
    model_info,
    register_model,
)
from divekit.models.summary import Summary, summarize, summary_for

__all__ = [
    "MODELS", "ModelInfo", "Summary", "count_parameters", "create_model", "list_models",
    "model_info", "register_model", "summarize", "summary_for",
]
