"""The model registry: ``create_model("lenet", num_classes=10)`` like ``timm.create_model``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from divekit.errors import DivekitError
from divekit.registry import Registry


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a model without building it.

    Attributes:
        name: registry name.
        build: factory returning an ``nn.Module``.
        family: model family (one per file in ``divekit.models``).
        section: the course section that introduces it.
        task: ``"classification"`` (returns logits), ``"regression"`` or ``"language-model"``
            (token sequences in, ``(logits, loss)`` out when given targets).
        input_shape: default input shape of one example, e.g. ``(1, 28, 28)``.
        params: parameter count of the model built with its default options (the published
            figure where there is one, adjusted to those options).
        description: first line of the factory's docstring.
    """

    name: str
    build: Callable[..., nn.Module]
    family: str
    section: str
    task: str
    input_shape: tuple[int, ...]
    params: int
    description: str

    def options(self) -> list[str]:
        return list(inspect.signature(self.build).parameters)


MODELS: Registry[ModelInfo] = Registry("model")


def register_model(
    name: str,
    *,
    family: str,
    section: str,
    task: str = "classification",
    input_shape: tuple[int, ...] = (1, 28, 28),
    params: int,
):
    """Decorator registering a model factory under ``name``.

    Args:
        name, family, section, task, input_shape: see :class:`ModelInfo`.
        params: the parameter count of ``fn()`` (default options); required, so that no
            model ships without one. A test builds every registered model and checks it.

    Raises:
        DivekitError: if ``params`` is not a positive integer.
    """
    if isinstance(params, bool) or not isinstance(params, int) or params < 1:
        raise DivekitError(f"model {name!r}: params must be a positive integer, the parameter "
                           f"count with default options, got {params!r}")

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        description = (inspect.getdoc(fn) or "").splitlines()[0] if fn.__doc__ else ""
        MODELS.add(name, ModelInfo(name, fn, family, section, task, input_shape, params,
                                   description))
        return fn

    return decorator


def from_published(count: int, *, stem_weights: int, head_inputs: int) -> int:
    """The default-options count (1 channel, 10 classes) of a model published for ImageNet.

    Args:
        count: the published count, for 3 input channels and 1000 classes.
        stem_weights: weights of the first conv per input channel (``out * kh * kw``).
        head_inputs: inputs of the last linear layer.

    Returns:
        ``count`` less the stem's weights for 2 input channels and the head's 990 classes.
    """
    return count - 2 * stem_weights - 990 * (head_inputs + 1)


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell pattern, e.g. ``list_models("lenet*")``."""
    return MODELS.names(pattern)


def model_info(name: str) -> ModelInfo:
    return MODELS[name]


def create_model(name: str, data=None, **options) -> nn.Module:
    """Build a registered model.

    Args:
        name: registry name (see ``list_models()``).
        data: optional ``DataModule``; fills ``num_classes``, ``in_channels`` and
            ``num_inputs`` from it where the model takes them and they are not given.
        options: the factory's keyword arguments, e.g. ``num_classes=10, dropout=0.5``.
    """
    info = MODELS[name]
    accepted = info.options()
    given = dict(options)
    if data is not None:
        shape = data.input_shape
        derived = {"in_channels": shape[0], "num_inputs": _prod(shape), "image_size": shape[-1]}
        if data.num_classes is not None:
            derived["num_classes"] = data.num_classes
        derived |= getattr(data, "model_options", {})
        for key, value in derived.items():
            if key in accepted:
                options.setdefault(key, value)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise DivekitError(
            f"model {name!r} has no option {', '.join(unknown)}; its options are: "
            f"{', '.join(accepted) or 'none'}"
        )
    try:
        return info.build(**options)
    except (TypeError, ValueError, RuntimeError) as e:  # torch: RuntimeError for bad sizes
        if not given:  # the defaults failed: a bug, not a user's mistake
            raise
        shown = ", ".join(f"{key}={value!r}" for key, value in given.items())
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:200]
        raise DivekitError(f"model {name!r} cannot be built with {shown} ({reason}); check "
                           "the options' types and values") from e


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _prod(shape: tuple[int, ...]) -> int:
    result = 1
    for size in shape:
        result *= size
    return result
