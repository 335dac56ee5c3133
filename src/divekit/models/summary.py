"""Model summary (course sections 7.6 and 8.1-8.7 count layers, shapes and cost): a
torchinfo/Keras-style table of every layer's output shape, parameters and multiply-accumulates.

The forward pass runs on the ``meta`` device: tensors there have shapes and dtypes but no
storage, so summarising VGG-19 at 224 x 224 allocates nothing and takes milliseconds. A model
whose weights are real is run with meta stand-ins for its parameters and buffers
(``torch.func.functional_call``), so its own weights are never copied.

Multiply-accumulates (MACs; one MAC is one ``a * b + c``, about two FLOPs) are counted by
forward hooks, for the layers that do nearly all the arithmetic of a CNN, RNN or Transformer:

* ``Conv1d/2d/3d``: ``out.numel() * (C_in / groups) * prod(kernel_size)`` (each output value
  is a dot product over its receptive field in its group's input channels).
* ``Linear``: ``out.numel() * in_features``.
* ``RNN/GRU/LSTM``: per time step, example, layer and direction ``gates * hidden_size *
  (input_size + hidden_size)`` with 1, 3 and 4 gates (the two matrix products that feed the
  gates); the elementwise gate arithmetic is not counted.
* ``MultiheadAttention`` (batch ``B``, query length ``L``, key length ``S``, width ``E``): its
  four projections as linear layers, ``B * (L * E * E + S * kdim * E + S * vdim * E + L * E *
  E)``, plus ``2 * B * L * S * E`` for the products ``Q K^T`` and ``A V`` of all heads together
  (``S`` counts the extra key of ``add_bias_kv`` and of ``add_zero_attn``). Its ``out_proj`` is
  a weight it multiplies by itself, not a layer it calls, so it is listed as one leaf.
* ``F.scaled_dot_product_attention`` called anywhere in a ``forward`` (caught by a
  ``TorchFunctionMode``), with query ``(..., L, E)``, key ``(..., S, E)``, value ``(..., S,
  Ev)``: ``L * S * (E + Ev)`` per leading batch element (heads included) of its output. Every
  call gets a row of its own, ``<caller>.scaled_dot_product_attention``, under the module whose
  ``forward`` made it. Masks, causal ones included, do not reduce the count.

Everything else counts 0: biases, activations, softmax, pooling (no products, only max or
sums), dropout, and batch norm (at inference it is an affine map that folds into the conv or
linear layer before it). Other functional ops called inside ``forward`` (``torch.matmul``,
``F.linear``) are not counted either. With these rules ResNet-18 at 224 x 224 costs 1.82 GMACs
and VGG-16 15.5 GMACs, the published figures.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.overrides import TorchFunctionMode

from divekit.errors import DivekitError
from divekit.models.registry import count_parameters, create_model, model_info

RECURRENT_GATES = {nn.RNN: 1, nn.GRU: 3, nn.LSTM: 4}
ATTENTION_CALL = "scaled_dot_product_attention"


@dataclass(frozen=True)
class SummaryRow:
    """One module of the table.

    Attributes:
        name: qualified name, e.g. ``"layer1.0.conv1"``.
        type: class name, e.g. ``"Conv2d"``; ``"function"`` for the row of the
            ``F.scaled_dot_product_attention`` calls of a module.
        depth: number of dotted parts of ``name`` (a top-level child has depth 1).
        output_shape: shape of its (first) output tensor in the last call, ``None`` if the
            forward pass never called it.
        params: parameters of the module and its children.
        trainable_params: those with ``requires_grad``.
        macs: multiply-accumulates of the module and its children, summed over its calls.
    """

    name: str
    type: str
    depth: int
    output_shape: tuple[int, ...] | None
    params: int
    trainable_params: int
    macs: int


@dataclass(frozen=True)
class Summary:
    """What :func:`summarize` measured: the rows and the totals of the whole model.

    Attributes:
        model: the model's registry name, or its class name.
        input_size: the input's shape, batch included.
        rows: one per listed module, in registration order.
        total_params: distinct parameters of the model (shared ones once).
        trainable_params: those with ``requires_grad``.
        macs: multiply-accumulates of one forward pass at ``input_size``.
        activation_bytes: bytes of every leaf module's output: an estimate of the activations
            that training keeps for the backward pass (in-place ops are counted again).
    """

    model: str
    input_size: tuple[int, ...]
    rows: list[SummaryRow]
    total_params: int
    trainable_params: int
    macs: int
    activation_bytes: int

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON-able lists and numbers."""
        result = asdict(self)
        result["input_size"] = list(self.input_size)
        for row in result["rows"]:
            if row["output_shape"] is not None:
                row["output_shape"] = list(row["output_shape"])
        return result

    def __str__(self) -> str:
        header = ("Layer (type)", "Output shape", "Params", "Trainable", "MACs")
        lines = [header] + [
            (f"{row.name} ({row.type})",
             "-" if row.output_shape is None else str(list(row.output_shape)),
             f"{row.params:,}", f"{row.trainable_params:,}", f"{row.macs:,}")
            for row in self.rows
        ]
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        table = [f"{line[0]:<{widths[0]}}  {line[1]:<{widths[1]}}  "
                 + "  ".join(f"{cell:>{width}}" for cell, width in zip(line[2:], widths[2:],
                                                                       strict=True))
                 for line in lines]
        rule = "=" * len(table[0])
        return "\n".join([
            f"{self.model}, input {list(self.input_size)}", rule, table[0], rule.replace("=", "-"),
            *table[1:], rule,
            f"Total params:         {self.total_params:,}",
            f"Trainable params:     {self.trainable_params:,}",
            f"Non-trainable params: {self.total_params - self.trainable_params:,}",
            f"MACs:                 {_human(self.macs)} ({self.macs:,})",
            f"Activations:          {_human(self.activation_bytes, 'B', 1024)} "
            f"(leaf outputs, forward)",
        ])


def summarize(
    model: nn.Module,
    input_size: tuple[int, ...] = (1, 1, 28, 28),
    *,
    depth: int | None = 3,
    dtype: torch.dtype | None = None,
    name: str | None = None,
) -> Summary:
    """Summarise ``model`` on an input of ``input_size``: per-layer shapes, parameters, MACs.

    Args:
        model: any module; it is run in eval mode (restored afterwards), on meta tensors.
        input_size: shape of the input, batch dimension included, e.g. ``(1, 3, 224, 224)``.
        depth: list modules nested at most this deep (``layer1.0.conv1`` is depth 3), and
            deeper modules summed into their ancestor at ``depth``; ``None`` lists every leaf.
        dtype: input dtype; default the model's floating dtype (``torch.long`` for a model
            whose first layer is an ``nn.Embedding``). Token models need an integer dtype.
        name: the model's name in the table and in errors; default its class name.

    Returns:
        A :class:`Summary`; ``print`` it for the table.

    Raises:
        DivekitError: for a malformed ``input_size``, or a forward pass that fails on it,
            naming the layer that failed.
    """
    if (not isinstance(input_size, tuple | list) or not input_size
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in input_size)):
        raise DivekitError(f"input_size must be a tuple of positive integers (batch first), "
                           f"got {input_size!r}")
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 1):
        raise DivekitError(f"depth must be a positive integer or None, got {depth!r}")
    input_size = tuple(input_size)
    name = name or type(model).__name__
    names = {module: qualified for qualified, module in model.named_modules()}
    # Modules that multiply by their children's weights without calling them: one leaf each.
    atomic = {qualified for module, qualified in names.items()
              if isinstance(module, nn.MultiheadAttention)}
    shapes: dict[str, tuple[int, ...]] = {}
    own_macs: dict[str, int] = dict.fromkeys(names.values(), 0)
    attention_calls: dict[str, str] = {}  # row name -> the module whose forward made the calls
    activation_bytes = 0
    entered: list[str] = []

    def is_leaf(qualified: str, module: nn.Module) -> bool:
        return qualified in atomic or next(module.children(), None) is None

    def before(module: nn.Module, inputs: tuple) -> None:
        entered.append(names[module])

    def after(module: nn.Module, inputs: tuple, kwargs: dict, output: Any) -> None:
        nonlocal activation_bytes
        qualified = entered.pop()
        outputs = list(_tensors(output))
        if outputs:
            shapes[qualified] = tuple(outputs[0].shape)
        own_macs[qualified] += _macs(module, inputs, kwargs, output)
        if is_leaf(qualified, module):
            activation_bytes += sum(t.numel() * t.element_size() for t in outputs)

    def attention_call(output: torch.Tensor, macs: int) -> None:
        nonlocal activation_bytes
        if any(qualified in atomic for qualified in entered):
            return  # nn.MultiheadAttention counts its own products
        caller = entered[-1] if entered else ""
        row = f"{caller}.{ATTENTION_CALL}" if caller else ATTENTION_CALL
        attention_calls[row] = caller
        shapes[row] = tuple(output.shape)
        own_macs[row] = own_macs.get(row, 0) + macs
        activation_bytes += output.numel() * output.element_size()

    handles = [hook for module in names
               for hook in (module.register_forward_pre_hook(before),
                            module.register_forward_hook(after, with_kwargs=True))]
    modes = {module: module.training for module in names}
    model.eval()
    try:
        with _AttentionCounter(attention_call):
            _meta_forward(model, input_size, dtype or _input_dtype(model))
    except (RuntimeError, ValueError, IndexError, TypeError) as error:
        # The innermost module whose forward started but did not finish raised the error.
        failed = entered[-1] if entered else ""
        where = f" in {failed} ({type(model.get_submodule(failed)).__name__})" if failed else ""
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise DivekitError(f"{name} cannot take an input of size {list(input_size)}: the "
                           f"forward pass failed{where}: {first_line}"
                           f"{_feature_mismatch(model, input_size)}") from error
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training

    entries: list[tuple[str, nn.Module | None]] = [
        (qualified, module) for qualified, module in model.named_modules()
        if not any(_within(qualified, parent) and qualified != parent for parent in atomic)]
    for row, caller in attention_calls.items():  # after the caller's last descendant
        last = max(i for i, (qualified, _) in enumerate(entries) if _within(qualified, caller))
        entries.insert(last + 1, (row, None))
    rows = []
    for qualified, module in entries:
        row_depth = qualified.count(".") + 1
        leaf = module is None or is_leaf(qualified, module)
        listed = leaf if depth is None else (row_depth == depth or (row_depth < depth and leaf))
        if not qualified or not listed:
            continue
        parameters = [] if module is None else list(module.parameters())
        rows.append(SummaryRow(
            qualified, "function" if module is None else type(module).__name__, row_depth,
            shapes.get(qualified), sum(p.numel() for p in parameters),
            sum(p.numel() for p in parameters if p.requires_grad),
            sum(m for n, m in own_macs.items() if _within(n, qualified)),
        ))
    return Summary(
        name, input_size, rows, count_parameters(model),
        sum(p.numel() for p in model.parameters() if p.requires_grad),
        sum(own_macs.values()), activation_bytes,
    )


def summary_for(
    name: str, input_shape: tuple[int, ...] | None = None, *, batch_size: int = 1,
    depth: int | None = 3, **model_options: Any,
) -> Summary:
    """Build the registered model ``name`` on the meta device and summarise it.

    Args:
        name: registry name (see ``list_models()``).
        input_shape: one example's shape without the batch, e.g. ``(3, 224, 224)``; default
            the model's registered ``input_shape``. Where the model takes ``in_channels`` and
            ``image_size`` and they are not in ``model_options``, they are read from it, so
            the model is built for that input (e.g. its ImageNet stem at 224).
        batch_size: examples in the summarised batch.
        depth: see :func:`summarize`.
        model_options: the factory's options, e.g. ``num_classes=1000``.

    Returns:
        The :class:`Summary`, named after ``name``.
    """
    info = model_info(name)
    if info.task == "translation":
        raise DivekitError(f"summary runs models of one input; {name!r} is an encoder-decoder "
                           "(sources, their lengths and decoder inputs): `divekit list models` "
                           "gives its parameter count")
    shape = tuple(info.input_shape if input_shape is None else input_shape)
    if len(shape) != len(info.input_shape):
        raise DivekitError(f"{name!r} takes examples of shape {info.input_shape}, got "
                           f"{shape}: give one example's shape, without the batch")
    accepted = info.options()
    if len(shape) == 3:
        derived = {"in_channels": shape[0], "image_size": shape[-1]}
        for key, value in derived.items():
            if key in accepted:
                model_options.setdefault(key, value)
    with torch.device("meta"):
        model = create_model(name, **model_options)
    token_tasks = ("language-model", "bert-pretraining", "text-classification",
                   "token-classification", "question-answering")
    dtype = torch.long if info.task in token_tasks else None
    try:
        return summarize(model, (batch_size, *shape), depth=depth, dtype=dtype, name=name)
    except DivekitError as error:
        raise DivekitError(f"{error}; {name!r} is registered for examples of shape "
                           f"{info.input_shape}") from error


def _meta_forward(model: nn.Module, input_size: tuple[int, ...], dtype: torch.dtype) -> None:
    """Run ``model`` on a meta input, with meta stand-ins for any real parameters."""
    x = torch.empty(input_size, dtype=dtype, device="meta")
    state = {name: tensor for name, tensor in [*model.named_parameters(),
                                               *model.named_buffers()]}
    with torch.no_grad():
        if all(t.is_meta for t in state.values()):
            model(x)
        else:
            stand_ins = {name: torch.empty_like(t, device="meta") for name, t in state.items()}
            functional_call(model, stand_ins, (x,))


class _AttentionCounter(TorchFunctionMode):
    """Hands the output and MACs of every ``F.scaled_dot_product_attention`` call to ``record``."""

    def __init__(self, record: Callable[[torch.Tensor, int], None]) -> None:
        super().__init__()
        self.record = record

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if func is F.scaled_dot_product_attention:
            query, key, value = (args[i] if i < len(args) else kwargs[argument]
                                 for i, argument in enumerate(("query", "key", "value")))
            # Each leading (batch, head) element of the output: L x S products of width E and Ev.
            per_element = query.shape[-2] * key.shape[-2] * (query.shape[-1] + value.shape[-1])
            self.record(result, math.prod(result.shape[:-2]) * per_element)
        return result


def _within(name: str, ancestor: str) -> bool:
    """Whether ``name`` is ``ancestor`` or nested in it (everything is in the root ``""``)."""
    return not ancestor or name == ancestor or name.startswith(ancestor + ".")


def _attention_macs(module: nn.MultiheadAttention, query: torch.Tensor,
                    key: torch.Tensor) -> int:
    """Projections and the two batched products of one ``nn.MultiheadAttention`` call."""
    if query.dim() == 2:  # unbatched: (L, E)
        batch, length, source = 1, query.shape[0], key.shape[0]
    elif module.batch_first:  # (B, L, E)
        (batch, length), source = query.shape[:2], key.shape[1]
    else:  # (L, B, E)
        (length, batch), source = query.shape[:2], key.shape[0]
    width = module.embed_dim
    projections = (2 * length * width + source * (module.kdim + module.vdim)) * width
    keys = source + (module.bias_k is not None) + module.add_zero_attn
    return batch * (projections + 2 * length * keys * width)


def _macs(module: nn.Module, inputs: tuple, kwargs: dict, output: Any) -> int:
    """Multiply-accumulates of one call of ``module`` (0 for types that are not counted)."""
    if isinstance(module, nn.MultiheadAttention):
        arguments = [*inputs, *(kwargs[k] for k in ("query", "key") if k in kwargs)]
        return _attention_macs(module, arguments[0], arguments[1])
    if isinstance(module, nn.modules.conv._ConvNd):
        per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
        return output.numel() * per_output
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    gates = RECURRENT_GATES.get(type(module))
    if gates is None:
        return 0
    x = inputs[0]
    if isinstance(x, nn.utils.rnn.PackedSequence):
        steps = x.data.shape[0]  # every (time step, example) pair that is not padding
    else:
        steps = x.numel() // x.shape[-1]
    directions = 2 if module.bidirectional else 1
    out_size = module.proj_size or module.hidden_size
    total = 0
    for layer in range(module.num_layers):
        layer_input = module.input_size if layer == 0 else out_size * directions
        total += gates * module.hidden_size * (layer_input + out_size)
        total += module.hidden_size * module.proj_size  # the LSTM projection, 0 without one
    return steps * directions * total


def _tensors(output: Any) -> Iterator[torch.Tensor]:
    """The tensors in a module's output, depth first (LSTM: output, then ``(h, c)``)."""
    if isinstance(output, torch.Tensor):
        yield output
    elif isinstance(output, tuple | list):
        for item in output:
            yield from _tensors(item)
    elif isinstance(output, dict):
        for item in output.values():
            yield from _tensors(item)


def _input_dtype(model: nn.Module) -> torch.dtype:
    first_leaf = next(m for m in model.modules() if next(m.children(), None) is None)
    if isinstance(first_leaf, nn.Embedding):
        return torch.long
    floating = (p.dtype for p in model.parameters() if p.is_floating_point())
    return next(floating, torch.get_default_dtype())


def _feature_mismatch(model: nn.Module, input_size: tuple[int, ...]) -> str:
    """A hint when the model's first layer is a conv that expects other input channels."""
    first = next((m for m in model.modules()
                  if isinstance(m, nn.modules.conv._ConvNd | nn.Linear)), None)
    if (isinstance(first, nn.modules.conv._ConvNd) and len(input_size) > 1
            and input_size[1] != first.in_channels):
        return (f"; its first layer is a {type(first).__name__} that expects "
                f"{first.in_channels} input channel(s), not {input_size[1]}")
    return ""


def _human(value: float, unit: str = "", base: int = 1000) -> str:
    """``1_814_000_000 -> "1.81 G"``: three significant digits and a decimal prefix."""
    prefix = ""
    for prefix in ("", "K", "M", "G", "T"):
        if value < base or prefix == "T":
            break
        value /= base
    return f"{value:.3g} {prefix}{unit}".rstrip()
