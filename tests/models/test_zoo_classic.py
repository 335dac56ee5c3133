"""Chapter-8 model zoo: AlexNet, VGG, NiN and GoogLeNet.

Parameter counts and shapes are checked on the ``meta`` device: the factories build exactly the
same modules there, without allocating or initialising the ~140 M weights of a VGG, so the
published counts at 224 x 224 cost nothing. Numerics (finite outputs, a gradient for every
parameter) run for real on small inputs.
"""

import pytest
import torch
from torch import nn

import divekit as dk
from divekit.data import DataModule
from divekit.errors import DivekitError
from divekit.models import alexnet, googlenet, nin, vgg  # noqa: F401  (registration)
from divekit.models.googlenet import Inception

MODELS = ["alexnet", "vgg11", "vgg13", "vgg16", "vgg19", "vgg11-narrow", "nin", "googlenet"]
SMALL_INPUTS = [(1, 28, 28), (3, 32, 32)]
# Building and back-propagating a full-width VGG (~120 M parameters) costs ~4 s of CPU, so
# those run for real at one input only, and the deep ones, which share vgg11's builder and
# spatial path (their shapes at both inputs are checked on meta), only in the slow run.
REAL_RUNS = [
    *[(name, shape) for name in ("googlenet", "nin", "alexnet", "vgg11-narrow")
      for shape in SMALL_INPUTS],
    ("vgg11", SMALL_INPUTS[0]),
    *[pytest.param(name, SMALL_INPUTS[0], marks=pytest.mark.slow)
      for name in ("vgg13", "vgg16", "vgg19")],
]


pytestmark = pytest.mark.usefixtures("one_thread")


def conv(c_in: int, c_out: int, k: int) -> int:
    return c_out * c_in * k * k + c_out


def dense(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def nin_block(c_in: int, c_out: int, k: int) -> int:
    return conv(c_in, c_out, k) + 2 * conv(c_out, c_out, 1)


# Published counts (3 input channels, 1000 classes, 224 x 224); NiN by formula.
PUBLISHED = {
    "alexnet": 50_844_008,
    "vgg11": 132_863_336,
    "vgg13": 133_047_848,
    "vgg16": 138_357_544,
    "vgg19": 143_667_240,
    "googlenet": 6_998_552,
    "nin": nin_block(3, 96, 11) + nin_block(96, 256, 5) + nin_block(256, 384, 3)
    + nin_block(384, 1000, 3),
    # The course's narrow VGG-11: convs with a quarter of the channels, then 128 * 7 * 7 -> 4096.
    "vgg11-narrow": conv(3, 16, 3) + conv(16, 32, 3) + conv(32, 64, 3) + conv(64, 64, 3)
    + conv(64, 128, 3) + 3 * conv(128, 128, 3)
    + dense(128 * 7 * 7, 4096) + dense(4096, 4096) + dense(4096, 1000),
}
# The ImageNet stem's first conv (kernel, stride, padding); the small-input stem is 3x3/1 pad 1.
IMAGENET_STEM = {"alexnet": (11, 4, 1), "nin": (11, 4, 0), "googlenet": (7, 2, 3)}


def on_meta(name: str, **options) -> nn.Module:
    with torch.device("meta"):
        return dk.create_model(name, **options).eval()


def meta_forward(model: nn.Module, *shape: int) -> torch.Tensor:
    with torch.device("meta"):
        return model(torch.empty(*shape))


@pytest.mark.parametrize("name", MODELS)
def test_registered_with_chapter_8_metadata(name):
    info = dk.model_info(name)
    assert info.input_shape == (1, 224, 224)
    assert info.section.startswith("8.")
    assert info.family == ("vgg" if name.startswith("vgg") else name)
    assert info.description
    assert info.options()[:3] == ["num_classes", "in_channels", "image_size"]


@pytest.mark.parametrize("name", MODELS)
def test_published_parameter_count(name):
    model = on_meta(name, num_classes=1000, in_channels=3, image_size=224)
    assert dk.count_parameters(model) == PUBLISHED[name]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape", [*SMALL_INPUTS, (3, 224, 224), (3, 96, 96)])
def test_output_shape(name, shape):
    model = on_meta(name, num_classes=7, in_channels=shape[0], image_size=shape[-1])
    assert meta_forward(model, 2, *shape).shape == (2, 7)


@pytest.mark.parametrize("name", ["alexnet", "vgg11", "vgg11-narrow"])
def test_adaptive_pool_is_the_identity_at_224(name):
    # The classifier's input size is the published one only if nothing is averaged away at 224.
    model = on_meta(name, in_channels=3)
    size = 5 if name == "alexnet" else 7
    body = nn.Sequential(*list(model.children())[:-2])
    assert meta_forward(body, 1, 3, 224, 224).shape[-2:] == (size, size)


def _first_conv(module: nn.Module) -> nn.Conv2d:
    return next(m for m in module.modules() if isinstance(m, nn.Conv2d))


def _leaves(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if not list(m.children())]


def _has_pool(module: nn.Module) -> bool:
    return any(isinstance(m, nn.MaxPool2d) for m in module.modules())


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize(("small_size", "large_size"), [(28, 224), (95, 96)])
def test_small_input_variant_changes_only_the_stem(name, small_size, large_size):
    small = on_meta(name, image_size=small_size)
    large = on_meta(name, image_size=large_size)
    small_parts, large_parts = dict(small.named_children()), dict(large.named_children())
    assert list(small_parts) == list(large_parts) and list(small_parts)[0] == "stem"
    for part in list(small_parts)[1:]:
        assert repr(small_parts[part]) == repr(large_parts[part]), part
    small_conv, large_conv = _first_conv(small.stem), _first_conv(large.stem)
    assert small_conv.kernel_size == (3, 3) and small_conv.stride == (1, 1)
    assert small_conv.padding == (1, 1)
    kernel, stride, padding = IMAGENET_STEM.get(name, (3, 1, 1))
    assert large_conv.kernel_size == (kernel, kernel) and large_conv.stride == (stride, stride)
    assert large_conv.padding == (padding, padding)
    assert _has_pool(large.stem) and not _has_pool(small.stem)
    # Besides the first conv and the dropped pool, the stems hold the same layers (NiN's 1x1s).
    rest = [repr(m) for m in _leaves(large.stem) if not isinstance(m, nn.MaxPool2d)][1:]
    assert [repr(m) for m in _leaves(small.stem)][1:] == rest


def test_create_model_picks_the_stem_from_the_data():
    images = torch.zeros(4, 1, 28, 28)
    data = DataModule("tiny", train=(images, torch.zeros(4, dtype=torch.long)),
                      test=(images, torch.zeros(4, dtype=torch.long)), class_names=list("abc"))
    with torch.device("meta"):
        model = dk.create_model("nin", data=data)
    assert _first_conv(model.stem).kernel_size == (3, 3)
    assert model.features[-1][-2].out_channels == 3


def test_nin_forward_at_224():
    torch.manual_seed(0)
    model = dk.create_model("nin", num_classes=1000, in_channels=3).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


def test_inception_concatenates_the_four_paths():
    torch.manual_seed(0)
    block = Inception(5, 2, (3, 4), (1, 6), 7)
    x = torch.randn(2, 5, 9, 9)
    out = block(x)
    assert block.out_channels == 2 + 4 + 6 + 7
    assert out.shape == (2, block.out_channels, 9, 9)
    paths = [block.p1(x), block.p2(x), block.p3(x), block.p4(x)]
    assert [p.shape[1] for p in paths] == [2, 4, 6, 7]
    torch.testing.assert_close(out, torch.cat(paths, dim=1))


def test_googlenet_stage_widths_chain():
    model = on_meta("googlenet")
    blocks = [m for m in model.modules() if isinstance(m, Inception)]
    assert len(blocks) == 9
    for block, following in zip(blocks, blocks[1:], strict=False):
        assert _first_conv(following.p1).in_channels == block.out_channels
    assert blocks[-1].out_channels == model.head[-1].in_features == 1024


def test_vgg_builder_takes_any_block_spec():
    torch.manual_seed(0)
    model = vgg.vgg(((1, 8), (2, 16)), num_classes=3, in_channels=2, image_size=16, hidden=32)
    expected = conv(2, 8, 3) + conv(8, 16, 3) + conv(16, 16, 3)
    expected += dense(16 * 7 * 7, 32) + dense(32, 32) + dense(32, 3)
    assert dk.count_parameters(model) == expected
    assert model(torch.randn(2, 2, 16, 16)).shape == (2, 3)


@pytest.mark.parametrize(("name", "smallest"), [("alexnet", 7), ("nin", 7), ("vgg11", 16)])
def test_smallest_image_size(name, smallest):
    model = on_meta(name, image_size=smallest)
    assert meta_forward(model, 1, 1, smallest, smallest).shape == (1, 10)
    with pytest.raises(DivekitError, match="image_size"):
        on_meta(name, image_size=smallest - 1)


def test_vgg_rejects_an_empty_spec():
    with pytest.raises(DivekitError, match="block"):
        vgg.vgg(())


@pytest.mark.parametrize(("name", "shape"), REAL_RUNS)
def test_forward_backward_on_small_inputs(name, shape):
    torch.manual_seed(0)
    model = dk.create_model(name, num_classes=10, in_channels=shape[0], image_size=shape[-1])
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.square().mean().backward()
    for parameter_name, parameter in model.named_parameters():
        assert parameter.grad is not None, parameter_name
        assert torch.isfinite(parameter.grad).all(), parameter_name
        assert parameter.grad.abs().sum() > 0, parameter_name
