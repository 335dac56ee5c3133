"""Linear networks (course chapter 3-4): linear regression and softmax regression."""

from __future__ import annotations

import torch
from torch import nn

from divekit.models.registry import register_model


# Counts by formula in tests/models/test_registry.py: 2 weights + 1 bias; 784 x 10 + 10.
@register_model("linear-regression", family="linear", section="3.5 Concise Linear Regression",
                task="regression", input_shape=(2,), params=3)
def linear_regression(num_inputs: int = 2, num_outputs: int = 1) -> nn.Module:
    """Linear regression ``y = x w + b``, weights from N(0, 0.01^2), zero bias."""
    model = nn.Linear(num_inputs, num_outputs)
    nn.init.normal_(model.weight, std=0.01)
    nn.init.zeros_(model.bias)
    return model


@register_model("softmax-regression", family="linear", section="4.5 Concise Softmax Regression",
                params=7_850)
def softmax_regression(num_inputs: int = 784, num_classes: int = 10) -> nn.Module:
    """Softmax regression: flatten, one linear layer to class logits (softmax lives in the loss)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(num_inputs, num_classes))
    nn.init.normal_(model[1].weight, std=0.01)
    nn.init.zeros_(model[1].bias)
    return model


def init_normal(module: nn.Module, std: float = 0.01) -> None:
    """The course's MLP initialisation: weights N(0, std^2), biases zero."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=std)
        nn.init.zeros_(module.bias)


def init_xavier(module: nn.Module) -> None:
    """Xavier-uniform weights for linear and conv layers (the course's ``train_ch6`` init)."""
    if isinstance(module, nn.Linear | nn.Conv2d):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            with torch.no_grad():
                module.bias.zero_()
