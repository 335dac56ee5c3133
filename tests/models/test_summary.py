"""Model summary: MACs by formula and against published figures, shapes against a real forward."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import divekit as dk
from divekit.errors import DivekitError
from divekit.models import alexnet, densenet, lenet, resnet, rnn, vgg  # noqa: F401  (registration)
from divekit.models.summary import summarize, summary_for

pytestmark = pytest.mark.usefixtures("one_thread")


def real_forward_record(model: nn.Module, x: torch.Tensor) -> dict[str, tuple]:
    """Output shape of every named module in a real forward pass (last call wins)."""
    shapes = {}
    handles = []
    for name, module in model.named_modules():
        def record(module, inputs, output, name=name):
            first = output[0] if isinstance(output, tuple) else output
            shapes[name] = tuple(first.shape)
        handles.append(module.register_forward_hook(record))
    with torch.no_grad():
        model.eval()(x)
    for handle in handles:
        handle.remove()
    return shapes


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    return (size + 2 * padding - kernel) // stride + 1


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_conv2d_macs_follow_the_formula(groups):
    conv = nn.Conv2d(4, 8, (3, 5), stride=2, padding=(1, 2), groups=groups)
    summary = summarize(nn.Sequential(conv), (2, 4, 9, 11))
    h, w = conv_out(9, 3, 2, 1), conv_out(11, 5, 2, 2)
    assert summary.rows[0].output_shape == (2, 8, h, w)
    assert summary.macs == 2 * 4 * 8 * 3 * 5 * h * w // groups


def test_conv1d_and_linear_macs_follow_the_formula():
    model = nn.Sequential(nn.Conv1d(6, 10, 3, groups=2), nn.Flatten(), nn.Linear(10 * 5, 7))
    summary = summarize(model, (3, 6, 7))
    conv, _, linear = summary.rows
    assert conv.macs == 3 * 6 * 10 * 3 * conv_out(7, 3) // 2
    assert linear.macs == 3 * 50 * 7
    assert summary.macs == conv.macs + linear.macs


def test_linear_counts_every_leading_position():
    summary = summarize(nn.Linear(7, 5), (2, 4, 7))
    assert summary.rows == [] and summary.macs == 2 * 4 * 7 * 5


@pytest.mark.parametrize(("cell", "options"), [
    (nn.RNN, {}), (nn.GRU, {"num_layers": 2}), (nn.LSTM, {"bidirectional": True}),
    (nn.LSTM, {"num_layers": 2, "proj_size": 3, "bidirectional": True}),
])
def test_recurrent_macs_are_the_weight_matrices_times_the_steps(cell, options):
    # Each step multiplies the input and the state by every weight matrix once.
    layer = cell(5, 6, batch_first=True, **options)
    summary = summarize(nn.Sequential(layer), (3, 4, 5))
    weights = sum(p.numel() for name, p in layer.named_parameters() if name.startswith("weight"))
    assert summary.macs == 3 * 4 * weights


def test_norm_pool_and_activations_cost_nothing():
    model = nn.Sequential(nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2), nn.AvgPool2d(2),
                          nn.AdaptiveAvgPool2d(1), nn.Dropout(), nn.Flatten())
    summary = summarize(model, (2, 3, 8, 8))
    assert summary.macs == 0
    assert [row.output_shape for row in summary.rows][-3:] == [(2, 3, 1, 1)] * 2 + [(2, 3)]


class Attend(nn.Module):
    """Queries from the input; keys and values from a learned memory of ``source`` steps."""

    def __init__(self, width, heads, source, kdim, vdim, batch_first=True, **options):
        super().__init__()
        self.batch_first = batch_first
        self.attn = nn.MultiheadAttention(width, heads, kdim=kdim, vdim=vdim,
                                          batch_first=batch_first, **options)
        self.keys = nn.Parameter(torch.randn(source, 1, kdim))
        self.values = nn.Parameter(torch.randn(source, 1, vdim))

    def forward(self, x):
        batch = x.shape[0 if self.batch_first else 1]
        keys, values = (m.expand(-1, batch, -1) for m in (self.keys, self.values))
        if self.batch_first:
            keys, values = keys.transpose(0, 1), values.transpose(0, 1)
        return self.attn(x, key=keys, value=values)[0]


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("extra_keys", [0, 2])
def test_multihead_attention_macs_are_its_projections_and_two_products(batch_first, extra_keys):
    batch, length, source, width, kdim, vdim = 2, 5, 3, 8, 6, 4
    options = {"add_bias_kv": True, "add_zero_attn": True} if extra_keys else {}
    model = nn.Sequential(Attend(width, 2, source, kdim, vdim, batch_first, **options),
                          nn.Linear(width, 7))
    shape = (batch, length, width) if batch_first else (length, batch, width)
    summary = summarize(model, shape, depth=None)
    projections = batch * (length * width * width + source * kdim * width
                           + source * vdim * width + length * width * width)
    products = 2 * batch * length * (source + extra_keys) * width  # Q K^T and A V, all heads
    head = batch * length * width * 7
    attn, linear = summary.rows
    # out_proj is a weight the module multiplies by, not a layer it calls: one leaf row.
    assert (attn.name, attn.type, attn.output_shape) == ("0.attn", "MultiheadAttention", shape)
    assert attn.params == dk.count_parameters(model[0].attn)
    assert attn.macs == projections + products and linear.macs == head
    assert summary.macs == projections + products + head
    assert sum(row.params for row in summary.rows) + source * (kdim + vdim) \
        == summary.total_params


def test_transformer_encoder_layer_counts_attention_and_feed_forward():
    batch, steps, width, hidden = 2, 5, 8, 16
    layer = nn.TransformerEncoderLayer(width, 2, hidden, batch_first=True)
    summary = summarize(nn.Sequential(layer), (batch, steps, width), depth=None)
    attention = batch * (4 * steps * width * width + 2 * steps * steps * width)
    feed_forward = 2 * batch * steps * width * hidden
    assert summary.macs == attention + feed_forward
    assert sum(row.macs for row in summary.rows) == summary.macs
    assert sum(row.params for row in summary.rows) == summary.total_params


class CausalSelfAttention(nn.Module):
    """A GPT block's attention: one fused QKV projection, SDPA over the heads, a projection."""

    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x):
        batch, steps, width = x.shape
        q, k, v = self.qkv(x).view(batch, steps, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(batch, steps, width))


def test_scaled_dot_product_attention_is_counted_for_the_module_that_calls_it():
    batch, steps, width, heads = 3, 6, 8, 2
    model = nn.Sequential(CausalSelfAttention(width, heads), nn.ReLU(), nn.Linear(width, 5))
    qkv, proj = batch * steps * width * 3 * width, batch * steps * width * width
    # Per (example, head): steps x steps scores of width/heads, then steps x steps weights
    # times values of width/heads; masked (causal) entries are counted too.
    sdpa = batch * heads * steps * steps * 2 * (width // heads)
    head = batch * steps * width * 5
    leaves = summarize(model, (batch, steps, width), depth=None)
    assert [(row.name, row.type, row.macs) for row in leaves.rows] == [
        ("0.qkv", "Linear", qkv), ("0.proj", "Linear", proj),
        ("0.scaled_dot_product_attention", "function", sdpa), ("1", "ReLU", 0),
        ("2", "Linear", head)]
    assert leaves.rows[2].output_shape == (batch, heads, steps, width // heads)
    assert leaves.rows[2].params == 0
    top = summarize(model, (batch, steps, width), depth=1)
    assert [row.macs for row in top.rows] == [qkv + sdpa + proj, 0, head]
    for summary in (leaves, top):
        assert summary.macs == qkv + sdpa + proj + head
        assert sum(row.macs for row in summary.rows) == summary.macs
        assert sum(row.params for row in summary.rows) == summary.total_params
    # Every leaf output, the attention's included, in float32.
    outputs = batch * steps * (3 * width + width + width + width + 5)
    assert leaves.activation_bytes == 4 * outputs


class Retrieve(nn.Module):
    """SDPA in the root module's own forward, with keywords, other widths and broadcasting."""

    def __init__(self):
        super().__init__()
        self.keys = nn.Parameter(torch.randn(3, 6, 5))  # (heads, S, E), shared by the batch
        self.values = nn.Parameter(torch.randn(3, 6, 7))  # (heads, S, Ev)

    def forward(self, query):
        return F.scaled_dot_product_attention(query, key=self.keys, value=self.values)


def test_scaled_dot_product_attention_in_the_root_forward_counts_in_the_total():
    summary = summarize(Retrieve(), (2, 3, 4, 5))
    macs = 2 * 3 * (4 * 6 * 5 + 4 * 6 * 7)  # batch * heads * (L S E + L S Ev)
    assert [(row.name, row.depth, row.output_shape, row.macs) for row in summary.rows] == [
        ("scaled_dot_product_attention", 1, (2, 3, 4, 7), macs)]
    assert summary.macs == macs


def test_attention_summary_runs_on_meta_for_real_and_meta_built_models():
    torch.manual_seed(0)
    real = nn.Sequential(CausalSelfAttention(8, 2), Attend(8, 2, 3, 6, 4))
    with torch.device("meta"):
        meta = nn.Sequential(CausalSelfAttention(8, 2), Attend(8, 2, 3, 6, 4))
    summaries = [summarize(model, (2, 5, 8), depth=None) for model in (real, meta)]
    assert summaries[0].rows == summaries[1].rows and summaries[0].macs == summaries[1].macs
    assert summaries[0].macs == (2 * 5 * 8 * 32 + 2 * 2 * 5 * 5 * 8  # the GPT block
                                 + 2 * (2 * 5 * 64 + 3 * 10 * 8 + 2 * 5 * 3 * 8))  # Attend
    assert all(p.device.type == "cpu" for p in real.parameters())
    assert torch._C._len_torch_function_stack() == 0  # the counting mode is gone
    # The row shapes are those of a real forward.
    expected = real_forward_record(real, torch.randn(2, 5, 8))
    rows = {row.name: row.output_shape for row in summaries[0].rows}
    assert rows["1.attn"] == expected["1.attn"] and rows["0.proj"] == expected["0.proj"]


def test_published_resnet18_macs():
    summary = summary_for("resnet18", (3, 224, 224), num_classes=1000)
    assert summary.total_params == 11_689_512
    assert summary.macs == pytest.approx(1.814e9, rel=0.01)


def test_published_vgg16_macs():
    summary = summary_for("vgg16", (3, 224, 224), num_classes=1000)
    assert summary.total_params == 138_357_544
    assert summary.macs == pytest.approx(15.5e9, rel=0.01)


def test_course_alexnet_macs_by_formula():
    # The course's AlexNet at 224 (96-256-384-384-256 channels, 54-26-12-12-12 pixels).
    convs = (3 * 96 * 11**2 * 54**2 + 96 * 256 * 5**2 * 26**2
             + (256 * 384 + 384 * 384 + 384 * 256) * 3**2 * 12**2)
    dense = 6400 * 4096 + 4096 * 4096 + 4096 * 1000
    summary = summary_for("alexnet", (3, 224, 224), num_classes=1000)
    assert summary.macs == convs + dense


@pytest.mark.parametrize(("name", "shape"), [
    ("resnet-cpu", (1, 28, 28)), ("densenet-d2l", (1, 28, 28)), ("lenet-bn", (1, 28, 28)),
    ("resnet18-d2l", (3, 96, 96)),
])
def test_shapes_and_activations_match_a_real_forward(name, shape):
    torch.manual_seed(0)
    model = dk.create_model(name, in_channels=shape[0], image_size=shape[-1]) \
        if "image_size" in dk.model_info(name).options() else dk.create_model(name)
    summary = summarize(model, (2, *shape), depth=None)
    # Real weights, meta forward: the model keeps its weights and its training mode.
    assert model.training and all(p.device.type == "cpu" for p in model.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    expected = real_forward_record(model, torch.randn(2, *shape))
    leaves = {n for n, m in model.named_modules() if not list(m.children())}
    assert {row.name for row in summary.rows} == leaves
    for row in summary.rows:
        assert row.output_shape == expected.get(row.name), row.name
    element = 4  # float32
    leaf_outputs = sum(math.prod(expected[n]) for n in leaves if n in expected)
    assert summary.activation_bytes >= element * leaf_outputs  # multi-output leaves add more


def test_meta_built_and_real_models_give_the_same_summary():
    torch.manual_seed(0)
    real = summarize(dk.create_model("resnet18-d2l", image_size=96), (1, 1, 96, 96))
    meta = summary_for("resnet18-d2l", (1, 96, 96))
    assert meta.model == "resnet18-d2l" and real.model == "Sequential"
    assert real.rows == meta.rows and real.macs == meta.macs
    assert real.activation_bytes == meta.activation_bytes


def test_totals_and_frozen_parameters():
    model = dk.create_model("lenet")
    for p in model[0].parameters():
        p.requires_grad_(False)
    summary = summarize(model, (1, 1, 28, 28), depth=None)
    frozen = 6 * 25 + 6
    assert summary.total_params == dk.count_parameters(model) == 61_706
    assert summary.trainable_params == 61_706 - frozen
    assert summary.rows[0].params == frozen and summary.rows[0].trainable_params == 0
    assert sum(row.params for row in summary.rows) == summary.total_params
    assert "Non-trainable params: 156" in str(summary)


def test_shared_parameters_are_counted_once_in_the_total():
    shared = nn.Linear(4, 4)
    summary = summarize(nn.Sequential(shared, nn.ReLU(), shared), (2, 4), depth=None)
    assert summary.total_params == 20
    assert summary.macs == 2 * 2 * 16  # called twice


def test_depth_groups_children_into_their_ancestor():
    full = summary_for("resnet18", (3, 224, 224), num_classes=1000, depth=None)
    top = summary_for("resnet18", (3, 224, 224), num_classes=1000, depth=1)
    blocks = summary_for("resnet18", (3, 224, 224), num_classes=1000, depth=2)
    assert [row.name for row in top.rows] == [
        "conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool",
        "flatten", "fc"]
    assert "layer1.0" in {row.name for row in blocks.rows}
    assert "layer1" not in {row.name for row in blocks.rows}
    for summary in (full, top, blocks):
        assert sum(row.macs for row in summary.rows) == summary.macs
        assert sum(row.params for row in summary.rows) == summary.total_params
    layer2 = next(row for row in top.rows if row.name == "layer2")
    assert layer2.output_shape == (1, 128, 28, 28)
    assert layer2.macs == sum(row.macs for row in full.rows if row.name.startswith("layer2."))


def test_summary_for_builds_the_model_for_its_input():
    small = summary_for("resnet18", (3, 32, 32))
    large = summary_for("resnet18", (3, 224, 224))
    assert small.rows[0].output_shape == (1, 64, 32, 32)  # the small-image stem
    assert large.rows[0].output_shape == (1, 64, 112, 112)  # the ImageNet stem
    default = summary_for("resnet18-d2l")
    assert default.input_size == (1, 1, 96, 96)
    assert summary_for("resnet-cpu", batch_size=4).input_size == (4, 1, 28, 28)


def test_language_model_summary():
    summary = summary_for("lstm-lm", num_classes=28)
    assert summary.input_size == (1, 35)
    lstm = next(row for row in summary.rows if row.type == "LSTM")
    assert lstm.output_shape == (35, 1, 32)  # the layer runs time-major
    assert lstm.macs == 35 * 4 * 32 * (28 + 32)


def test_str_and_to_dict():
    summary = summary_for("lenet")
    text = str(summary)
    assert text.splitlines()[0] == "lenet, input [1, 1, 28, 28]"
    assert "0 (Conv2d)" in text and "[1, 6, 28, 28]" in text and "117,600" in text
    assert "Total params:         61,706" in text and "MACs:                 417 K" in text
    lines = [line for line in text.splitlines() if "(Conv2d)" in line or "(Linear)" in line]
    assert len({line.index("  [") for line in lines}) == 1  # the shape column is aligned
    data = json.loads(json.dumps(summary.to_dict()))
    assert data["total_params"] == 61_706 and data["macs"] == summary.macs
    assert data["rows"][0] == {"name": "0", "type": "Conv2d", "depth": 1,
                               "output_shape": [1, 6, 28, 28], "params": 156,
                               "trainable_params": 156, "macs": 117_600}


@pytest.mark.parametrize("input_size", [(), (1, 0, 28, 28), (1, 1.5, 28), "1x28x28", (True, 1)])
def test_malformed_input_size(input_size):
    with pytest.raises(DivekitError, match="input_size must be a tuple of positive integers"):
        summarize(nn.Linear(2, 2), input_size)


def test_bad_depth():
    with pytest.raises(DivekitError, match="depth must be a positive integer or None"):
        summarize(nn.Linear(2, 2), (1, 2), depth=0)


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # lenet's Linear(0, 120)
def test_too_small_input_names_the_layer_and_the_expected_input():
    with pytest.raises(DivekitError) as error:
        summary_for("lenet", (1, 8, 8))
    message = str(error.value)
    assert message.startswith("lenet cannot take an input of size [1, 1, 8, 8]")
    assert "in 3 (Conv2d)" in message  # the second conv: 8 -> 4 -> 2 pixels, kernel 5
    assert message.endswith("'lenet' is registered for examples of shape (1, 28, 28)")
    assert "\n" not in message and "input channel" not in message


def test_wrong_channels_names_the_first_layers_channels():
    with pytest.raises(DivekitError, match=r"in 0 \(Conv2d\).*expects 1 input channel\(s\), not 3"):
        summarize(dk.create_model("lenet"), (1, 3, 28, 28))


def test_summary_for_wants_one_examples_shape():
    with pytest.raises(DivekitError, match=r"'alexnet' takes examples of shape \(1, 224, 224\)"):
        summary_for("alexnet", (1, 3, 224, 224))
