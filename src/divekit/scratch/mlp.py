"""Multilayer perceptron from scratch (course 5.2), with dropout (5.6) and weight decay (3.7)."""

from __future__ import annotations

import torch
from torch import nn

from divekit.errors import DivekitError
from divekit.scratch.activations import relu
from divekit.scratch.dropout import dropout as drop


def l2_penalty(w: torch.Tensor) -> torch.Tensor:
    """The weight-decay penalty ``sum(w^2) / 2``; its gradient is ``w`` itself."""
    return (w**2).sum() / 2


class MLPScratch(nn.Module):
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
        weights: one ``(fan_in, fan_out)`` matrix per layer (parameters ``W1``, ``W2``, ...).
        biases: one ``(fan_out,)`` vector per layer (``b1``, ``b2``, ...).
        training: whether dropout is active (``train()`` / ``eval()``, as for any module).

    An ``nn.Module`` only to hold the matrices as parameters, so optimizers, ``state_dict``
    and the Trainer work with it; the forward pass is written out by hand.
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
        super().__init__()
        # Registered layer by layer (W1, b1, W2, b2, ...), the order nn.Sequential uses.
        for layer, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:], strict=True), 1):
            self.register_parameter(
                f"W{layer}", nn.Parameter(sigma * torch.randn(fan_in, fan_out, dtype=dtype)))
            self.register_parameter(f"b{layer}", nn.Parameter(torch.zeros(fan_out, dtype=dtype)))
        self.dropout = rates

    @property
    def weights(self) -> list[torch.Tensor]:
        return [p for name, p in self.named_parameters() if name.startswith("W")]

    @property
    def biases(self) -> list[torch.Tensor]:
        return [p for name, p in self.named_parameters() if name.startswith("b")]

    def forward(self, X: torch.Tensor) -> torch.Tensor:
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
