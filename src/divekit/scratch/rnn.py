"""Recurrent neural networks from scratch (course 9.5, 10.1-10.4): RNN, LSTM and GRU cells, deep
and bidirectional layers, and gradient clipping.

LSTM: Hochreiter & Schmidhuber, 1997. GRU: Cho et al., 2014.

The cells compute one time step in the course's notation, ``X @ W`` with weights of shape
(inputs, hidden). The layers hold their parameters with ``torch.nn.RNN``/``GRU``/``LSTM``'s names
and shapes (``weight_ih_l0`` of shape (gates * hidden, inputs), gates stacked in PyTorch's order),
so a state dict moves between them and PyTorch's layers in both directions. The layers loop over
the time steps in plain Python: slow, but every step is visible.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from divekit.errors import DivekitError

Params = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _check_cell(name: str, x: torch.Tensor, h: torch.Tensor, W_x: torch.Tensor,
                W_h: torch.Tensor, biases: tuple[torch.Tensor, ...], num_gates: int) -> None:
    if x.dim() != 2 or h.dim() != 2 or x.shape[0] != h.shape[0]:
        raise DivekitError(f"{name} takes x of shape (N, inputs) and h of shape (N, hidden), "
                           f"got x {tuple(x.shape)} and h {tuple(h.shape)}")
    hidden = h.shape[1]
    width = num_gates * hidden
    if W_x.shape != (x.shape[1], width):
        raise DivekitError(f"{name}: input weight must have shape ({x.shape[1]}, {width}), "
                           f"got {tuple(W_x.shape)}")
    if W_h.shape != (hidden, width):
        raise DivekitError(f"{name}: hidden weight must have shape ({hidden}, {width}), "
                           f"got {tuple(W_h.shape)}")
    for b in biases:
        if b.shape != (width,):
            raise DivekitError(f"{name}: bias must have shape ({width},), got {tuple(b.shape)}")


def rnn_cell(x: torch.Tensor, h: torch.Tensor, W_xh: torch.Tensor, W_hh: torch.Tensor,
             b_h: torch.Tensor) -> torch.Tensor:
    """One step of a vanilla RNN (course 9.5): ``h' = tanh(x W_xh + h W_hh + b_h)``.

    Args:
        x: input at this time step.
        h: hidden state from the previous step.
        W_xh, W_hh, b_h: input-to-hidden and hidden-to-hidden weights and the bias.

    Returns:
        The new hidden state.

    Shape:
        x: (N, inputs), h: (N, hidden), W_xh: (inputs, hidden), W_hh: (hidden, hidden),
        b_h: (hidden,). Output: (N, hidden).
    """
    _check_cell("rnn_cell", x, h, W_xh, W_hh, (b_h,), num_gates=1)
    return torch.tanh(x @ W_xh + h @ W_hh + b_h)


def gru_cell(x: torch.Tensor, h: torch.Tensor, params: Params) -> torch.Tensor:
    """One step of a gated recurrent unit (course 10.2), in PyTorch's form.

    With ``a_x = x W_x + b_x`` and ``a_h = h W_h + b_h`` split into reset (r), update (z) and
    candidate (n) parts::

        R = sigmoid(a_x[r] + a_h[r])            reset gate
        Z = sigmoid(a_x[z] + a_h[z])            update gate
        H~ = tanh(a_x[n] + R * a_h[n])          candidate hidden state
        h' = Z * h + (1 - Z) * H~

    The course writes the candidate as ``tanh(x W_xh + (R * h) W_hh + b_h)``: the reset gate
    scales the old state *before* the hidden matmul (as in Cho et al., 2014). PyTorch (and
    cuDNN) scale the result *after* it, bias included, so the hidden matmul of all three parts
    is one product of ``h`` that does not wait for R. Both forms reset in the same spirit, but
    the same weights give different numbers; this cell uses PyTorch's so it matches
    ``nn.GRU`` exactly.

    Args:
        x: input at this time step.
        h: hidden state from the previous step.
        params: ``(W_x, W_h, b_x, b_h)``, each with the r, z, n parts stacked in that order.

    Returns:
        The new hidden state.

    Shape:
        x: (N, inputs), h: (N, hidden), W_x: (inputs, 3 * hidden), W_h: (hidden, 3 * hidden),
        b_x and b_h: (3 * hidden,). Output: (N, hidden).
    """
    W_x, W_h, b_x, b_h = params
    _check_cell("gru_cell", x, h, W_x, W_h, (b_x, b_h), num_gates=3)
    x_r, x_z, x_n = (x @ W_x + b_x).chunk(3, dim=1)
    h_r, h_z, h_n = (h @ W_h + b_h).chunk(3, dim=1)
    R = torch.sigmoid(x_r + h_r)
    Z = torch.sigmoid(x_z + h_z)
    H_tilde = torch.tanh(x_n + R * h_n)
    return Z * h + (1 - Z) * H_tilde


def lstm_cell(x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor],
              params: Params) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of a long short-term memory cell (course 10.1)::

        I = sigmoid(a[i]),  F = sigmoid(a[f]),  C~ = tanh(a[g]),  O = sigmoid(a[o])
        c' = F * c + I * C~
        h' = O * tanh(c')

    where ``a = x W_x + b_x + h W_h + b_h`` is split into the input gate (i), forget gate (f),
    candidate memory (g) and output gate (o) parts.

    Args:
        x: input at this time step.
        state: ``(h, c)``, hidden state and memory cell from the previous step.
        params: ``(W_x, W_h, b_x, b_h)``, each with the i, f, g, o parts stacked in that order.

    Returns:
        The new ``(h, c)``.

    Shape:
        x: (N, inputs), h and c: (N, hidden), W_x: (inputs, 4 * hidden),
        W_h: (hidden, 4 * hidden), b_x and b_h: (4 * hidden,). Outputs: (N, hidden) each.
    """
    h, c = state
    W_x, W_h, b_x, b_h = params
    _check_cell("lstm_cell", x, h, W_x, W_h, (b_x, b_h), num_gates=4)
    if c.shape != h.shape:
        raise DivekitError(f"lstm_cell: memory cell c must have the shape of h "
                           f"{tuple(h.shape)}, got {tuple(c.shape)}")
    a_i, a_f, a_g, a_o = (x @ W_x + b_x + h @ W_h + b_h).chunk(4, dim=1)
    I, F, O = torch.sigmoid(a_i), torch.sigmoid(a_f), torch.sigmoid(a_o)
    C_tilde = torch.tanh(a_g)
    c = F * c + I * C_tilde
    return O * torch.tanh(c), c


class _RecurrentScratch(nn.Module):
    """A stack of recurrent layers, each run forwards (and backwards when bidirectional).

    Subclasses say how many gate blocks the weights stack (``num_gates``), how many tensors
    the state has (``state_names``) and what one time step does (``_step``).
    """

    num_gates: int
    state_names: tuple[str, ...]

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bidirectional: bool = False) -> None:
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size),
                            ("num_layers", num_layers)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise DivekitError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(bidirectional, bool):
            raise DivekitError(f"bidirectional must be True or False, got {bidirectional!r}")
        self.input_size, self.hidden_size = input_size, hidden_size
        self.num_layers, self.bidirectional = num_layers, bidirectional
        self.num_directions = 2 if bidirectional else 1
        bound = 1 / math.sqrt(hidden_size)
        width = self.num_gates * hidden_size
        for layer in range(num_layers):
            # Layers above the first read the outputs of both directions of the layer below.
            layer_inputs = input_size if layer == 0 else hidden_size * self.num_directions
            for suffix in self._suffixes(layer):
                shapes = {f"weight_ih{suffix}": (width, layer_inputs),
                          f"weight_hh{suffix}": (width, hidden_size),
                          f"bias_ih{suffix}": (width,), f"bias_hh{suffix}": (width,)}
                for name, shape in shapes.items():
                    weight = torch.empty(shape).uniform_(-bound, bound)
                    self.register_parameter(name, nn.Parameter(weight))

    def _suffixes(self, layer: int) -> list[str]:
        return [f"_l{layer}", f"_l{layer}_reverse"][:self.num_directions]

    def _params(self, suffix: str) -> Params:
        # Transposed to the course's (inputs, gates * hidden) layout, once per layer and direction.
        return (getattr(self, f"weight_ih{suffix}").T, getattr(self, f"weight_hh{suffix}").T,
                getattr(self, f"bias_ih{suffix}"), getattr(self, f"bias_hh{suffix}"))

    def _step(self, x: torch.Tensor, state: tuple[torch.Tensor, ...],
              params: Params) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def _initial_state(self, state: torch.Tensor | tuple[torch.Tensor, ...] | None,
                       inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        shape = (self.num_layers * self.num_directions, inputs.shape[1], self.hidden_size)
        if state is None:
            return tuple(inputs.new_zeros(shape) for _ in self.state_names)
        names = " and ".join(self.state_names)
        if len(self.state_names) == 1:
            state = (state,)
        elif not isinstance(state, tuple | list) or len(state) != len(self.state_names):
            raise DivekitError(f"{type(self).__name__} takes its state as a tuple ({names})")
        for name, tensor in zip(self.state_names, state, strict=True):
            if not isinstance(tensor, torch.Tensor) or tensor.shape != shape:
                got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else tensor
                raise DivekitError(f"initial state {name} must have shape (num_layers * "
                                   f"num_directions, N, hidden) = {shape}, got {got}")
        return tuple(state)

    def forward(self, inputs: torch.Tensor,
                state: torch.Tensor | tuple[torch.Tensor, ...] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | tuple[torch.Tensor, ...]]:
        """Run the layers over a whole sequence, like ``nn.RNN``/``nn.GRU``/``nn.LSTM``.

        Args:
            inputs: the sequence, time-major.
            state: the initial state (``h0``, or ``(h0, c0)`` for the LSTM); zeros when None.

        Returns:
            ``(outputs, final_state)``: the top layer's hidden state at every time step (both
            directions concatenated, forward first) and every layer's and direction's state
            after its last step (``h_n``, or ``(h_n, c_n)`` for the LSTM).

        Shape:
            inputs: (T, N, input_size). State tensors: (num_layers * D, N, hidden_size), with
            D = 2 when bidirectional else 1, ordered layer by layer, forward before reverse.
            outputs: (T, N, D * hidden_size).
        """
        if not isinstance(inputs, torch.Tensor) or inputs.dim() != 3:
            got = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs)
            raise DivekitError(f"{type(self).__name__} takes inputs of shape "
                               f"(T, N, input_size), got {got}")
        if inputs.shape[2] != self.input_size:
            raise DivekitError(f"inputs have {inputs.shape[2]} features per step, but "
                               f"input_size is {self.input_size}")
        if inputs.shape[0] == 0 or inputs.shape[1] == 0:
            raise DivekitError(f"inputs need at least one time step and one example, "
                               f"got shape {tuple(inputs.shape)}")
        initial = self._initial_state(state, inputs)
        layer_input, finals = inputs, []
        for layer in range(self.num_layers):
            direction_outputs = []
            for direction, suffix in enumerate(self._suffixes(layer)):
                params = self._params(suffix)
                index = layer * self.num_directions + direction
                s = tuple(tensor[index] for tensor in initial)
                # The reverse direction reads the sequence from its end; flipping its outputs
                # back lines both directions up in time.
                xs = layer_input if direction == 0 else layer_input.flip(0)
                outputs = []
                for x in xs:
                    s = self._step(x, s, params)
                    outputs.append(s[0])
                H = torch.stack(outputs)
                direction_outputs.append(H if direction == 0 else H.flip(0))
                finals.append(s)
            layer_input = torch.cat(direction_outputs, dim=-1)
        final = tuple(torch.stack(tensors) for tensors in zip(*finals, strict=True))
        return layer_input, final[0] if len(final) == 1 else final

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"bidirectional={self.bidirectional}")


class RNNScratch(_RecurrentScratch):
    """Deep, optionally bidirectional vanilla RNN (course 9.5, 10.3, 10.4) with tanh, like
    ``nn.RNN``.

    Args:
        input_size: features per time step.
        hidden_size: hidden units per layer and direction.
        num_layers: recurrent layers stacked on each other.
        bidirectional: also run each layer from the last time step to the first.

    Shape:
        See :meth:`forward`; the state is ``h`` of shape (num_layers * D, N, hidden_size).
    """

    num_gates = 1
    state_names = ("h",)

    def _step(self, x: torch.Tensor, state: tuple[torch.Tensor, ...],
              params: Params) -> tuple[torch.Tensor, ...]:
        W_x, W_h, b_x, b_h = params
        # PyTorch keeps two biases where one would do; only their sum matters.
        return (rnn_cell(x, state[0], W_x, W_h, b_x + b_h),)


class GRUScratch(_RecurrentScratch):
    """Deep, optionally bidirectional gated recurrent unit (course 10.2-10.4), like ``nn.GRU``.

    Args:
        input_size: features per time step.
        hidden_size: hidden units per layer and direction.
        num_layers: recurrent layers stacked on each other.
        bidirectional: also run each layer from the last time step to the first.

    Shape:
        See :meth:`forward`; the state is ``h`` of shape (num_layers * D, N, hidden_size).
    """

    num_gates = 3
    state_names = ("h",)

    def _step(self, x: torch.Tensor, state: tuple[torch.Tensor, ...],
              params: Params) -> tuple[torch.Tensor, ...]:
        return (gru_cell(x, state[0], params),)


class LSTMScratch(_RecurrentScratch):
    """Deep, optionally bidirectional long short-term memory (course 10.1, 10.3, 10.4), like
    ``nn.LSTM``.

    Args:
        input_size: features per time step.
        hidden_size: hidden units per layer and direction.
        num_layers: recurrent layers stacked on each other.
        bidirectional: also run each layer from the last time step to the first.

    Shape:
        See :meth:`forward`; the state is ``(h, c)``, each of shape
        (num_layers * D, N, hidden_size).
    """

    num_gates = 4
    state_names = ("h", "c")

    def _step(self, x: torch.Tensor, state: tuple[torch.Tensor, ...],
              params: Params) -> tuple[torch.Tensor, ...]:
        h, c = state
        return lstm_cell(x, (h, c), params)


def clip_gradients(parameters: torch.Tensor | Iterable[torch.Tensor],
                   max_norm: float) -> torch.Tensor:
    """Rescale all gradients together so their global L2 norm is at most ``max_norm`` (9.5.3).

    ``g <- g * max_norm / (||g|| + 1e-6)`` when ``||g|| > max_norm``, where ``||g||`` is the norm
    of all gradients concatenated into one vector; otherwise they are left alone. Scaling them
    together keeps the direction of the update, only shortening the step. The ``1e-6`` is
    ``torch.nn.utils.clip_grad_norm_``'s guard against dividing by zero, kept so both agree.

    Args:
        parameters: a tensor or tensors whose ``.grad`` to clip in place; ones without a
            gradient are skipped.
        max_norm: the largest global norm allowed.

    Returns:
        The global norm before clipping, a scalar tensor.
    """
    if isinstance(max_norm, bool) or not isinstance(max_norm, int | float) or max_norm <= 0:
        raise DivekitError(f"max_norm must be a positive number, got {max_norm!r}")
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    total_norm = torch.sqrt(sum((g.detach() ** 2).sum() for g in grads))
    if total_norm > max_norm:
        scale = max_norm / (total_norm + 1e-6)
        for g in grads:
            g.detach().mul_(scale.to(g.dtype))
    return total_norm
