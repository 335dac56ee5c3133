"""FCN (d2l 14.11): the course's shapes, any input size, the paper's skips starting at zero,
ImageNet ResNet-18 weights into the backbone with the heads left as initialised."""

import pytest
import torch

from divekit.errors import DivekitError
from divekit.models import MODELS, create_model
from divekit.models.fcn import FCN

# The learning test's budget and floor (see test_fcn_learns_scene_segmentation).
LEARN_IMAGES, LEARN_EPOCHS, LEARN_WIDTHS = 1600, 6, (16, 32, 64, 128)
FCN_FLOOR = 0.22  # measured 0.321 (pixel acc 0.916; 0.307 on one thread); background alone ~0.13


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


def test_an_input_off_the_stride_is_scored_as_if_padded_with_the_mean_colour():
    # 100x70 is padded to 128x96 (stride 32) after standardisation, i.e. with ImageNet's mean
    # colour before it; the scores of the original pixels are those of that padded image.
    torch.manual_seed(0)
    model = create_model("fcn-cpu").eval()
    image = torch.rand(1, 3, 100, 70)
    padded = model.image_mean.expand(1, 3, 128, 96).clone()
    padded[..., :100, :70] = image
    with torch.no_grad():
        torch.testing.assert_close(model(image), model(padded)[..., :100, :70])


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


@pytest.mark.slow
def test_fcn_learns_scene_segmentation():
    # A smaller budget than the fcn-scenes recipe: a half-width fcn-cpu, LEARN_IMAGES generated
    # scenes, LEARN_EPOCHS epochs of AdamW one-cycle (batch 16) with flips; held-out mIoU over
    # the 7 classes (background alone, what an untrained model predicts, scores ~0.13).
    import divekit as dk
    from divekit.data import parse_augment

    data = dk.load_data("scenes-segmentation", num_train=LEARN_IMAGES, num_test=100,
                        batch_size=16)
    data.transform = parse_augment("flip", seed=0)
    torch.manual_seed(0)
    model = create_model("fcn-cpu", num_classes=data.num_classes, widths=LEARN_WIDTHS)
    trainer = dk.Trainer(max_epochs=LEARN_EPOCHS, optimizer="adamw", lr=6e-3,
                         weight_decay=1e-4, schedule="onecycle", progress=False)
    last = trainer.fit(model, data)[-1]
    print(f"fcn-cpu scenes: pixel acc {last['test_pixel_acc']:.3f}, mIoU {last['test_miou']:.3f}")
    assert last["test_miou"] > FCN_FLOOR
