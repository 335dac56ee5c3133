"""Fine-tuning, section 14.2: start from pretrained weights, freeze, replace the head, lower the lr.

The recipe of the course: copy a network trained on a large source dataset, swap its output
layer for a freshly initialised one with the target's number of classes, and train on the small
target dataset with a small learning rate for the copied layers and a larger one (often 10x) for
the new head. The helpers here do each step by parameter name, with shell-style patterns
(``fnmatch``: ``"layer4.*"``, ``"layer[12].*"``, ``"*bn*"``):

* :func:`load_weights` reads a ``.safetensors`` file, a PyTorch state dict or a divekit
  checkpoint and checks every key and shape before anything is copied;
* :func:`replace_head` swaps the classifier's last ``nn.Linear``;
* :func:`freeze` stops gradients to the matched parameters;
* :func:`param_groups` gives matched parameters their own learning rate (the Trainer's
  ``lr_mult`` uses it);
* :func:`apply_finetune` does the first three in the order a command line needs.
"""

from __future__ import annotations

import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

import torch
from torch import nn

from divekit.engine.checkpoint import inference_weights, read_tensors
from divekit.errors import DivekitError

SHOWN = 5  # names quoted in an error message


@dataclass
class LoadReport:
    """What :func:`load_weights` did, by state-dict key."""

    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (f"loaded {len(self.loaded)} tensors, skipped {len(self.skipped)}, "
                f"missing {len(self.missing)}, unexpected {len(self.unexpected)}")


def freeze(
    model: nn.Module, patterns: str | Sequence[str], *, unfreeze: bool = False,
    bn_eval: bool = False,
) -> list[str]:
    """Stop (or, with ``unfreeze``, restart) training the parameters matching any pattern.

    Frozen batch-norm layers: by default their running statistics keep following the target
    data in training mode, as in fastai and plain PyTorch; only their scale and shift stay
    fixed. ``bn_eval=True`` also keeps every batch-norm layer whose parameters are all frozen
    in evaluation mode, even through ``model.train()``, so it normalises with the statistics
    of the pretraining data (Keras's behaviour; safer with tiny batches).

    Args:
        model: changed in place.
        patterns: ``fnmatch`` patterns over ``model.named_parameters()`` names.
        unfreeze: set ``requires_grad`` back to ``True`` (and release ``bn_eval`` layers).
        bn_eval: keep fully frozen batch-norm layers in evaluation mode.

    Returns:
        The names of the matched parameters.
    """
    names = _match(patterns, [name for name, _ in model.named_parameters()], "parameter")
    parameters = dict(model.named_parameters())
    for name in names:
        parameters[name].requires_grad_(unfreeze)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            own = list(module.parameters(recurse=False))
            fully_frozen = bool(own) and not any(p.requires_grad for p in own)
            if "train" in vars(module) and not fully_frozen:
                del module.train
                module.train(model.training)
            elif bn_eval and fully_frozen:
                # An instance attribute shadows nn.Module.train, which calls it on every
                # child: the Trainer's model.train() then leaves this layer in eval mode.
                module.train = types.MethodType(_stay_in_eval, module)
                module.eval()
    return names


def _stay_in_eval(module: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(module, False)


def param_groups(
    model: nn.Module, lr: float, lr_mult: Mapping[str, float] | None = None,
) -> list[dict]:
    """Optimizer parameter groups: ``lr`` for the body, ``lr * mult`` for matched parameters.

    A parameter takes the multiplier of the first pattern it matches. Frozen parameters are
    left out; every trainable one is in exactly one group. The body's group comes first, so
    ``optimizer.param_groups[0]["lr"]`` is the base rate, then one per pattern in its order.

    Args:
        model: the network.
        lr: the base learning rate.
        lr_mult: ``{pattern: multiplier}``, e.g. ``{"fc.*": 10}`` to train a new head at 10x.

    Returns:
        ``[{"params": [...], "lr": ...}, ...]`` for any ``torch.optim`` optimizer; schedules
        scale every group's rate by the same factor, so the ratios hold throughout.
    """
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise DivekitError("the model has no trainable parameters: everything is frozen")
    lr_mult = dict(lr_mult or {})
    for pattern, mult in lr_mult.items():
        if isinstance(mult, bool) or not isinstance(mult, int | float) or not mult > 0:
            raise DivekitError(f"lr_mult[{pattern!r}] must be a positive number, got {mult!r}")
        _match(pattern, [name for name, _ in trainable], "trainable parameter")
    groups: dict[str | None, list[nn.Parameter]] = {None: [], **{p: [] for p in lr_mult}}
    for name, parameter in trainable:
        pattern = next((p for p in lr_mult if fnmatchcase(name, p)), None)
        groups[pattern].append(parameter)
    return [{"params": params, "lr": lr * lr_mult.get(pattern, 1.0)}
            for pattern, params in groups.items() if params]


def replace_head(model: nn.Module, num_classes: int) -> str:
    """Swap the classifier's last ``nn.Linear`` for a freshly initialised one.

    "Last" is in registration order, which is the order of the forward pass for every model
    of the zoo (``fc`` for ResNet, ``classifier`` for DenseNet, ``head.2`` for GoogLeNet, the
    last index of a ``Sequential``).

    Args:
        model: changed in place.
        num_classes: outputs of the new head.

    Returns:
        The head's name, so ``lr_mult={f"{name}.*": 10}`` gives it its own learning rate.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise DivekitError(f"num_classes must be a positive integer, got {num_classes!r}")
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and name]
    if not linears:
        kind = type(model).__name__
        raise DivekitError(f"{kind} has no nn.Linear classifier inside it to replace (a model "
                           "ending in a convolution, like NiN, needs its last conv replaced)")
    name = linears[-1]
    parent_name, _, child = name.rpartition(".")
    old = model.get_submodule(name)
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    setattr(model.get_submodule(parent_name), child,
            new.to(device=old.weight.device, dtype=old.weight.dtype))
    return name


def load_weights(
    model: nn.Module, path: str | Path, *, strict: bool = True, skip: Iterable[str] = (),
    heads: Iterable[str] = (),
) -> LoadReport:
    """Copy weights from a file into ``model`` after checking every key and shape.

    Reads ``.safetensors`` files, PyTorch state dicts (``torch.save(model.state_dict())``,
    e.g. torchvision's ResNet weights, which divekit's ``resnet18/34/50`` match key for key)
    and divekit training checkpoints (their weight average when the run kept one, else their
    ``model`` entry). Files are never unpickled beyond tensors and plain containers
    (``weights_only=True``).

    Args:
        model: changed in place.
        path: the weights file.
        strict: every key of the model must be in the file and the other way round, except
            skipped ones; otherwise the common keys are loaded and the rest reported.
        skip: ``fnmatch`` patterns of keys to leave as they are in the model, e.g.
            ``["fc.*"]`` to load a 1000-class ImageNet network into a 10-class one.
        heads: ``fnmatch`` patterns of task heads (a model's ``head_patterns``, e.g. BERT's
            ``cls.*`` pretraining heads and ``classifier.*``): a matching key is loaded when
            the file and the model both have it with one shape, and otherwise skipped (a fresh
            head stays as initialised; a pretraining head the model lacks is dropped).

    A model with an ``adapt_state_dict(state)`` method sees the file's tensors first and may
    rename them (BERT reads Hugging Face checkpoints that way).

    Returns:
        A :class:`LoadReport`.
    """
    path = Path(path)
    weights = _read_state_dict(path)
    if hasattr(model, "adapt_state_dict"):
        weights = model.adapt_state_dict(weights)
    own = model.state_dict()
    skip = [skip] if isinstance(skip, str) else list(skip)
    skipped = set()
    for pattern in skip:
        skipped |= set(_match(pattern, sorted(set(weights) | set(own)), "key"))
    skipped |= {key for key in set(weights) | set(own)
                if any(fnmatchcase(key, pattern) for pattern in heads)
                and (key not in weights or key not in own or weights[key].shape != own[key].shape)}
    weights = {k: v for k, v in weights.items() if k not in skipped}
    report = LoadReport(
        skipped=sorted(skipped),
        missing=[k for k in own if k not in weights and k not in skipped],
        unexpected=[k for k in weights if k not in own],
    )
    mismatched = [f"{k}: file {tuple(v.shape)}, model {tuple(own[k].shape)}"
                  for k, v in weights.items() if k in own and v.shape != own[k].shape]
    if mismatched:
        raise DivekitError(
            f"{path}: {len(mismatched)} tensors have other shapes than the model's: "
            f"{_some(mismatched)}. To load the rest, skip them (skip=['fc.*'] for a classifier "
            "named fc) and give the model its own head, or load first and then call "
            "replace_head(model, num_classes)"
        )
    if strict and (report.missing or report.unexpected):
        problems = []
        if report.missing:
            problems.append(f"{len(report.missing)} model keys are not in the file "
                            f"({_some(report.missing)})")
        if report.unexpected:
            problems.append(f"{len(report.unexpected)} file keys are not in the model "
                            f"({_some(report.unexpected)})")
        raise DivekitError(f"{path} does not fit the model: {'; '.join(problems)}. Is it the "
                           "same architecture? Use skip=[...] for keys to leave alone or "
                           "strict=False to load only the common keys")
    model.load_state_dict(weights, strict=False)
    report.loaded = [k for k in own if k in weights]
    return report


def apply_finetune(
    model: nn.Module, *, weights: str | Path | None = None, skip_weights: Sequence[str] = (),
    num_classes: int | None = None, freeze_patterns: Sequence[str] = (), bn_eval: bool = False,
) -> str | None:
    """Load weights, replace the head, then freeze: the fine-tuning steps in a safe order.

    Args:
        model: changed in place.
        weights: file for :func:`load_weights` (strict, apart from ``skip_weights`` and the
            model's ``head_patterns``).
        skip_weights: key patterns not to load.
        num_classes: give the model a fresh head with this many outputs (after loading, so
            a 1000-class file loads completely first).
        freeze_patterns: parameters to freeze (after the head is replaced, so a new head is
            never frozen by accident unless a pattern names it).
        bn_eval: see :func:`freeze`.

    Returns:
        The new head's name, or ``None`` when the head was kept.
    """
    if weights is not None:
        load_weights(model, weights, skip=skip_weights, heads=getattr(model, "head_patterns", ()))
    head = replace_head(model, num_classes) if num_classes is not None else None
    if freeze_patterns:
        freeze(model, freeze_patterns, bn_eval=bn_eval)
    return head


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise DivekitError(f"no weights file at {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(path, device="cpu")
        except Exception as e:
            reason = " ".join(f"{type(e).__name__}: {e}".split())[:200]
            raise DivekitError(f"{path} could not be read as weights ({reason}); it is "
                               "damaged or not a safetensors file") from e
    else:
        state = read_tensors(path, "cpu", "weights")
    if isinstance(state, dict) and "format" in state and isinstance(state.get("model"), dict):
        state = inference_weights(state)  # a divekit training checkpoint
    if not isinstance(state, Mapping) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise DivekitError(f"{path} holds a {type(state).__name__}, not a state dict of "
                           "named tensors")
    return dict(state)


def _match(patterns: str | Sequence[str], names: list[str], what: str) -> list[str]:
    """Names matching any pattern; a pattern matching nothing is a typo worth an error."""
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    if not patterns:
        raise DivekitError("give at least one pattern")
    for pattern in patterns:
        if not any(fnmatchcase(name, pattern) for name in names):
            raise DivekitError(f"pattern {pattern!r} matches no {what} name; names look like: "
                               f"{_some(names)}")
    return [name for name in names if any(fnmatchcase(name, p) for p in patterns)]


def _some(items: Sequence[str]) -> str:
    more = f", ... ({len(items) - SHOWN} more)" if len(items) > SHOWN else ""
    return ", ".join(items[:SHOWN]) + more
