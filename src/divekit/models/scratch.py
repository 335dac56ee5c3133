"""The from-scratch networks (``divekit.scratch``) as registered models the Trainer can train.

Softmax regression (course 4.4), the MLP (5.2) and the dropout MLP (5.6) compute their loss
with the hand-written cross-entropy (``returns_loss``); BN-LeNet (8.5) uses the hand-written
batch norm. Each has the same parameter count as its built-in twin.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from divekit.models.lenet import lenet_bn_with
from divekit.models.registry import register_model
from divekit.scratch.mlp import MLPScratch
from divekit.scratch.norm import BatchNorm
from divekit.scratch.softmax import SoftmaxRegression, cross_entropy


class ScratchClassifier(nn.Module):
    """Wraps a from-scratch network so it also returns the from-scratch cross-entropy.

    ``forward(X)`` gives logits; ``forward(X, targets)`` gives ``(logits, loss)``.
    """

    returns_loss = True

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, X: torch.Tensor, targets: torch.Tensor | None = None):
        logits = self.net(X)
        return logits if targets is None else (logits, cross_entropy(logits, targets))


# Each twin has exactly the parameters of its built-in model (tests/models/test_registry.py).
@register_model("softmax-regression-scratch", family="scratch",
                section="4.4 Softmax Regression Implementation from Scratch", params=7_850)
def softmax_regression_scratch(num_inputs: int = 784, num_classes: int = 10) -> nn.Module:
    """Softmax regression on raw tensors with a log-sum-exp cross-entropy."""
    return ScratchClassifier(SoftmaxRegression(num_inputs, num_classes))


@register_model("mlp-scratch", family="scratch",
                section="5.2 Implementation of Multilayer Perceptrons (from scratch)",
                params=203_530)
def mlp_scratch(num_inputs: int = 784, num_classes: int = 10) -> nn.Module:
    """784-256-10 MLP on explicit weight matrices, hand-written ReLU and cross-entropy."""
    return ScratchClassifier(MLPScratch(num_inputs, 256, num_classes))


@register_model("mlp-dropout-scratch", family="scratch", section="5.6 Dropout (from scratch)",
                params=269_322)
def mlp_dropout_scratch(num_inputs: int = 784, num_classes: int = 10) -> nn.Module:
    """784-256-256-10 MLP with hand-written dropout 0.2 / 0.5."""
    return ScratchClassifier(MLPScratch(num_inputs, (256, 256), num_classes, dropout=(0.2, 0.5)))


@register_model("lenet-bn-scratch", family="scratch",
                section="8.5 Batch Normalization (from scratch)", params=44_878)
def lenet_bn_scratch(
    num_classes: int = 10, in_channels: int = 1, image_size: int = 28
) -> nn.Module:
    """BN-LeNet whose batch norm layers are the hand-written ``divekit.scratch.norm.BatchNorm``."""
    return lenet_bn_with(partial(BatchNorm, num_dims=4), partial(BatchNorm, num_dims=2),
                         num_classes, in_channels, image_size)
