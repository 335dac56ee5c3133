import math

import pytest
import torch
from torch import nn

import divekit as dk
from divekit.models import densenet, resnet

RESNETS = ["resnet18", "resnet34", "resnet50", "resnet18-d2l", "resnet-cpu"]
DENSENETS = ["densenet-d2l", "densenet121", "densenet-cpu"]
BLOCKS = (resnet.Residual, resnet.BasicBlock, resnet.Bottleneck)


pytestmark = pytest.mark.usefixtures("one_thread")


def conv(c_in, c_out, k, bias=False):
    return c_out * c_in * k * k + (c_out if bias else 0)


def bn(c):
    return 2 * c


def dense(n_in, n_out):
    return n_in * n_out + n_out


def d2l_resnet18_parameters():
    """The course's ResNet-18 (1 channel, 10 classes): biased convs, plain 1x1 projections."""
    total = conv(1, 64, 7, bias=True) + bn(64)
    c_in = 64
    for i, c in enumerate((64, 128, 256, 512)):
        for j in range(2):
            total += conv(c_in, c, 3, bias=True) + conv(c, c, 3, bias=True) + 2 * bn(c)
            if i > 0 and j == 0:
                total += conv(c_in, c, 1, bias=True)
            c_in = c
    return total + dense(512, 10)


def d2l_densenet_parameters():
    """The course's DenseNet (1 channel, 10 classes): 4 blocks of 4 BN-ReLU-conv3x3, growth 32."""
    total, c = conv(1, 64, 7, bias=True) + bn(64), 64
    for i in range(4):
        for _ in range(4):
            total += bn(c) + conv(c, 32, 3, bias=True)
            c += 32
        if i < 3:
            total += bn(c) + conv(c, c // 2, 1, bias=True)
            c //= 2
    return total + bn(c) + dense(c, 10)


def resnet_cpu_parameters():
    """resnet-cpu (1 channel, 10 classes): 3x3 stem to 16, one basic block per 16-32-64 stage."""
    total, c_in = conv(1, 16, 3) + bn(16), 16
    for c in (16, 32, 64):
        total += conv(c_in, c, 3) + conv(c, c, 3) + 2 * bn(c)
        if c != c_in:
            total += conv(c_in, c, 1) + bn(c)
        c_in = c
    return total + dense(64, 10)


def densenet_cpu_parameters():
    """densenet-cpu (1 channel, 10 classes): 3x3 stem to 24, 3 blocks of 2 layers, growth 12."""
    total, c = conv(1, 24, 3) + bn(24), 24
    for i in range(3):
        for _ in range(2):
            total += bn(c) + conv(c, 12, 3, bias=True)  # the course's dense layer keeps a bias
            c += 12
        if i < 2:
            total += bn(c) + conv(c, c // 2, 1)
            c //= 2
    return total + bn(c) + dense(c, 10)


@pytest.mark.parametrize("name, expected", [
    ("resnet18", 11_689_512), ("resnet34", 21_797_672), ("resnet50", 25_557_032),
    ("densenet121", 7_978_856),
])
def test_published_imagenet_parameter_counts(name, expected):
    model = dk.create_model(name, num_classes=1000, in_channels=3)
    assert dk.count_parameters(model) == expected


@pytest.mark.parametrize("name, formula", [
    ("resnet18-d2l", d2l_resnet18_parameters), ("densenet-d2l", d2l_densenet_parameters),
    ("resnet-cpu", resnet_cpu_parameters), ("densenet-cpu", densenet_cpu_parameters),
])
def test_course_parameter_counts_by_formula(name, formula):
    assert dk.count_parameters(dk.create_model(name)) == formula()


def test_registry_entries():
    for name in RESNETS + DENSENETS:
        info = dk.model_info(name)
        assert info.family == ("resnet" if name in RESNETS else "densenet")
        assert info.section.startswith("8.6 " if name in RESNETS else "8.7 ")
        assert {"num_classes", "in_channels", "image_size"} <= set(info.options())
        assert info.description
    assert dk.model_info("resnet50").input_shape == (1, 224, 224)
    assert dk.model_info("densenet121").input_shape == (1, 224, 224)
    assert dk.model_info("resnet18-d2l").input_shape == (1, 96, 96)
    assert dk.model_info("densenet-d2l").input_shape == (1, 96, 96)
    assert dk.model_info("resnet-cpu").input_shape == (1, 28, 28)
    assert dk.model_info("densenet-cpu").input_shape == (1, 28, 28)


@pytest.mark.parametrize("name", RESNETS + DENSENETS)
def test_forward_backward_and_modes_at_28_pixels(name):
    torch.manual_seed(0)
    model = dk.create_model(name, num_classes=7, in_channels=1, image_size=28)
    x = torch.randn(2, 1, 28, 28)
    out = model(x)
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    nn.functional.cross_entropy(out, torch.tensor([0, 6])).backward()
    for parameter_name, parameter in model.named_parameters():
        assert torch.isfinite(parameter.grad).all(), parameter_name
        assert parameter.grad.abs().sum() > 0, parameter_name
    model.eval()
    with torch.no_grad():
        assert not torch.allclose(model(x), out)  # batch statistics vs running averages


@pytest.mark.parametrize("name", RESNETS + DENSENETS)
def test_forward_at_32_pixels_with_3_channels(name):
    torch.manual_seed(0)
    model = dk.create_model(name, num_classes=7, in_channels=3, image_size=32)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def shortcut(block):
    return block.conv3 if isinstance(block, resnet.Residual) else block.downsample


@pytest.mark.parametrize("name, expected", [
    ("resnet18", {"layer2.0", "layer3.0", "layer4.0"}),
    ("resnet34", {"layer2.0", "layer3.0", "layer4.0"}),
    ("resnet18-d2l", {"layer2.0", "layer3.0", "layer4.0"}),
    ("resnet-cpu", {"layer2.0", "layer3.0"}),
    ("resnet50", {"layer1.0", "layer2.0", "layer3.0", "layer4.0"}),  # 64 -> 256 channels
])
def test_projection_exactly_where_the_shape_changes(name, expected):
    model = dk.create_model(name, image_size=28).eval()
    blocks = {n: m for n, m in model.named_modules() if isinstance(m, BLOCKS)}
    assert {n for n, block in blocks.items() if shortcut(block) is not None} == expected
    with torch.no_grad():
        for block_name, block in blocks.items():
            x = torch.randn(1, block.conv1.in_channels, 7, 7)
            changes_shape = block(x).shape != x.shape
            assert changes_shape == (shortcut(block) is not None), block_name


def test_bottleneck_strides_in_its_3x3_conv():
    model = dk.create_model("resnet50", image_size=28)
    for i, stage in enumerate([model.layer1, model.layer2, model.layer3, model.layer4]):
        for j, block in enumerate(stage):
            assert block.conv1.stride == block.conv3.stride == (1, 1)
            assert block.conv2.stride == ((2, 2) if i > 0 and j == 0 else (1, 1))
        assert stage[0].downsample[0].stride == ((2, 2) if i > 0 else (1, 1))


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnet-cpu", "resnet18-d2l"])
def test_zero_init_residual_makes_every_block_relu_of_its_shortcut(name):
    torch.manual_seed(0)
    model = dk.create_model(name, image_size=28)
    resnet.init_weights(model, zero_init_residual=True)
    model.eval()
    blocks = [m for m in model.modules() if isinstance(m, BLOCKS)]
    with torch.no_grad():
        for block in blocks:
            x = torch.randn(2, block.conv1.in_channels, 6, 5)
            path = shortcut(block)
            torch.testing.assert_close(block(x), torch.relu(x if path is None else path(x)))
    zeroed = [m for m in model.modules()
              if isinstance(m, nn.BatchNorm2d) and not m.weight.detach().any()]
    assert len(zeroed) == len(blocks)


def test_init_weights_is_torchvisions():
    torch.manual_seed(0)
    model = dk.create_model("resnet50", image_size=28)
    # A 64 -> 256 1x1 conv: fan-out 256 gives std sqrt(2 / 256); fan-in would give twice that.
    weight = model.layer1[0].conv3.weight
    assert weight.shape == (256, 64, 1, 1)
    assert abs(weight.std().item() / math.sqrt(2 / 256) - 1) < 0.05
    assert abs(weight.mean().item()) < 0.005
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert (module.weight == 1).all() and (module.bias == 0).all()
    for block in model.layer1:
        assert (block.bn3.weight == 1).all()  # zero_init_residual defaults to False


def batch_norm_shapes(prefix, channels):
    keys = {f"{prefix}.{n}": (channels,) for n in ("weight", "bias", "running_mean", "running_var")}
    return keys | {f"{prefix}.num_batches_tracked": ()}


def torchvision_resnet18_shapes():
    shapes = {"conv1.weight": (64, 3, 7, 7)} | batch_norm_shapes("bn1", 64)
    c_in = 64
    for i, c in enumerate((64, 128, 256, 512), start=1):
        for j in range(2):
            p = f"layer{i}.{j}"
            shapes[f"{p}.conv1.weight"] = (c, c_in, 3, 3)
            shapes |= batch_norm_shapes(f"{p}.bn1", c)
            shapes[f"{p}.conv2.weight"] = (c, c, 3, 3)
            shapes |= batch_norm_shapes(f"{p}.bn2", c)
            if i > 1 and j == 0:
                shapes[f"{p}.downsample.0.weight"] = (c, c_in, 1, 1)
                shapes |= batch_norm_shapes(f"{p}.downsample.1", c)
            c_in = c
    return shapes | {"fc.weight": (1000, 512), "fc.bias": (1000,)}


def torchvision_resnet50_shapes():
    shapes = {"conv1.weight": (64, 3, 7, 7)} | batch_norm_shapes("bn1", 64)
    c_in = 64
    for i, (c, depth) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3), strict=True), start=1):
        for j in range(depth):
            p = f"layer{i}.{j}"
            for k, (out, inp, size) in enumerate([(c, c_in, 1), (c, c, 3), (4 * c, c, 1)], 1):
                shapes[f"{p}.conv{k}.weight"] = (out, inp, size, size)
                shapes |= batch_norm_shapes(f"{p}.bn{k}", out)
            if j == 0:
                shapes[f"{p}.downsample.0.weight"] = (4 * c, c_in, 1, 1)
                shapes |= batch_norm_shapes(f"{p}.downsample.1", 4 * c)
            c_in = 4 * c
    return shapes | {"fc.weight": (1000, 2048), "fc.bias": (1000,)}


def torchvision_densenet121_shapes():
    shapes = {"features.conv0.weight": (64, 3, 7, 7)} | batch_norm_shapes("features.norm0", 64)
    c = 64
    for b, size in enumerate((6, 12, 24, 16), start=1):
        for n in range(1, size + 1):
            p = f"features.denseblock{b}.denselayer{n}"
            shapes |= batch_norm_shapes(f"{p}.norm1", c)
            shapes[f"{p}.conv1.weight"] = (128, c, 1, 1)
            shapes |= batch_norm_shapes(f"{p}.norm2", 128)
            shapes[f"{p}.conv2.weight"] = (32, 128, 3, 3)
            c += 32
        if b < 4:
            shapes |= batch_norm_shapes(f"features.transition{b}.norm", c)
            shapes[f"features.transition{b}.conv.weight"] = (c // 2, c, 1, 1)
            c //= 2
    shapes |= batch_norm_shapes("features.norm5", c)
    return shapes | {"classifier.weight": (1000, 1024), "classifier.bias": (1000,)}


@pytest.mark.parametrize("name, expected", [
    ("resnet18", torchvision_resnet18_shapes), ("resnet50", torchvision_resnet50_shapes),
    ("densenet121", torchvision_densenet121_shapes),
])
def test_state_dict_has_torchvisions_keys_and_shapes_and_loads_strictly(name, expected):
    shapes = expected()
    model = dk.create_model(name, num_classes=1000, in_channels=3)
    state = model.state_dict()
    assert list(state) == list(shapes)
    assert {k: tuple(v.shape) for k, v in state.items()} == shapes
    generator = torch.Generator().manual_seed(0)
    weights = {k: torch.randn(s, generator=generator) if s else torch.tensor(3)
               for k, s in shapes.items()}
    model.load_state_dict(weights, strict=True)
    last = list(shapes)[-2]
    assert torch.equal(model.state_dict()[last], weights[last])


def test_stem_keeps_small_images_and_quarters_large_ones():
    for size, expected in [(28, 28), (64, 64), (95, 95), (96, 24), (97, 25), (224, 56)]:
        layers = nn.Sequential(*resnet.stem(3, 8, image_size=size))
        assert layers(torch.randn(1, 3, size, size)).shape == (1, 8, expected, expected)
    assert isinstance(resnet.stem(1, 8, image_size=28)[-1], nn.Identity)


def test_resnet18_at_224_matches_the_paper_geometry():
    model = dk.create_model("resnet18", num_classes=1000, in_channels=3).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert model[:-3](x).shape == (1, 512, 7, 7)  # before avgpool, flatten, fc
        assert model(x).shape == (1, 1000)


def test_course_models_at_96_pixels_have_the_courses_shapes():
    x = torch.randn(2, 1, 96, 96)
    model = dk.create_model("resnet18-d2l").eval()
    expected = {"maxpool": (64, 24, 24), "layer1": (64, 24, 24), "layer2": (128, 12, 12),
                "layer3": (256, 6, 6), "layer4": (512, 3, 3)}
    with torch.no_grad():
        for name, layer in model.named_children():
            x = layer(x)
            if name in expected:
                assert x.shape[1:] == expected[name], name
        assert x.shape == (2, 10)
        features = dk.create_model("densenet-d2l").eval().features(torch.randn(2, 1, 96, 96))
    assert features.shape == (2, 248, 3, 3)  # 64 + 4*32 = 192 -> 96 -> 224 -> 112 -> ... -> 248


def test_dense_block_concatenates_its_input_and_every_layer_output():
    torch.manual_seed(0)
    layers = [densenet.conv_block(5 + 3 * i, 3) for i in range(3)]
    block = densenet.DenseBlock(layers).eval()
    x = torch.randn(2, 5, 6, 6)
    with torch.no_grad():
        out = block(x)
        assert out.shape == (2, 14, 6, 6)
        torch.testing.assert_close(out[:, :5], x)
        torch.testing.assert_close(out[:, 5:8], layers[0](x))
        torch.testing.assert_close(out[:, 8:11], layers[1](out[:, :8]))
        torch.testing.assert_close(out[:, 11:], layers[2](out[:, :11]))


def test_resnet_cpu_stays_well_under_the_compute_budget():
    model = dk.create_model("resnet-cpu")
    multiply_adds = []

    def count(module, inputs, output):
        per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
        multiply_adds.append(output[0].numel() * per_output)

    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            module.register_forward_hook(count)
    with torch.no_grad():
        model(torch.randn(1, 1, 28, 28))
    assert 2 * sum(multiply_adds) < 0.03e9  # FLOPs per 28x28 image, a tenth of 0.3 GFLOP


@pytest.mark.parametrize("name, options, message", [
    ("resnet18", {"num_classes": 0}, "num_classes must be a positive integer"),
    ("resnet50", {"in_channels": -1}, "in_channels must be a positive integer"),
    ("densenet121", {"image_size": 0}, "image_size must be a positive integer"),
    ("resnet-cpu", {"widths": (16, 32), "depths": (1, 1, 1)}, "one width per stage"),
    ("resnet-cpu", {"depths": (1, 0, 1)}, r"depths\[1\] must be a positive integer"),
    ("densenet-d2l", {"block_sizes": ()}, "at least one dense block"),
    ("densenet-d2l", {"growth_rate": 0}, "growth_rate must be a positive integer"),
])
def test_bad_options_raise_divekit_errors(name, options, message):
    with pytest.raises(dk.DivekitError, match=message):
        dk.create_model(name, **options)
