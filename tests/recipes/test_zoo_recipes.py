"""Chapter-8 book-scale recipes: the book's settings, valid configs, one training step each."""

import math

import pytest
import torch

from divekit import experiment
from divekit.data import load_data
from divekit.models import create_model, model_info
from divekit.recipes import get_recipe, list_recipes
from tests.conftest import fake_fashion, real_data_dir

# The book's settings (reference/book-results.md, train_ch6 tables): model, resize, batch, lr,
# and the test accuracy printed by d2l-zh 2.0.0.
BOOK = {
    "alexnet-fashion-mnist": ("alexnet", 224, 128, 0.01, "0.883"),
    "vgg-fashion-mnist": ("vgg11-narrow", 224, 128, 0.05, "0.920"),
    "nin-fashion-mnist": ("nin", 224, 128, 0.1, "0.790"),
    "googlenet-fashion-mnist": ("googlenet", 96, 128, 0.1, "0.886"),
    "resnet18-fashion-mnist": ("resnet18-d2l", 96, 256, 0.05, "0.893"),
    "densenet-fashion-mnist": ("densenet-d2l", 96, 256, 0.1, "0.885"),
}
pytestmark = pytest.mark.usefixtures("one_thread")

def test_every_chapter_8_model_has_a_recipe():
    assert set(BOOK) <= set(list_recipes("*-fashion-mnist"))


@pytest.mark.parametrize("name", sorted(BOOK))
def test_recipe_has_the_books_settings(name):
    model, size, batch_size, lr, accuracy = BOOK[name]
    recipe = get_recipe(name)
    config = recipe.run_config()
    assert config.model == model and config.data == "fashion-mnist"
    assert config.data_options == {"resize": size}
    assert config.batch_size == batch_size
    assert (config.trainer.max_epochs, config.trainer.lr) == (10, lr)
    assert set(config.changes().get("trainer", {})) <= {"max_epochs", "lr"}  # nothing else
    assert accuracy in recipe.book and recipe.target
    assert recipe.section.split()[0] == model_info(model).section.split()[0]
    experiment.trainer_for(config, progress=False)  # the settings are valid Trainer options


@pytest.mark.parametrize("name", sorted(BOOK))
def test_one_training_step_of_every_recipe(name):
    # The recipe's model, options and Trainer settings at the book's image size, reduced to
    # 2 + 2 fake images: one SGD step and one evaluation, every batch resized on the way in.
    config = get_recipe(name).run_config()
    size = config.data_options["resize"]
    data = fake_fashion(2, 2, batch_size=2).resized(size)
    torch.manual_seed(0)
    model = create_model(config.model, data, **config.model_options)
    seen = []
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].shape))
    before = [p.detach().clone() for p in model.parameters()]
    config.trainer.max_epochs = 1
    history = experiment.trainer_for(config, progress=False).fit(model, data)
    assert seen and all(shape[1:] == (1, size, size) for shape in seen)
    assert len(seen) == 2  # one training batch, one test batch
    with torch.device("meta"):  # create_model took image_size from the resized data
        expected = create_model(config.model, image_size=size)
    assert repr(model) == repr(expected)
    assert math.isfinite(history[-1]["train_loss"]) and 0 <= history[-1]["test_acc"] <= 1
    assert any(not torch.equal(p, q) for p, q in zip(before, model.parameters(), strict=True))


def test_create_model_builds_the_imagenet_stem_from_the_resized_data():
    data = fake_fashion(2, 2, batch_size=2).resized(96)
    with torch.device("meta"):
        small = create_model("resnet18-d2l", fake_fashion(2, 2, batch_size=2))
        large = create_model("resnet18-d2l", data)
    assert small.conv1.kernel_size == (3, 3) and large.conv1.kernel_size == (7, 7)


def test_real_fashion_mnist_resized():
    data_dir = str(real_data_dir("fashion-mnist"))
    data = load_data("fashion-mnist", 128, data_dir=data_dir, val_size=1000, resize=96)
    assert data.input_shape == (1, 96, 96) and len(data.val[0]) == 1000
    images, labels = next(iter(data.train_dataloader()))
    assert images.shape == (128, 1, 96, 96) and labels.shape == (128,)
    assert images.min() >= 0 and images.max() <= 1
    assert sum(len(x) for x, _ in data.test_dataloader()) == 10_000
    for name in BOOK:  # every recipe's model builds from the real data and its options
        config = get_recipe(name).run_config()
        with torch.device("meta"):
            create_model(config.model, data, **config.model_options)
