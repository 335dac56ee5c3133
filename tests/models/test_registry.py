import pytest
import torch

import divekit as dk
from divekit.models import MODELS, register_model
from divekit.models.stems import SMALL_IMAGE_SIZE, uses_small_stem


def conv(c_in, c_out, k):
    return c_out * c_in * k * k + c_out


def dense(n_in, n_out):
    return n_in * n_out + n_out


# Parameter counts from the published layouts, by formula (not by building the model).
EXPECTED_PARAMETERS = {
    "linear-regression": dense(2, 1),
    "softmax-regression": dense(784, 10),
    "mlp": dense(784, 256) + dense(256, 10),
    "mlp-dropout": dense(784, 256) + dense(256, 256) + dense(256, 10),
    "mlp-regression": dense(8, 64) + dense(64, 1),
    "lenet": conv(1, 6, 5) + conv(6, 16, 5) + dense(400, 120) + dense(120, 84) + dense(84, 10),
    # BN adds a scale and a shift per channel / feature; its input is 16 x 4 x 4 (no padding).
    "lenet-bn": conv(1, 6, 5) + 12 + conv(6, 16, 5) + 32 + dense(256, 120) + 240
    + dense(120, 84) + 168 + dense(84, 10),
    # Bias-free convs (batch norm follows), 28 -> 14 -> 7 -> 3 pixels.
    "small-cnn": 16 * 9 + 32 + 32 * 16 * 9 + 64 + 64 * 32 * 9 + 128 + dense(64 * 3 * 3, 10),
    # The course's FCN: torchvision's ResNet-18 without fc (11,689,512 - 513,000), a 1x1 conv
    # and a 64x64 transposed conv (stride 32), both with biases, for VOC's 21 classes.
    "fcn": 11_689_512 - dense(512, 1000) + conv(512, 21, 1) + conv(21, 21, 64),
}
# The from-scratch twins have exactly the parameters of the built-in models.
for _twin in ("softmax-regression", "mlp", "mlp-dropout", "lenet-bn"):
    EXPECTED_PARAMETERS[f"{_twin}-scratch"] = EXPECTED_PARAMETERS[_twin]


def test_every_model_has_a_published_parameter_count():
    assert set(EXPECTED_PARAMETERS) <= set(dk.list_models())
    assert dk.count_parameters(dk.create_model("lenet")) == 61_706  # the course's printed count


@pytest.mark.parametrize("name", dk.list_models())
def test_every_registered_parameter_count_is_the_built_models(name):
    # register_model requires params, so no model ships without a count. The counts' sources
    # are oracles elsewhere: the formulas here, in test_rnn_lm.py and test_zoo_*.py, and the
    # published ImageNet figures (test_zoo_*.py), which from_published adjusts to the defaults.
    info = MODELS[name]
    with torch.device("meta"):  # shapes only: VGG-19 allocates nothing
        model = dk.create_model(name)
    assert dk.count_parameters(model) == info.params
    if name in EXPECTED_PARAMETERS:
        assert info.params == EXPECTED_PARAMETERS[name]


@pytest.mark.parametrize("params", [None, 0, -5, True, 1.5, "61706"])
def test_register_model_wants_a_positive_integer_count(params):
    with pytest.raises(dk.DivekitError, match="'tiny': params must be a positive integer"):
        register_model("tiny", family="test", section="0", params=params)
    assert "tiny" not in MODELS


def test_register_model_requires_a_count():
    with pytest.raises(TypeError, match="params"):
        register_model("tiny", family="test", section="0")
    assert "tiny" not in MODELS


def small_example(name):
    """A small model and a batch of 3 inputs for it, with the expected output shape."""
    info = dk.model_info(name)
    options = {"image_size": 28} if "image_size" in info.options() else {}
    if info.task == "language-model":
        options["num_classes"] = 10  # the vocabulary size
    if info.task == "translation":
        options |= {"src_vocab_size": 10, "tgt_vocab_size": 9}
    bert = info.family == "bert"
    if bert:  # a 2-layer, 32-wide encoder of any size's kind over a 10-token vocabulary
        options |= {"vocab_size": 10, "num_layers": 2, "num_hiddens": 32, "num_heads": 2,
                    "ffn_num_hiddens": 48}
    if info.task == "token-classification" and not bert:  # the BiLSTM tagger
        options |= {"vocab_size": 10, "num_classes": 4}
    torch.manual_seed(0)
    model = dk.create_model(name, **options)
    if info.task == "token-classification" and not bert:  # (tokens, segments, valid_len)
        inputs = (torch.randint(0, 10, (3, 7)), torch.zeros(3, 7, dtype=torch.long),
                  torch.tensor([7, 4, 2]))
        return model, inputs, (3, 7, 4)
    if bert:  # (tokens, segments, valid_len); pretraining: MLM logits at every position
        inputs = (torch.randint(0, 10, (3, 7)), torch.randint(0, 2, (3, 7)),
                  torch.tensor([7, 4, 2]))
        return model, inputs, {"bert-pretraining": (3, 7, 10), "text-classification": (3, 2),
                               "token-classification": (3, 7, 2),
                               "question-answering": (3, 7, 2)}[info.task]
    if info.task == "language-model":
        return model, torch.randint(0, 10, (3, 7)), (3, 7, 10)
    if info.task == "translation":  # (src, src_len, tgt_in) -> next-token logits
        inputs = (torch.randint(0, 10, (3, 7)), torch.tensor([7, 4, 1]),
                  torch.randint(0, 9, (3, 5)))
        return model, inputs, (3, 5, 9)
    if info.task == "regression":
        return model, torch.randn(3, *info.input_shape), (3, 1)
    if info.task == "segmentation":  # RGB in, one score per class and pixel out
        classes = model.classifier.out_channels
        return model, torch.rand(3, 3, 28, 28), (3, classes, 28, 28)
    return model, torch.randn(3, 1, 28, 28), (3, 10)


DETECTORS = [name for name in dk.list_models() if MODELS[name].task == "detection"]
NOT_DETECTORS = [name for name in dk.list_models() if name not in DETECTORS]


def detection_example(name, size=64):
    """A detector for 3 classes at ``size`` pixels and two images: three objects, and none."""
    torch.manual_seed(0)
    model = dk.create_model(name, num_classes=3, image_size=size)
    images = torch.rand(2, 3, size, size)
    boxes = torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 10.0, 60.0, 34.0],
                          [33.0, 33.0, 63.0, 63.0]])
    masks = torch.zeros(3, size, size, dtype=torch.uint8)
    for mask, (x1, y1, x2, y2) in zip(masks, boxes.long().tolist(), strict=True):
        mask[y1:y2, x1:x2] = 1
    targets = [{"boxes": boxes, "labels": torch.tensor([0, 2, 1]), "masks": masks},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
                "masks": torch.zeros(0, size, size, dtype=torch.uint8)}]
    return model, images, targets


@pytest.mark.parametrize("name", DETECTORS)
def test_detectors_train_on_named_losses_and_detect_in_pixels(name):
    # torchvision's protocol: a dict of losses in training (every parameter gets a gradient
    # from their sum, with an image that has no object in the batch), detections in eval.
    model, images, targets = detection_example(name)
    losses = model.train()(images, targets)
    named = {key: value for key, value in losses.items() if key.startswith("loss")}
    assert named and all(value.ndim == 0 and torch.isfinite(value) for value in named.values())
    sum(named.values()).backward()
    # Every parameter takes part in the loss. Its gradient may be zero: a prediction head of
    # a scale whose anchors or cells match none of these three boxes (and mine no negative)
    # contributes nothing to this batch's loss, as intended; the learning tests train them.
    for parameter_name, parameter in model.named_parameters():
        assert parameter.grad is not None, parameter_name
    assert sum(float(p.grad.abs().sum()) for p in model.parameters()) > 0
    model.eval()
    with torch.no_grad():
        detections = model(images)
        with_losses, eval_losses = model(images, targets)
    assert len(detections) == len(with_losses) == 2 and set(eval_losses) >= set(named)
    for detection in detections:
        boxes, scores, labels = detection["boxes"], detection["scores"], detection["labels"]
        assert boxes.shape == (len(scores), 4) and labels.shape == scores.shape
        assert ((boxes >= -1e-4) & (boxes <= 64 + 1e-4)).all()
        assert (boxes[:, 2:] >= boxes[:, :2]).all()
        assert (scores[:-1] >= scores[1:]).all()
        assert ((labels >= 0) & (labels < 3)).all()
        if "masks" in detection:
            assert detection["masks"].shape == (len(scores), 64, 64)


@pytest.mark.parametrize("name", NOT_DETECTORS)
def test_forward_backward_every_parameter_gets_a_gradient(name):
    # Every model works at small inputs: image models at 1 x 28 x 28, language models on
    # 7-token sequences over a 10-token vocabulary.
    model, x, expected_shape = small_example(name)
    out = model(*x) if isinstance(x, tuple) else model(x)
    extra = []
    if isinstance(out, tuple):  # BERT pretraining: MLM logits, then NSP logits (B, 2)
        out, *extra = out
        assert [e.shape for e in extra] == [(3, 2)]
    assert out.shape == expected_shape
    assert torch.isfinite(out).all()
    sum(o.square().mean() for o in [out, *extra]).backward()
    for parameter_name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, parameter_name


IMAGE_MODELS = [name for name in dk.list_models()
                if MODELS[name].task == "classification" and len(MODELS[name].input_shape) == 3]


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_image_models_adapt_to_channels_classes_and_size(name):
    options = dk.model_info(name).options()
    kwargs = {"num_classes": 7}
    if "in_channels" in options:
        kwargs |= {"in_channels": 3, "image_size": 32}
        x = torch.randn(2, 3, 32, 32)
    else:
        kwargs |= {"num_inputs": 3 * 32 * 32}
        x = torch.randn(2, 3, 32, 32)
    assert dk.create_model(name, **kwargs)(x).shape == (2, 7)


def test_train_and_eval_modes_differ_only_with_dropout_or_batch_norm():
    x = torch.randn(4, 1, 28, 28)
    for name in ("lenet", "mlp", "softmax-regression", "mlp-scratch"):
        model = dk.create_model(name)
        torch.testing.assert_close(model.train()(x), model.eval()(x))
    for name in ("lenet-bn", "mlp-dropout", "small-cnn", "lenet-bn-scratch", "mlp-dropout-scratch"):
        model = dk.create_model(name)
        assert not torch.allclose(model.train()(x), model.eval()(x))


def test_create_model_takes_sizes_from_the_data():
    data = dk.load_data("digits")
    model = dk.create_model("mlp", data, hidden=(32, 16))
    assert model(data.train[0][:2]).shape == (2, 10)


def test_unknown_model_and_option_list_the_choices():
    with pytest.raises(dk.DivekitError, match="unknown model 'resnet-9000'; choose from: .*lenet"):
        dk.create_model("resnet-9000")
    with pytest.raises(dk.DivekitError, match="has no option depth; its options are: num_classes"):
        dk.create_model("lenet", depth=3)
    assert dk.list_models("lenet*") == ["lenet", "lenet-bn", "lenet-bn-scratch"]


def test_scratch_models_return_their_own_loss():
    model = dk.create_model("mlp-scratch")
    x, y = torch.randn(5, 1, 28, 28), torch.tensor([0, 1, 2, 3, 9])
    logits, loss = model(x, y)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, y))


# The chapter-8 zoo: every family here picks its stem with divekit.models.stems.
STEM_FAMILIES = {"alexnet", "vgg", "nin", "googlenet", "resnet", "densenet"}
# DenseNet-121's 120 layers take ~5 s on meta at six sizes; densenet-d2l shares its builder.
ZOO = [pytest.param(name, marks=pytest.mark.slow) if name == "densenet121" else name
       for name in dk.list_models() if MODELS[name].family in STEM_FAMILIES]


def on_meta(name, **options):
    with torch.device("meta"):
        return dk.create_model(name, **options).eval()


@pytest.mark.parametrize("name", ZOO)
def test_zoo_models_take_every_course_input_size_and_share_one_stem_rule(name):
    # Shapes only, on the meta device: VGG-19 at 224 allocates nothing. The numerics of the
    # small-image stem run for real at 28 and 32 (the tests above and test_zoo_*.py); every
    # size below SMALL_IMAGE_SIZE builds that same architecture, every size from it on the other.
    architectures = {}
    for size in (28, 32, 64, SMALL_IMAGE_SIZE - 1, SMALL_IMAGE_SIZE, 224):
        model = on_meta(name, num_classes=7, in_channels=3, image_size=size)
        with torch.device("meta"):
            assert model(torch.empty(2, 3, size, size)).shape == (2, 7), size
        architectures.setdefault(repr(model), set()).add(uses_small_stem(size))
    assert sorted(architectures.values(), key=min) == [{False}, {True}]
    assert uses_small_stem(SMALL_IMAGE_SIZE - 1) and not uses_small_stem(SMALL_IMAGE_SIZE)
