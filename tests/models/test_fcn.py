"""FCN (d2l 14.11): the course's shapes, any input size, the paper's skips starting at zero,
ImageNet ResNet-18 weights into the backbone with the heads left as initialised."""

import pytest
import torch

from divekit.errors import DivekitError
from divekit.models import MODELS, create_model
from divekit.models.fcn import FCN


def test_the_course_fcn_maps_a_320x480_crop_to_21_scores_per_pixel():
    model = create_model("fcn")
    assert isinstance(model, FCN) and model.stride == 32
    # The book's head: 1x1 conv 512 -> 21, transposed conv k64 s32 p16 with a bilinear kernel.
    up = model.upsampling
    assert (up.kernel_size, up.stride, up.padding) == ((64, 64), (32, 32), (16, 16))
    with torch.no_grad():
        assert model(torch.rand(1, 3, 320, 480)).shape == (1, 21, 320, 480)


@pytest.mark.parametrize("size", [(128, 128), (100, 70), (33, 129)])
def test_any_input_size_gives_scores_of_that_size(size):
    model = create_model("fcn-cpu", num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, *size)).shape == (2, 5, *size)


def test_padding_to_the_stride_does_not_change_the_scores_of_the_original_pixels():
    # A size that is already a multiple of the stride is not padded; cropping such an input's
    # padded twin back gives the same scores where the image is the same, far from the pad.
    torch.manual_seed(0)
    model = create_model("fcn-cpu").eval()
    image = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        whole = model(image)
        cut = model(image[..., :120, :120])
    torch.testing.assert_close(cut[..., :64, :64], whole[..., :64, :64], atol=1e-4, rtol=1e-4)


def test_skip_scores_start_at_zero_so_training_starts_from_the_coarse_prediction():
    torch.manual_seed(0)
    model = create_model("fcn-cpu").eval()
    for conv in model.skip_scores.values():
        assert conv.weight.abs().sum() == 0 and conv.bias.abs().sum() == 0
    # Then the output depends on the last stage's scores alone, brought up by the three
    # bilinear transposed convolutions: the same map through those layers by hand.
    image = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        x = (image - model.image_mean) / model.image_std  # 128 needs no padding
        for stage in model.backbone:
            x = stage(x)
        scores = model.classifier(x)
        for upsampling in model.skip_upsampling:
            scores = upsampling(scores)
        torch.testing.assert_close(model(image), model.upsampling(scores))


def test_fcn_rejects_images_that_are_not_rgb():
    with pytest.raises(DivekitError, match=r"RGB images \(N, 3, H, W\)"):
        create_model("fcn-cpu")(torch.rand(1, 1, 32, 32))


def test_imagenet_resnet18_weights_load_into_the_backbone(tmp_path):
    from divekit.engine.finetune import load_weights

    torch.manual_seed(0)
    imagenet = MODELS["resnet18"].build(num_classes=1000, in_channels=3, image_size=224)
    torch.save(imagenet.state_dict(), tmp_path / "resnet18.pth")
    model = create_model("fcn")
    heads = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("backbone")}
    report = load_weights(model, tmp_path / "resnet18.pth", heads=model.head_patterns)
    state, source = model.state_dict(), imagenet.state_dict()
    backbone_keys = [k for k in state if k.startswith("backbone.")]
    assert len(backbone_keys) == len(source) - 2  # all but fc.weight and fc.bias
    assert all(torch.equal(state[k], source[k.removeprefix("backbone.")]) for k in backbone_keys)
    assert all(torch.equal(state[k], v) for k, v in heads.items())
    assert set(report.loaded) == set(backbone_keys)
