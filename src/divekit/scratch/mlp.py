"""Multilayer perceptron from scratch (course 5.2), with dropout (5.6) and weight decay (3.7)."""

from __future__ import annotations

import torch

from divekit.errors import DivekitError
from divekit.scratch.activations import relu
from divekit.scratch.dropout import dropout as drop


def l2_penalty(w: torch.Tensor) -> torch.Tensor:
    """The weight-decay penalty ``sum(w^2) / 2``; its gradient is ``w`` itself."""
    return (w**2).sum() / 2


class MLPScratch:
    """An MLP on explicit weight matrices: ``H = dropout(relu(H W + b))`` per hidden layer,
    then a linear output layer producing logits.

    Args:
        num_inputs: features per example after flattening.
        num_hiddens: width of the hidden layer, or one width per hidden layer.
        num_outputs: number of outputs (classes).
        dropout: drop probability after each hidden layer (one value, or one per layer);
            applied only in training mode.
        sigma: standard deviation of the N(0, sigma^2) initial weights; biases start at 0.
        dtype: dtype of the parameters.

    Attributes:
        weights: one ``(fan_in, fan_out)`` matrix per layer.
        biases: one ``(fan_out,)`` vector per layer.
        training: whether dropout is active (see ``train`` / ``eval``).
    """

    def __init__(
        self,
        num_inputs: int,
        num_hiddens: int | tuple[int, ...],
        num_outputs: int,
        dropout: float | tuple[float, ...] = 0.0,
        sigma: float = 0.01,
        dtype: torch.dtype = torch.float32,
    ):
        hiddens = (num_hiddens,) if isinstance(num_hiddens, int) else tuple(num_hiddens)
        rates = (dropout,) * len(hiddens) if isinstance(dropout, float | int) else tuple(dropout)
        if len(rates) != len(hiddens):
            raise DivekitError(f"{len(rates)} dropout rates for {len(hiddens)} hidden layers")
        if not all(0 <= p <= 1 for p in rates):
            raise DivekitError(f"dropout probabilities must be in [0, 1], got {rates}")
        widths = (num_inputs, *hiddens, num_outputs)
        if not all(isinstance(n, int) and n > 0 for n in widths):
            raise DivekitError(f"layer widths must be positive integers, got {widths}")
        self.weights = [
            (sigma * torch.randn(fan_in, fan_out, dtype=dtype)).requires_grad_()
            for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True)
        ]
        self.biases = [torch.zeros(n, dtype=dtype, requires_grad=True) for n in widths[1:]]
        self.dropout = rates
        self.training = True

    def train(self, mode: bool = True) -> MLPScratch:
        """Switch dropout on (``mode=True``) or off; returns ``self``."""
        self.training = mode
        return self

    def eval(self) -> MLPScratch:
        """Switch dropout off for evaluation; returns ``self``."""
        return self.train(False)

    def parameters(self) -> list[torch.Tensor]:
        """The trainable tensors, layer by layer: ``[W1, b1, W2, b2, ...]``."""
        return [p for pair in zip(self.weights, self.biases, strict=True) for p in pair]

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        """Logits of a batch.

        Shape:
            X: ``(n, ...)`` with ``num_inputs`` elements per example; output: ``(n, num_outputs)``.
        """
        H = X.reshape(len(X), -1)
        if H.shape[1] != self.weights[0].shape[0]:
            raise DivekitError(
                f"expected {self.weights[0].shape[0]} features per example, got {H.shape[1]} "
                f"(input shape {tuple(X.shape)})"
            )
        for W, b, p in zip(self.weights[:-1], self.biases[:-1], self.dropout, strict=True):
            H = drop(relu(H @ W + b), p, self.training)
        return H @ self.weights[-1] + self.biases[-1]
