import math

import pytest
import torch
from torch import nn

from divekit.errors import DivekitError
from divekit.scratch.rnn import (
    GRUScratch,
    LSTMScratch,
    RNNScratch,
    clip_gradients,
    gru_cell,
    lstm_cell,
    rnn_cell,
)
from tests.oracle import f64, randn

KINDS = {"rnn": (RNNScratch, nn.RNN), "gru": (GRUScratch, nn.GRU), "lstm": (LSTMScratch, nn.LSTM)}
CONFIGS = [(1, False), (2, False), (1, True), (2, True)]  # (num_layers, bidirectional)
SIZES = [(5, 3), (1, 1)]  # (T, N): a sequence and a single step of a batch of 1
INPUT, HIDDEN = 4, 3


def _pair(kind, num_layers, bidirectional, seed=0):
    """A float64 PyTorch layer built with ``seed`` and the scratch layer loaded from it."""
    scratch_cls, torch_cls = KINDS[kind]
    torch.manual_seed(seed)
    ref = torch_cls(INPUT, HIDDEN, num_layers=num_layers, bidirectional=bidirectional).double()
    ours = scratch_cls(INPUT, HIDDEN, num_layers=num_layers, bidirectional=bidirectional).double()
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def _state(kind, num_layers, bidirectional, N, seed):
    shape = (num_layers * (2 if bidirectional else 1), N, HIDDEN)
    if kind == "lstm":
        return randn(*shape, seed=seed), randn(*shape, seed=seed + 1)
    return randn(*shape, seed=seed)


def _as_tuple(state):
    return state if isinstance(state, tuple) else (state,)


def _run(module, x, state):
    """Outputs, final states and the gradients of a random projection of both with respect to
    the input, the initial state and every parameter (by name)."""
    x = x.clone().requires_grad_()
    leaves = [x]
    if state is not None:
        state = tuple(s.clone().requires_grad_() for s in _as_tuple(state))
        leaves += state
        state = state if len(state) == 2 else state[0]
    outputs, final = module(x, state)
    final = _as_tuple(final)
    loss = (outputs * randn(*outputs.shape, seed=100)).sum()
    for i, f in enumerate(final):
        loss = loss + (f * randn(*f.shape, seed=101 + i)).sum()
    names, params = zip(*module.named_parameters(), strict=True)
    grads = torch.autograd.grad(loss, leaves + list(params))
    return outputs, final, grads[:len(leaves)], dict(zip(names, grads[len(leaves):], strict=True))


def _assert_same_run(ours, ref, x, state):
    out, final, leaf_grads, param_grads = _run(ours, x, state)
    ref_out, ref_final, ref_leaf_grads, ref_param_grads = _run(ref, x, state)
    torch.testing.assert_close(out, ref_out)
    assert len(final) == len(ref_final)
    for f, f_ref in zip(final, ref_final, strict=True):
        torch.testing.assert_close(f, f_ref)
    for g, g_ref in zip(leaf_grads, ref_leaf_grads, strict=True):
        torch.testing.assert_close(g, g_ref)
    assert param_grads.keys() == ref_param_grads.keys()
    for name, g in param_grads.items():
        torch.testing.assert_close(g, ref_param_grads[name], msg=name)


@pytest.mark.parametrize("with_state", [False, True], ids=["zeros", "h0"])
@pytest.mark.parametrize("T, N", SIZES)
@pytest.mark.parametrize("num_layers, bidirectional", CONFIGS)
@pytest.mark.parametrize("kind", KINDS)
def test_layer_matches_torch(kind, num_layers, bidirectional, T, N, with_state):
    ours, ref = _pair(kind, num_layers, bidirectional)
    x = randn(T, N, INPUT, seed=3)
    state = _state(kind, num_layers, bidirectional, N, seed=4) if with_state else None
    _assert_same_run(ours, ref, x, state)


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_loads_into_torch(kind):
    scratch_cls, torch_cls = KINDS[kind]
    torch.manual_seed(7)
    ours = scratch_cls(INPUT, HIDDEN, num_layers=2, bidirectional=True).double()
    ref = torch_cls(INPUT, HIDDEN, num_layers=2, bidirectional=True).double()
    ref.load_state_dict(ours.state_dict())
    assert list(ours.state_dict()) == list(ref.state_dict())
    _assert_same_run(ours, ref, randn(5, 3, INPUT, seed=8),
                     _state(kind, 2, True, 3, seed=9))


@pytest.mark.parametrize("kind", KINDS)
def test_initialisation_is_uniform_like_torch(kind):
    scratch_cls, torch_cls = KINDS[kind]
    hidden = 16
    torch.manual_seed(0)
    ours = scratch_cls(INPUT, hidden, num_layers=2, bidirectional=True)
    ref = torch_cls(INPUT, hidden, num_layers=2, bidirectional=True)
    bound = 1 / math.sqrt(hidden)
    for (name, p), (ref_name, p_ref) in zip(ours.named_parameters(), ref.named_parameters(),
                                             strict=True):
        assert name == ref_name and p.shape == p_ref.shape and p.dtype == p_ref.dtype
        assert p.abs().max() <= bound
    values = torch.cat([p.detach().flatten() for p in ours.parameters()])
    # Thousands of draws: U(-b, b) has mean 0 and std b / sqrt(3), and reaches near both ends.
    assert abs(values.mean()) < 0.05 * bound
    assert abs(values.std() - bound / math.sqrt(3)) < 0.05 * bound
    assert values.min() < -0.99 * bound and values.max() > 0.99 * bound


def _cell_grads(fn, inputs, seed):
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    outputs = _as_tuple(fn(*inputs))
    loss = sum((o * randn(*o.shape, seed=seed + i)).sum() for i, o in enumerate(outputs))
    return [o.detach() for o in outputs], torch.autograd.grad(loss, inputs)


def _assert_same_cell(ours_fn, ref_fn, inputs):
    out, grads = _cell_grads(ours_fn, inputs, seed=50)
    ref_out, ref_grads = _cell_grads(ref_fn, inputs, seed=50)
    for o, o_ref in zip(out, ref_out, strict=True):
        torch.testing.assert_close(o, o_ref)
    for g, g_ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, g_ref)


def _cell_weights(cell):
    return [cell.weight_ih.detach(), cell.weight_hh.detach(), cell.bias_ih.detach(),
            cell.bias_hh.detach()]


@pytest.mark.parametrize("N", [3, 1])
def test_rnn_cell_matches_torch(N):
    torch.manual_seed(1)
    W_ih, W_hh, b_ih, b_hh = _cell_weights(nn.RNNCell(INPUT, HIDDEN).double())

    def ours(x, h, W_ih, W_hh, b_ih, b_hh):
        return rnn_cell(x, h, W_ih.T, W_hh.T, b_ih + b_hh)

    def ref(x, h, W_ih, W_hh, b_ih, b_hh):
        return torch.func.functional_call(
            nn.RNNCell(INPUT, HIDDEN).double(),
            {"weight_ih": W_ih, "weight_hh": W_hh, "bias_ih": b_ih, "bias_hh": b_hh}, (x, h))

    x, h = randn(N, INPUT, seed=2), randn(N, HIDDEN, seed=3)
    _assert_same_cell(ours, ref, [x, h, W_ih, W_hh, b_ih, b_hh])


@pytest.mark.parametrize("N", [3, 1])
def test_gru_cell_matches_torch(N):
    torch.manual_seed(2)
    weights = _cell_weights(nn.GRUCell(INPUT, HIDDEN).double())

    def ours(x, h, W_ih, W_hh, b_ih, b_hh):
        return gru_cell(x, h, (W_ih.T, W_hh.T, b_ih, b_hh))

    def ref(x, h, W_ih, W_hh, b_ih, b_hh):
        return torch.func.functional_call(
            nn.GRUCell(INPUT, HIDDEN).double(),
            {"weight_ih": W_ih, "weight_hh": W_hh, "bias_ih": b_ih, "bias_hh": b_hh}, (x, h))

    x, h = randn(N, INPUT, seed=4), randn(N, HIDDEN, seed=5)
    _assert_same_cell(ours, ref, [x, h, *weights])


def test_gru_reset_gate_acts_after_the_hidden_matmul():
    # The course's form tanh(x W + (R * h) U + b) is a different function of the same weights:
    # the cell follows PyTorch's, so the course's form must not be what it computes.
    torch.manual_seed(3)
    W_x, W_h, b_x, b_h = (w.T if w.dim() == 2 else w
                          for w in _cell_weights(nn.GRUCell(INPUT, HIDDEN).double()))
    x, h = randn(2, INPUT, seed=6), randn(2, HIDDEN, seed=7)
    R = torch.sigmoid((x @ W_x + b_x)[:, :HIDDEN] + (h @ W_h + b_h)[:, :HIDDEN])
    Z = torch.sigmoid((x @ W_x + b_x)[:, HIDDEN:2 * HIDDEN] + (h @ W_h + b_h)[:, HIDDEN:2 * HIDDEN])
    course = torch.tanh((x @ W_x + b_x)[:, 2 * HIDDEN:] + (R * h) @ W_h[:, 2 * HIDDEN:]
                        + b_h[2 * HIDDEN:])
    course_h = Z * h + (1 - Z) * course
    assert (gru_cell(x, h, (W_x, W_h, b_x, b_h)) - course_h).abs().max() > 1e-3


@pytest.mark.parametrize("N", [3, 1])
def test_lstm_cell_matches_torch(N):
    torch.manual_seed(4)
    weights = _cell_weights(nn.LSTMCell(INPUT, HIDDEN).double())

    def ours(x, h, c, W_ih, W_hh, b_ih, b_hh):
        return lstm_cell(x, (h, c), (W_ih.T, W_hh.T, b_ih, b_hh))

    def ref(x, h, c, W_ih, W_hh, b_ih, b_hh):
        return torch.func.functional_call(
            nn.LSTMCell(INPUT, HIDDEN).double(),
            {"weight_ih": W_ih, "weight_hh": W_hh, "bias_ih": b_ih, "bias_hh": b_hh},
            (x, (h, c)))

    x, h, c = randn(N, INPUT, seed=8), randn(N, HIDDEN, seed=9), randn(N, HIDDEN, seed=10)
    _assert_same_cell(ours, ref, [x, h, c, *weights])


def _params_with_grads(scale, seed):
    params = [torch.zeros(3, 4, dtype=f64, requires_grad=True),
              torch.zeros(5, dtype=f64, requires_grad=True),
              torch.zeros(2, dtype=f64, requires_grad=True)]  # no gradient: skipped
    params[0].grad = scale * randn(3, 4, seed=seed)
    params[1].grad = scale * randn(5, seed=seed + 1)
    return params


# The last case has a norm near 1e-3, where clip_grad_norm_'s 1e-6 in the scale is visible.
@pytest.mark.parametrize("scale, max_norm", [(10.0, 1.0), (0.1, 1.0), (1.0, 0.5), (1e-4, 1e-5)])
def test_clip_gradients_matches_clip_grad_norm(scale, max_norm):
    ours, ref = _params_with_grads(scale, seed=11), _params_with_grads(scale, seed=11)
    before = [p.grad.clone() for p in ours[:2]]
    norm = clip_gradients(ours, max_norm)
    ref_norm = nn.utils.clip_grad_norm_(ref, max_norm)
    # Relative tolerance only: the gradients of the last case are far below the default atol.
    torch.testing.assert_close(norm, ref_norm, rtol=1e-7, atol=0)
    for p, p_ref in zip(ours[:2], ref[:2], strict=True):
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-7, atol=0)
    assert ours[2].grad is None
    new_norm = torch.sqrt(sum((p.grad ** 2).sum() for p in ours[:2]))
    if norm > max_norm:
        torch.testing.assert_close(new_norm, torch.tensor(max_norm, dtype=f64), rtol=1e-2, atol=0)
    else:
        for p, g in zip(ours[:2], before, strict=True):
            assert torch.equal(p.grad, g)


def test_clip_gradients_takes_one_tensor_and_rejects_bad_max_norm():
    p, p_ref = _params_with_grads(5.0, seed=12)[0], _params_with_grads(5.0, seed=12)[0]
    torch.testing.assert_close(clip_gradients(p, 2.0), nn.utils.clip_grad_norm_(p_ref, 2.0))
    torch.testing.assert_close(p.grad, p_ref.grad)
    for bad in (0, -1.0, "1"):
        with pytest.raises(DivekitError, match="max_norm"):
            clip_gradients(p, bad)


def test_scratch_layer_trains():
    # A single-step GRU regression: a few clipped SGD steps lower the loss well below its start.
    torch.manual_seed(5)
    model = GRUScratch(INPUT, HIDDEN, num_layers=2, bidirectional=True).double()
    x, y = randn(4, 8, INPUT, seed=13), randn(4, 8, 2 * HIDDEN, seed=14).tanh() * 0.5
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for _ in range(30):
        loss = ((model(x)[0] - y) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        clip_gradients(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("kind", KINDS)
def test_bad_shapes_raise(kind):
    ours, _ = _pair(kind, 2, True)
    x = randn(5, 3, INPUT, seed=0)
    with pytest.raises(DivekitError, match="input_size is 4"):
        ours(randn(5, 3, INPUT + 1, seed=0))
    with pytest.raises(DivekitError, match=r"\(T, N, input_size\)"):
        ours(randn(5, INPUT, seed=0))
    with pytest.raises(DivekitError, match="at least one time step"):
        ours(randn(0, 3, INPUT, seed=0))
    good = _state(kind, 2, True, 3, seed=1)
    for bad_shape in [(2, 3, HIDDEN), (4, 2, HIDDEN), (4, 3, HIDDEN + 1)]:  # layers, N, hidden
        bad = randn(*bad_shape, seed=2)
        bad = (bad, good[1]) if kind == "lstm" else bad
        with pytest.raises(DivekitError, match=r"initial state h must have shape .*\(4, 3, 3\)"):
            ours(x, bad)
    if kind == "lstm":
        with pytest.raises(DivekitError, match="initial state c"):
            ours(x, (good[0], randn(4, 3, HIDDEN + 1, seed=3)))
        with pytest.raises(DivekitError, match=r"tuple \(h and c\)"):
            ours(x, good[0])


def test_bad_constructor_arguments_raise():
    with pytest.raises(DivekitError, match="hidden_size"):
        RNNScratch(INPUT, 0)
    with pytest.raises(DivekitError, match="num_layers"):
        GRUScratch(INPUT, HIDDEN, num_layers=1.5)
    with pytest.raises(DivekitError, match="bidirectional"):
        LSTMScratch(INPUT, HIDDEN, bidirectional="yes")


def test_cells_reject_bad_shapes():
    x, h = randn(3, INPUT, seed=0), randn(3, HIDDEN, seed=1)
    W_x, W_h, b = randn(INPUT, HIDDEN, seed=2), randn(HIDDEN, HIDDEN, seed=3), randn(HIDDEN)
    with pytest.raises(DivekitError, match=r"input weight must have shape \(4, 3\)"):
        rnn_cell(x, h, W_x.T, W_h, b)
    with pytest.raises(DivekitError, match="h of shape"):
        rnn_cell(x, randn(2, HIDDEN), W_x, W_h, b)
    gru = (randn(INPUT, 3 * HIDDEN), randn(HIDDEN, 3 * HIDDEN), randn(3 * HIDDEN), randn(HIDDEN))
    with pytest.raises(DivekitError, match=r"bias must have shape \(9,\)"):
        gru_cell(x, h, gru)
    lstm = (randn(INPUT, 4 * HIDDEN), randn(HIDDEN, 4 * HIDDEN), randn(4 * HIDDEN),
            randn(4 * HIDDEN))
    with pytest.raises(DivekitError, match="memory cell c"):
        lstm_cell(x, (h, randn(3, HIDDEN + 1)), lstm)
    with pytest.raises(DivekitError, match=r"hidden weight must have shape \(3, 12\)"):
        lstm_cell(x, (h, h), (lstm[0], randn(HIDDEN, 3 * HIDDEN), lstm[2], lstm[3]))
