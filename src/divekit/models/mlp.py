"""Multilayer perceptrons (course chapter 5), optionally with dropout (section 5.6)."""

from __future__ import annotations

from torch import nn

from divekit.errors import DivekitError
from divekit.models.linear import init_normal
from divekit.models.registry import register_model


# Counts by formula in tests/models/test_registry.py: 784-256-10 and 784-256-256-10.
@register_model("mlp", family="mlp", section="5.2 Implementation of Multilayer Perceptrons",
                params=203_530)
def mlp(
    num_inputs: int = 784,
    num_classes: int = 10,
    hidden: tuple[int, ...] | int = 256,
    dropout: float | tuple[float, ...] = 0.0,
) -> nn.Module:
    """MLP with ReLU hidden layers (784-256-10 by default) and optional dropout after each.

    Args:
        hidden: width of each hidden layer.
        dropout: drop probability after each hidden layer (one value, or one per layer).
    """
    hidden = (hidden,) if isinstance(hidden, int) else tuple(hidden)
    dropout = (dropout,) * len(hidden) if isinstance(dropout, float | int) else tuple(dropout)
    if len(dropout) != len(hidden):
        raise DivekitError(f"{len(dropout)} dropout rates for {len(hidden)} hidden layers")
    layers: list[nn.Module] = [nn.Flatten()]
    width = num_inputs
    for size, p in zip(hidden, dropout, strict=True):
        layers += [nn.Linear(width, size), nn.ReLU()]
        if p:
            layers.append(nn.Dropout(p))
        width = size
    layers.append(nn.Linear(width, num_classes))
    model = nn.Sequential(*layers)
    model.apply(init_normal)
    return model


@register_model("mlp-dropout", family="mlp", section="5.6 Dropout", params=269_322)
def mlp_dropout(num_inputs: int = 784, num_classes: int = 10) -> nn.Module:
    """The course's dropout MLP: 784-256-256-10, dropout 0.2 then 0.5."""
    return mlp(num_inputs, num_classes, hidden=(256, 256), dropout=(0.2, 0.5))


@register_model("mlp-regression", family="mlp", section="5.7 Predicting House Prices on Kaggle",
                task="regression", input_shape=(8,), params=641)
def mlp_regression(num_inputs: int = 8, hidden: tuple[int, ...] | int = 64,
                   dropout: float | tuple[float, ...] = 0.0, num_outputs: int = 1,
                   output_bias: float = 0.0) -> nn.Module:
    """MLP regressor for tabular features: ReLU hidden layers (8-64-1 by default), one output.

    Args:
        hidden: width of each hidden layer.
        dropout: drop probability after each hidden layer (one value, or one per layer).
        output_bias: the output layer's initial bias; tabular data passes its training
            targets' mean, so training starts at the mean prediction instead of spending its
            first steps (and, with dropout, much of its capacity) on reaching it.
    """
    model = mlp(num_inputs, num_outputs, hidden=hidden, dropout=dropout)
    nn.init.constant_(model[-1].bias, output_bias)
    return model
