"""Builders' guide (course chapter 6): modules, parameters, initialisation, custom layers, file I/O.

Written by hand: a ``Sequential`` container, a linear layer with its own parameters, parameter
access by name, the course's initialisers (normal, constant, Xavier, its custom init) and saving
and loading parameters with safetensors.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from torch import nn

from divekit.errors import DivekitError


class Sequential(nn.Module):
    """Run modules one after another, each on the previous one's output.

    Args:
        modules: the layers, in order; they are registered as children ``"0"``, ``"1"``, ... so
            their parameters show up in ``parameters()`` and ``state_dict()``.
    """

    def __init__(self, *modules: nn.Module) -> None:
        super().__init__()
        for i, module in enumerate(modules):
            if not isinstance(module, nn.Module):
                raise DivekitError(f"Sequential takes nn.Module objects; argument {i} is "
                                   f"a {type(module).__name__}")
            self.add_module(str(i), module)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        # _modules, not children(): children() lists a module used twice (tied) only once.
        for module in self._modules.values():
            X = module(X)
        return X


class LinearScratch(nn.Module):
    """A fully connected layer with its own parameters: ``X @ W + b``.

    Args:
        in_features: inputs per example.
        out_features: outputs per example.

    Shape:
        X: ``(..., in_features)``; W: ``(in_features, out_features)``; b: ``(out_features,)``;
        output: ``(..., out_features)``. W starts from N(0, 0.01^2), b from zero.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DivekitError(f"{name} must be a positive integer, got {value!r}")
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(0.01 * torch.randn(in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        if X.ndim == 0 or X.shape[-1] != self.in_features:
            raise DivekitError(f"LinearScratch expects inputs of shape (..., {self.in_features}), "
                               f"got {tuple(X.shape)}")
        return X @ self.weight + self.bias


def named_parameter_table(module: nn.Module) -> list[tuple[str, tuple[int, ...], int]]:
    """Every parameter of ``module`` by name, with its shape and element count.

    A parameter shared by several layers (tied) is listed once, under its first name.

    Returns:
        ``[(name, shape, numel), ...]`` in registration order, e.g. ``("0.weight", (8, 4), 32)``.
    """
    return [(name, tuple(p.shape), p.numel()) for name, p in module.named_parameters()]


# ----------------------------------------------------------------------------- initialisation
_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, LinearScratch)


def _layers(module: nn.Module) -> list[nn.Module]:
    """The Linear and Conv layers inside ``module`` (itself included), each once."""
    return [m for m in module.modules() if isinstance(m, _LAYERS)]


def _fans(layer: nn.Module) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a layer's weight, as PyTorch computes them.

    torch's layers store W as ``(out, in, *kernel)``: each input and output channel counts once
    per kernel position. LinearScratch stores W as ``(in, out)``.
    """
    shape = layer.weight.shape
    if isinstance(layer, LinearScratch):
        return shape[0], shape[1]
    receptive_field = math.prod(shape[2:])
    return shape[1] * receptive_field, shape[0] * receptive_field


@torch.no_grad()
def _set(layer: nn.Module, weight: torch.Tensor) -> None:
    """Overwrite the layer's weight in place and zero its bias."""
    layer.weight.copy_(weight)
    if layer.bias is not None:
        layer.bias.zero_()


def _uniform(shape: torch.Size, a: float, generator: torch.Generator | None) -> torch.Tensor:
    """Samples from U(-a, a)."""
    return (2 * torch.rand(shape, generator=generator, dtype=torch.float64) - 1) * a


def init_normal(module: nn.Module, std: float = 0.01,
                generator: torch.Generator | None = None) -> int:
    """Weights from N(0, std^2) and zero biases in every Linear/Conv layer of ``module``.

    Args:
        module: a layer or a network; changed in place.
        std: standard deviation of the weights.
        generator: source of randomness (default: torch's global generator).

    Returns:
        the number of layers initialised.
    """
    layers = _layers(module)
    for layer in layers:
        _set(layer, std * torch.randn(layer.weight.shape, generator=generator,
                                      dtype=torch.float64))
    return len(layers)


def init_constant(module: nn.Module, value: float) -> int:
    """Every weight set to ``value`` and zero biases in every Linear/Conv layer of ``module``.

    Constant weights make all units of a layer compute the same thing and receive the same
    gradient, so they never become different: a lesson, not a way to train.

    Returns:
        the number of layers initialised.
    """
    layers = _layers(module)
    for layer in layers:
        _set(layer, torch.full_like(layer.weight, value))
    return len(layers)


def init_xavier_uniform(module: nn.Module, generator: torch.Generator | None = None) -> int:
    """Xavier (Glorot & Bengio, 2010) uniform weights and zero biases in every Linear/Conv layer.

    Weights come from U(-a, a) with ``a = sqrt(6 / (fan_in + fan_out))``, so their variance
    ``a^2 / 3 = 2 / (fan_in + fan_out)`` keeps the scale of activations and of gradients
    roughly the same from layer to layer.

    Returns:
        the number of layers initialised.
    """
    layers = _layers(module)
    for layer in layers:
        fan_in, fan_out = _fans(layer)
        _set(layer, _uniform(layer.weight.shape, math.sqrt(6 / (fan_in + fan_out)), generator))
    return len(layers)


def init_custom(module: nn.Module, generator: torch.Generator | None = None) -> int:
    """The course's custom init: weights from U(-10, 10) with every ``|w| < 5`` set to zero.

    Each weight is therefore 0 with probability 1/2 and otherwise uniform on
    ``[-10, -5] ∪ [5, 10]``; biases are zero.

    Returns:
        the number of layers initialised.
    """
    layers = _layers(module)
    for layer in layers:
        weight = _uniform(layer.weight.shape, 10.0, generator)
        _set(layer, weight * (weight.abs() >= 5))
    return len(layers)


# ----------------------------------------------------------------------------- file I/O
def save_parameters(module: nn.Module, path: str | Path) -> None:
    """Write the parameters and buffers of ``module`` to a safetensors file.

    The file is written under a temporary name in the same folder and then renamed over
    ``path``, so a crash never leaves a half-written file there. Keys are those of
    ``module.state_dict()``; a tensor shared by several layers (tied) is stored under each name.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise DivekitError(f"cannot save parameters to {path}: folder {path.parent} does not exist")
    # safetensors wants contiguous CPU tensors that share no memory with each other.
    tensors = {name: t.cpu().clone().contiguous() for name, t in module.state_dict().items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        safetensors.torch.save_file(tensors, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())  # the data is on disk before the rename makes it visible
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_parameters(module: nn.Module, path: str | Path) -> None:
    """Copy parameters and buffers saved by :func:`save_parameters` into ``module`` in place.

    Every key of the file must match a tensor of ``module`` with the same shape and vice versa;
    otherwise nothing is changed and a DivekitError names the missing keys, the unexpected keys
    and the shape mismatches.
    """
    path = Path(path)
    if not path.is_file():
        raise DivekitError(f"no parameter file at {path}")
    try:
        loaded = safetensors.torch.load_file(path)
    except safetensors.SafetensorError as error:
        raise DivekitError(f"{path} is not a readable safetensors file: {error}") from error
    expected = module.state_dict()
    problems = []
    if missing := [name for name in expected if name not in loaded]:
        problems.append(f"missing keys {missing}")
    if unexpected := sorted(name for name in loaded if name not in expected):
        problems.append(f"unexpected keys {unexpected}")
    if mismatched := [
        f"{name} (file {tuple(loaded[name].shape)}, model {tuple(expected[name].shape)})"
        for name in expected
        if name in loaded and loaded[name].shape != expected[name].shape
    ]:
        problems.append(f"shape mismatch {mismatched}")
    if problems:
        raise DivekitError(f"cannot load {path} into {type(module).__name__}: "
                           + "; ".join(problems))
    module.load_state_dict(loaded)
