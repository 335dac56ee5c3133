import pytest
import torch
import torch.nn.functional as F
from torch import nn

from divekit import Trainer
from divekit.errors import DivekitError
from divekit.scratch.norm import BatchNorm, batch_norm, layer_norm

SHAPES = [(8, 5), (4, 3, 5, 6), (1, 3, 4, 5)]  # fully connected, conv, conv with a batch of 1


def _randn(*shape, gen, requires_grad=False, scale=1.0, shift=0.0):
    x = torch.randn(*shape, generator=gen, dtype=torch.float64) * scale + shift
    return x.requires_grad_(requires_grad)


@pytest.mark.parametrize("shape", SHAPES)
def test_batch_norm_training_values_and_gradients(shape):
    gen = torch.Generator().manual_seed(0)
    C = shape[1]
    X = _randn(*shape, gen=gen, requires_grad=True, scale=2.0, shift=1.5)
    gamma = _randn(C, gen=gen, requires_grad=True)
    beta = _randn(C, gen=gen, requires_grad=True)
    ours = batch_norm(X, gamma, beta, torch.zeros(C, dtype=torch.float64),
                      torch.ones(C, dtype=torch.float64), training=True)
    ref = F.batch_norm(X, torch.zeros(C, dtype=torch.float64), torch.ones(C, dtype=torch.float64),
                       gamma, beta, training=True)
    torch.testing.assert_close(ours, ref)
    upstream = _randn(*shape, gen=gen)
    inputs = (X, gamma, beta)
    got = torch.autograd.grad(ours, inputs, upstream)
    expected = torch.autograd.grad(ref, inputs, upstream)
    for g, g_ref in zip(got, expected, strict=True):
        torch.testing.assert_close(g, g_ref)


@pytest.mark.parametrize("shape", SHAPES)
def test_running_statistics_follow_torch_then_eval_uses_them(shape):
    gen = torch.Generator().manual_seed(1)
    C = shape[1]
    gamma, beta = _randn(C, gen=gen), _randn(C, gen=gen)
    ours_mean, ours_var = torch.zeros(C, dtype=torch.float64), torch.ones(C, dtype=torch.float64)
    ref_mean, ref_var = ours_mean.clone(), ours_var.clone()
    for _ in range(4):
        X = _randn(*shape, gen=gen, scale=3.0, shift=2.0)
        batch_norm(X, gamma, beta, ours_mean, ours_var, training=True, momentum=0.3)
        F.batch_norm(X, ref_mean, ref_var, gamma, beta, training=True, momentum=0.3)
    torch.testing.assert_close(ours_mean, ref_mean)
    torch.testing.assert_close(ours_var, ref_var)
    # The statistics moved towards the data (mean ~2, var ~9): the update really happened.
    assert (ours_mean > 0.5).all() and (ours_var > 2.0).all()

    X = _randn(*shape, gen=gen, requires_grad=True)
    ours = batch_norm(X, gamma, beta, ours_mean, ours_var, training=False)
    ref = F.batch_norm(X, ref_mean, ref_var, gamma, beta, training=False)
    torch.testing.assert_close(ours, ref)
    upstream = _randn(*shape, gen=gen)
    torch.testing.assert_close(torch.autograd.grad(ours, X, upstream)[0],
                               torch.autograd.grad(ref, X, upstream)[0])
    torch.testing.assert_close(ours_mean, ref_mean)  # evaluation leaves them alone


@pytest.mark.parametrize("num_dims, torch_cls, shape", [
    (2, nn.BatchNorm1d, (6, 4)), (4, nn.BatchNorm2d, (3, 4, 5, 5)),
])
def test_batchnorm_module_trains_like_torch(num_dims, torch_cls, shape):
    gen = torch.Generator().manual_seed(2)
    C = shape[1]
    ours = BatchNorm(C, num_dims=num_dims).double()
    ref = torch_cls(C).double()
    with torch.no_grad():
        ref.weight.copy_(_randn(C, gen=gen))
        ref.bias.copy_(_randn(C, gen=gen))
        ours.gamma.copy_(ref.weight)
        ours.beta.copy_(ref.bias)
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.1)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1)
    target = _randn(*shape, gen=gen)
    for _ in range(3):
        X = _randn(*shape, gen=gen, scale=2.0, shift=-1.0)
        for module, opt in ((ours, opt_ours), (ref, opt_ref)):
            opt.zero_grad()
            ((module(X) - target) ** 2).sum().backward()
            opt.step()
        torch.testing.assert_close(ours.gamma.grad, ref.weight.grad)
        torch.testing.assert_close(ours.beta.grad, ref.bias.grad)
    torch.testing.assert_close(ours.gamma, ref.weight)
    torch.testing.assert_close(ours.beta, ref.bias)
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.running_var, ref.running_var)

    ours.eval()
    ref.eval()
    X = _randn(*shape, gen=gen)
    torch.testing.assert_close(ours(X), ref(X))


def test_batchnorm_module_state_dict_holds_buffers():
    state = BatchNorm(3, num_dims=4).state_dict()
    assert set(state) == {"gamma", "beta", "running_mean", "running_var"}


def test_batchnorm_sits_in_a_sequential_and_trains_with_the_trainer(blob_data):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), BatchNorm(4, num_dims=4), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 8 * 8, 16), BatchNorm(16, num_dims=2),
                          nn.ReLU(), nn.Linear(16, 4))
    history = Trainer(max_epochs=1, lr=0.1, progress=False).fit(model, blob_data)
    assert history[-1]["test_acc"] > 0.9  # four classes: chance is 0.25
    assert model[1].running_var.ne(1).all()  # training updated the running statistics


@pytest.mark.parametrize("call", [
    lambda: batch_norm(torch.zeros(1, 3), torch.ones(3), torch.zeros(3), torch.zeros(3),
                       torch.ones(3), training=True),  # one value per feature
    lambda: batch_norm(torch.zeros(4, 3, 2), torch.ones(3), torch.zeros(3), torch.zeros(3),
                       torch.ones(3), training=True),  # 3-D input
    lambda: batch_norm(torch.zeros(4, 3), torch.ones(2), torch.zeros(3), torch.zeros(3),
                       torch.ones(3), training=True),  # gamma of the wrong size
    lambda: BatchNorm(3, num_dims=3),
    lambda: BatchNorm(3, num_dims=2)(torch.zeros(2, 3, 4, 4)),
    lambda: layer_norm(torch.zeros(2, 3), 4),
    lambda: layer_norm(torch.zeros(2, 3), 3, weight=torch.ones(2)),
])
def test_bad_arguments_raise(call):
    with pytest.raises(DivekitError):
        call()


@pytest.mark.parametrize("shape, normalized_shape, affine", [
    ((4, 6), 6, True), ((2, 3, 5), (5,), False), ((2, 3, 4, 5), (4, 5), True),
    ((1, 7), [7], True), ((2, 3, 4), (3, 4), False),
])
def test_layer_norm_matches_torch(shape, normalized_shape, affine):
    gen = torch.Generator().manual_seed(4)
    norm_shape = (normalized_shape,) if isinstance(normalized_shape, int) else normalized_shape
    X = _randn(*shape, gen=gen, requires_grad=True, scale=3.0, shift=-2.0)
    inputs = [X]
    weight = bias = None
    if affine:
        weight = _randn(*norm_shape, gen=gen, requires_grad=True)
        bias = _randn(*norm_shape, gen=gen, requires_grad=True)
        inputs += [weight, bias]
    ours = layer_norm(X, normalized_shape, weight, bias)
    ref = F.layer_norm(X, list(norm_shape), weight, bias)
    torch.testing.assert_close(ours, ref)
    upstream = _randn(*shape, gen=gen)
    got = torch.autograd.grad(ours, inputs, upstream)
    expected = torch.autograd.grad(ref, inputs, upstream)
    for g, g_ref in zip(got, expected, strict=True):
        torch.testing.assert_close(g, g_ref)
