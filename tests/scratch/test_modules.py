import copy
import math
import os

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from divekit.errors import DivekitError
from divekit.scratch.modules import (
    LinearScratch,
    Sequential,
    init_constant,
    init_custom,
    init_normal,
    init_xavier_uniform,
    load_parameters,
    named_parameter_table,
    save_parameters,
)


def grads(output, tensors):
    """Gradients of a fixed random projection of ``output`` (checks every output entry)."""
    weights = torch.randn(output.shape, generator=torch.Generator().manual_seed(9),
                          dtype=output.dtype)
    return torch.autograd.grad((output * weights).sum(), tensors)


# ----------------------------------------------------------------------------- layers
@pytest.mark.parametrize("batch", [1, 5])
def test_sequential_equals_nn_sequential_with_the_same_layers(batch):
    torch.manual_seed(0)
    layers = [nn.Linear(4, 7), nn.ReLU(), nn.Linear(7, 3), nn.ReLU(), nn.Linear(3, 2)]
    ours, ref = Sequential(*layers).double(), nn.Sequential(*layers).double()
    X = torch.randn(batch, 4, dtype=torch.float64, requires_grad=True)
    params = list(ref.parameters())
    out, expected = ours(X), ref(X)
    assert torch.equal(out, expected)
    for g, g_ref in zip(grads(out, [X, *params]), grads(expected, [X, *params]), strict=True):
        assert torch.equal(g, g_ref)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]


def test_empty_sequential_is_the_identity_and_non_modules_are_refused():
    X = torch.randn(2, 3)
    assert torch.equal(Sequential()(X), X)
    with pytest.raises(DivekitError, match="argument 1"):
        Sequential(nn.ReLU(), lambda x: x)


@pytest.mark.parametrize("shape", [(1, 5), (4, 5), (2, 3, 5)])
def test_linear_scratch_equals_f_linear_with_transposed_weight(shape):
    torch.manual_seed(1)
    layer = LinearScratch(5, 3).double()
    with torch.no_grad():
        layer.bias.normal_()  # a zero bias would hide a wrong broadcast
    W = layer.weight.detach().clone().requires_grad_()
    b = layer.bias.detach().clone().requires_grad_()
    X = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    out, expected = layer(X), F.linear(X, W.T, b)
    assert out.shape == (*shape[:-1], 3)
    torch.testing.assert_close(out, expected)
    ours = grads(out, [X, layer.weight, layer.bias])
    for g, g_ref in zip(ours, grads(expected, [X, W, b]), strict=True):
        torch.testing.assert_close(g, g_ref)


def test_linear_scratch_initialisation_and_errors():
    torch.manual_seed(2)
    layer = LinearScratch(1000, 1000)
    assert layer.weight.shape == (1000, 1000) and layer.bias.shape == (1000,)
    assert abs(layer.weight.std().item() - 0.01) < 2e-4
    assert abs(layer.weight.mean().item()) < 2e-4
    assert torch.equal(layer.bias, torch.zeros(1000))
    with pytest.raises(DivekitError, match=r"\(\.\.\., 1000\)"):
        layer(torch.randn(2, 999))
    for bad in (0, -1, 2.0, True):
        with pytest.raises(DivekitError, match="in_features"):
            LinearScratch(bad, 3)


# ----------------------------------------------------------------------------- parameters
def test_named_parameter_table_lists_names_shapes_and_sizes():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    table = named_parameter_table(net)
    assert table == [(n, tuple(p.shape), p.numel()) for n, p in net.named_parameters()]
    assert [(name, shape) for name, shape, _ in table] == [
        ("0.weight", (8, 4)), ("0.bias", (8,)), ("2.weight", (1, 8)), ("2.bias", (1,)),
    ]
    assert sum(numel for *_, numel in table) == 4 * 8 + 8 + 8 + 1


def mixed_net():
    return nn.Sequential(
        nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(),
        Sequential(nn.Linear(4 * 4 * 4, 10), nn.ReLU(), LinearScratch(10, 3)),
    )


def test_init_constant_sets_exactly_the_value_in_every_layer():
    net = mixed_net()
    assert init_constant(net, 0.25) == 3
    for name, p in net.named_parameters():
        assert torch.equal(p, torch.full_like(p, 0.0 if name.endswith("bias") else 0.25)), name


def test_init_normal_moments():
    layer = nn.Linear(1000, 1000, dtype=torch.float64)
    assert init_normal(layer, std=0.01, generator=torch.Generator().manual_seed(0)) == 1
    # 1e6 samples: the standard error of the std and the mean is 1e-5, the bounds are 20 of it.
    assert abs(layer.weight.std().item() - 0.01) < 2e-4
    assert abs(layer.weight.mean().item()) < 2e-4
    assert torch.equal(layer.bias, torch.zeros(1000, dtype=torch.float64))
    net = mixed_net()
    assert init_normal(net, std=0.5) == 3  # every Linear/Conv layer of a nested network
    biases = [p for name, p in net.named_parameters() if name.endswith("bias")]
    assert all(torch.equal(b, torch.zeros_like(b)) for b in biases)


@pytest.mark.parametrize("layer", [
    nn.Linear(300, 700), nn.Conv2d(16, 32, 5), nn.Conv2d(16, 32, 3, groups=4),
    nn.Conv1d(8, 4, 7), LinearScratch(60, 200),
], ids=["linear", "conv2d", "conv2d-groups", "conv1d", "linear-scratch"])
def test_xavier_bound_equals_torch_and_samples_fill_it(layer):
    weight = layer.weight.T if isinstance(layer, LinearScratch) else layer.weight
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(weight)
    a = math.sqrt(6 / (fan_in + fan_out))
    init_xavier_uniform(layer, generator=torch.Generator().manual_seed(0))
    assert layer.weight.abs().max().item() <= a
    # >= 12000 samples: the chance that none lies in the top 1% of [0, a] is below e^-120.
    assert layer.weight.abs().max().item() >= 0.99 * a
    assert torch.equal(layer.bias, torch.zeros_like(layer.bias))


def test_xavier_variance_on_a_big_layer():
    layer = nn.Linear(1000, 500, dtype=torch.float64)
    init_xavier_uniform(layer, generator=torch.Generator().manual_seed(0))
    a = math.sqrt(6 / 1500)
    # 5e5 samples of U(-a, a): the relative standard error of the variance is 0.13%.
    assert abs(layer.weight.var().item() / (a * a / 3) - 1) < 0.02
    assert abs(layer.weight.mean().item()) < 0.02 * a


def test_init_custom_zeroes_small_weights():
    layer = nn.Linear(1000, 1000, dtype=torch.float64)
    init_custom(layer, generator=torch.Generator().manual_seed(0))
    w = layer.weight.abs()
    assert not ((w > 0) & (w < 5)).any()
    assert ((w[w > 0] >= 5) & (w[w > 0] <= 10)).all()
    # Half the weights are zeroed: standard error 5e-4 on 1e6 samples, bound 10 of it.
    assert abs((w == 0).double().mean().item() - 0.5) < 5e-3
    assert torch.equal(layer.bias, torch.zeros(1000, dtype=torch.float64))


# ----------------------------------------------------------------------------- tied layers
def test_tied_layer_shares_one_tensor_and_sums_gradients():
    torch.manual_seed(3)
    first, shared, last = LinearScratch(3, 4), LinearScratch(4, 4), LinearScratch(4, 1)
    with torch.no_grad():
        shared.bias.normal_()
    tied = Sequential(first, nn.ReLU(), shared, nn.ReLU(), shared, nn.ReLU(), last).double()
    assert tied.get_submodule("2").weight.data_ptr() == tied.get_submodule("4").weight.data_ptr()
    assert len(named_parameter_table(tied)) == 6  # the shared pair is listed once
    copy_a, copy_b = copy.deepcopy(shared), copy.deepcopy(shared)
    untied = Sequential(copy.deepcopy(first), nn.ReLU(), copy_a, nn.ReLU(), copy_b, nn.ReLU(),
                        copy.deepcopy(last))
    X = torch.randn(6, 3, dtype=torch.float64)
    out, expected = tied(X), untied(X)
    torch.testing.assert_close(out, expected)
    g_weight, g_bias = grads(out, [shared.weight, shared.bias])
    ga_weight, ga_bias, gb_weight, gb_bias = grads(
        expected, [copy_a.weight, copy_a.bias, copy_b.weight, copy_b.bias])
    torch.testing.assert_close(g_weight, ga_weight + gb_weight)
    torch.testing.assert_close(g_bias, ga_bias + gb_bias)
    assert not torch.allclose(ga_weight, gb_weight)  # both uses contribute


# ----------------------------------------------------------------------------- file I/O
def saved_net():
    return Sequential(LinearScratch(4, 8), nn.ReLU(), nn.Linear(8, 3), nn.BatchNorm1d(3))


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(4)
    net = saved_net()
    net(torch.randn(16, 4))  # moves the batch-norm running statistics away from their init
    path = tmp_path / "net.safetensors"
    save_parameters(net, path)
    assert set(safetensors.torch.load_file(path)) == set(net.state_dict())
    fresh = saved_net()
    load_parameters(fresh, path)
    for (name, value), (_, loaded) in zip(net.state_dict().items(), fresh.state_dict().items(),
                                          strict=True):
        assert torch.equal(value, loaded), name
    X = torch.randn(5, 4)
    assert torch.equal(net.eval()(X), fresh.eval()(X))


def test_save_load_tied_model(tmp_path):
    def tied_net():
        shared = LinearScratch(4, 4)
        return Sequential(shared, nn.ReLU(), shared)

    torch.manual_seed(5)
    net, fresh = tied_net(), tied_net()
    save_parameters(net, tmp_path / "tied.safetensors")
    load_parameters(fresh, tmp_path / "tied.safetensors")
    assert fresh.get_submodule("0") is fresh.get_submodule("2")
    assert torch.equal(fresh.get_submodule("2").weight, net.get_submodule("2").weight)


@pytest.mark.parametrize("other, message", [
    (lambda: Sequential(LinearScratch(5, 8), nn.ReLU(), nn.Linear(8, 3), nn.BatchNorm1d(3)),
     r"shape mismatch.*0\.weight.*\(4, 8\).*\(5, 8\)"),
    (lambda: Sequential(LinearScratch(4, 8), nn.ReLU(), nn.Linear(8, 3), nn.BatchNorm1d(3),
                        nn.Linear(3, 1)),
     r"missing keys \['4\.weight', '4\.bias'\]"),
    (lambda: Sequential(LinearScratch(4, 8), nn.ReLU(), nn.Linear(8, 3)),
     r"unexpected keys \['3\.bias', '3\.num_batches_tracked', .*'3\.weight'\]"),
], ids=["shape", "missing", "unexpected"])
def test_load_refuses_a_different_model_and_changes_nothing(tmp_path, other, message):
    save_parameters(saved_net(), tmp_path / "net.safetensors")
    model = other()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(DivekitError, match=message):
        load_parameters(model, tmp_path / "net.safetensors")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_load_and_save_errors_name_the_file(tmp_path):
    with pytest.raises(DivekitError, match="no parameter file"):
        load_parameters(saved_net(), tmp_path / "absent.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DivekitError, match="junk.safetensors"):
        load_parameters(saved_net(), tmp_path / "junk.safetensors")
    with pytest.raises(DivekitError, match="does not exist"):
        save_parameters(saved_net(), tmp_path / "no-such-folder" / "net.safetensors")


def test_crash_during_save_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "net.safetensors"
    save_parameters(saved_net(), path)
    original = path.read_bytes()

    def crash(tensors, filename, *args, **kwargs):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        save_parameters(saved_net(), path)
    assert path.read_bytes() == original
    assert os.listdir(tmp_path) == ["net.safetensors"]
